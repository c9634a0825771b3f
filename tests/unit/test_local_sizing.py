"""The local Airflow's size and addresses: process counts from the CPU count, ports and bind address from settings."""

from __future__ import annotations

import pytest

from pipelines.ops.environment import airflow_env, machine_sizing
from pipelines.settings import resolve


@pytest.mark.parametrize(("cpus", "parallelism", "parsers"), [(1, 4, 1), (2, 4, 1), (4, 8, 2), (16, 32, 2)])
def test_executor_parallelism_follows_the_cpu_count(cpus: int, parallelism: int, parsers: int) -> None:
    sizing = machine_sizing(cpus)
    assert sizing["AIRFLOW__CORE__PARALLELISM"] == str(parallelism)
    assert sizing["AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES"] == str(parsers)
    assert sizing["AIRFLOW__API__WORKERS"] == "1"


def test_the_local_airflow_is_sized_to_this_machine_unless_the_environment_says_otherwise(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    env = airflow_env(tmp_path / "a")
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"  # Airflow's own default, 32 idle workers, on 2 cores
    chosen = airflow_env(tmp_path / "b", base={"AIRFLOW__CORE__PARALLELISM": "12"})
    assert chosen["AIRFLOW__CORE__PARALLELISM"] == "12"


def test_the_api_server_listens_on_this_machine_only_by_default(tmp_path) -> None:
    env = airflow_env(tmp_path / "a", api_port=18555)
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == "18555"
    # The log servers of a second Airflow on the machine would otherwise collide on 8793/8794.
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "18556"
    assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "18557"


def test_ports_come_from_the_environment_with_documented_defaults() -> None:
    default = resolve({})
    assert (default.airflow_port, default.mlflow_port, default.serve_port, default.bind_host) == (
        8080,
        5000,
        8000,
        "127.0.0.1",
    )
    chosen = resolve({"MLOPS_AIRFLOW_PORT": "18080", "MLOPS_MLFLOW_PORT": "15000", "MLOPS_SERVE_PORT": "18000"})
    assert (chosen.airflow_port, chosen.mlflow_port, chosen.serve_port) == (18080, 15000, 18000)
    with pytest.raises(ValueError, match="MLOPS_AIRFLOW_PORT"):
        resolve({"MLOPS_AIRFLOW_PORT": "http"})
