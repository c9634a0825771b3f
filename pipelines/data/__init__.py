"""Data helpers shared by the steps: the partition layout (``partitions``), the git and DVC plumbing of
dataset versions (``dvc_repo``), the replay's scale-up (``grow``) and the datasheet of a dataset version."""
