"""Data helpers shared by the steps: the replay's scale-up (``grow``) and the datasheet of a dataset version."""
