"""Tooling around the pipeline, not part of it.

- ``environment``: the configuration of a local Airflow (SQLite, LocalExecutor) and of the pipeline it runs;
- ``cluster``: Airflow's processes started from Python, driven through the ``airflow`` CLI and read from
  the metadata database;
- ``airflow_api``: the one client of Airflow's REST API;
- ``local``: the main command (``python -m pipelines.ops.local run``, ``make pipeline``) and the local UIs;
- ``replay``: a season replayed night by night through the scheduler;
- ``cli``: the operators' command line (``python -m pipelines.ops``);
- ``worker`` (a task's side) and ``worker_server`` (the serving side): the warm step worker.
"""
