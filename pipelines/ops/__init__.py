"""Tooling around the pipeline, not part of it: the local Airflow cluster (``cluster``) and the
main command (``local``), the season replay (``replay``), the operators' command line (``cli``,
``python -m pipelines.ops``) and the step worker (``worker``)."""
