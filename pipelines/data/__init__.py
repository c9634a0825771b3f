"""Data helpers shared by the steps: the partition layout (``partitions``), the git and DVC plumbing of
dataset versions (``dvc_repo``), a model version's data pulled back by version or alias (``pull``), the
replay's scale-up (``grow``) and the datasheet of a dataset version."""
