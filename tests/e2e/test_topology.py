"""The production topology without Docker: docker-compose.yml's services as processes, driven as a client would.

Airflow on PostgreSQL with the CeleryExecutor (Redis broker) and a real
``airflow celery worker``, the scheduler, DAG processor, triggerer and API
server; the MLflow tracking server on PostgreSQL with basic authentication and
its artifacts in S3 (``moto_server``), which is the DVC remote too; the model
server. Every setting comes from docker-compose.yml, .env.example and the
Dockerfile (``tests/topology.py``). The test logs in to the Airflow REST API,
triggers the training DAG with a ``conf``, waits for it, and checks the model on
the MLflow server, its artifacts in the bucket, that the model server became
ready with it, and that ``dvc pull`` from the S3 remote restores the data in a
fresh clone. Every process it started is stopped, and
its databases dropped.

The first tests only read the files: compose and what the topology runs agree.
"""

from __future__ import annotations

import datetime as dt
import filecmp
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import compose_files as C
import pytest
import topology as T

from pipelines.ops.airflow_api import AirflowAPI, APIError

DAG_ID = "flights_training"
DATA_DATE = "2013-03-10"
# The cheapest run the DAG allows: a 35-day window (21 training days before the
# 14 validation and 14 holdout days of params.yaml would be 49; 7 is the
# minimum), one epoch. The first model must beat the baseline to become
# champion; one epoch may not, so the promotion is forced (and recorded).
RUN_CONF = {
    "data_date": DATA_DATE,
    "epochs": 1,
    "training_window_days": 35,
    "force_promotion": True,
    "promotion_reason": "topology test: one epoch, forced so batch prediction has a champion",
}
RUN_TIMEOUT = 600


# --------------------------------------------------------------------------- compose and the topology agree


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> T.Topology:
    """The topology's configuration, computed but not started."""
    top = T.Topology(tmp_path_factory.mktemp("plan"))
    top.configure(redis_db=15)
    return top


def test_every_compose_service_has_a_counterpart(plan: T.Topology) -> None:
    assert set(plan.services) == set(T.SERVICES), (
        "docker-compose.yml and tests/topology.py SERVICES list different services: "
        f"{set(plan.services) ^ set(T.SERVICES)}"
    )
    skipped = {name for name, kind in T.SERVICES.items() if kind == "skipped"}
    assert all(plan.services[name].get("profiles") for name in skipped), "only services behind a profile are skipped"


def test_the_topology_runs_compose_commands_and_environment(plan: T.Topology) -> None:
    """The processes get compose's own command and environment; only addresses and paths differ."""
    for name, args in plan.airflow_components():
        compose_argv = C.command(plan.services[name])
        assert compose_argv[0] == "airflow"
        assert [a for a in args if not a.isdigit()] == [a for a in compose_argv[1:] if not a.isdigit()], name
    env = plan.airflow_env()
    compose_env = C.environment(plan.services["airflow-scheduler"])
    assert set(compose_env) <= set(env)
    assert set(C.image_env("base")) <= set(env), "the image's ENV reaches the processes"
    extra = set(env) - set(compose_env) - set(C.image_env("base"))
    assert extra == {"PATH", "HOME", "HOSTNAME", "LANG", *T.PRIVATE_PORTS.values()}, extra
    for key, value in compose_env.items():
        same = value == env[key]
        assert (
            same or key.startswith(("AIRFLOW__DATABASE__", "AIRFLOW__CELERY__")) or "://" in value or "/opt/" in value
        ), f"{key} changed from {value!r} to {env[key]!r}"


def test_translation_leaves_no_compose_hostname(plan: T.Topology) -> None:
    """Every reference to another service was mapped onto this machine (a new one fails here)."""
    left = {}
    for name, kind in T.SERVICES.items():
        if kind in ("run", "airflow", "one-shot", "serving"):
            for key, value in plan.service_env(name).items():
                if T.untranslated(value, plan.services):
                    left[f"{name}.{key}"] = value
            for word in plan.t.argv(C.command(plan.services[name]), name):
                if T.untranslated(word, plan.services):
                    left[f"{name} command"] = word
    for cfg in (plan.stack.get("configs") or {}).values():
        text = plan.t.text(cfg["content"], "configs")
        if T.untranslated(text, plan.services):
            left["configs"] = text
    assert not left, left


def test_key_settings_have_the_production_shape(plan: T.Topology) -> None:
    env = plan.airflow_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://{T.REDIS_HOST}:{T.REDIS_PORT}/15"
    airflow_db = plan.t.database("airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f"@127.0.0.1:5432/{airflow_db}")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith(f"@127.0.0.1:5432/{airflow_db}")
    # Authentication on: a users list and a passwords file, never "everyone is admin".
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(str(plan.root))
    # Tasks log to the MLflow server with credentials, version data to the S3 remote.
    assert env["MLFLOW_TRACKING_URI"] == plan.mlflow_url
    assert env["MLFLOW_TRACKING_USERNAME"] and env["MLFLOW_TRACKING_PASSWORD"]
    assert env["MLOPS_DVC_REMOTE_URL"].startswith("s3://")
    assert env["MLOPS_DVC_REMOTE_ENDPOINT"] == plan.s3_url
    assert Path(env["MLOPS_DATA_DIR"]).is_relative_to(env["MLOPS_DVC_REPO"])
    assert env.get("MLOPS_VERSIONING", "on") == "on"
    # The MLflow server: PostgreSQL backend, S3 artifacts, basic auth on.
    mlflow = plan.t.argv(C.command(plan.services["mlflow"]), "mlflow")
    assert f"--backend-store-uri=postgresql+psycopg2://{plan.name}:" in " ".join(mlflow)
    assert any(a.startswith("--artifacts-destination=s3://") for a in mlflow)
    assert "--app-name=basic-auth" in mlflow
    assert plan.service_env("mlflow")["MLFLOW_S3_ENDPOINT_URL"] == plan.s3_url
    # The buckets minio-init creates are the ones MLflow and DVC use.
    used = {env["MLOPS_DVC_REMOTE_URL"].split("/")[2]} | {
        a.split("//")[1].split("/")[0] for a in mlflow if a.startswith("--artifacts-destination=")
    }
    assert used == set(C.buckets(plan.services))


def test_ports_stay_in_the_projects_range(plan: T.Topology) -> None:
    assert set(plan.t.ports.values()) <= set(T.PORT_RANGE)
    assert len(set(plan.t.ports.values())) == len(plan.t.ports)
    # Every port the topology gives out stands for one compose publishes (or a private one moved).
    published = {
        (name, port)
        for name, service in plan.services.items()
        if T.SERVICES[name] != "skipped"
        for port in C.container_ports(service)
    }
    assert set(plan.t.ports) == (published - T.UNSERVED_PORTS) | set(T.PRIVATE_PORTS)


def test_one_shot_jobs_run_before_what_depends_on_them(plan: T.Topology) -> None:
    """up() runs minio-init and airflow-init before the services compose makes wait for them."""
    order = ["postgres", "redis", "minio", "minio-init", "mlflow", "airflow-init"] + [
        n for n, k in T.SERVICES.items() if k == "airflow"
    ]
    for name in order:
        for dependency, spec in plan.services[name].get("depends_on", {}).items():
            if spec["condition"] == "service_completed_successfully":
                assert order.index(dependency) < order.index(name), f"{name} needs {dependency} first"


# --------------------------------------------------------------------------- the running topology


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The whole topology up, one training run through the REST API; everything removed afterwards."""
    before = _descendants()
    started = time.perf_counter()
    top = T.Topology(tmp_path_factory.mktemp("topology"), log=lambda line: print(line, flush=True))
    survivors: list[str] = []
    try:
        top.up()
        result = _trigger_training(top)
        top.snapshot_pids()
        yield top, result
    finally:
        survivors = top.down()
        print(f"topology: whole module {time.perf_counter() - started:.0f}s; steps {top.timings}", flush=True)
    assert not survivors, f"processes left behind: {survivors}"
    assert _descendants() <= before, f"child processes left: {_descendants() - before}"
    assert not _databases_named(top.name), "databases left behind"


def _databases_named(prefix: str) -> list[str]:
    done = subprocess.run(
        [
            "psql",
            "-h",
            T.PG_HOST,
            "-U",
            T.PG_ADMIN,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' "
            f"UNION SELECT rolname FROM pg_roles WHERE rolname LIKE '{prefix}%'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def _trigger_training(top: T.Topology) -> dict:
    """What an operator's client does: log in, wait for the DAG, trigger it with a conf, poll the run."""
    api = AirflowAPI.login(top.api_url, "admin", top.values["AIRFLOW_ADMIN_PASSWORD"], timeout=60)
    deadline = time.monotonic() + 300
    while True:  # the DAG processor parses the DAG folder once it is up
        top.cluster.services.check_alive()
        try:
            dag = api.dag(DAG_ID)
            if dag.get("next_dagrun_logical_date"):
                break
        except APIError as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(2)
    assert dag["is_paused"], "DAGs start paused"
    # The run takes the DAG's next nightly slot, so the scheduler adds no run of its own on unpause.
    run = api.trigger(DAG_ID, logical_date=dag["next_dagrun_logical_date"], conf=RUN_CONF)
    api.unpause(DAG_ID)
    started = time.perf_counter()
    top.log(f"topology: triggered {run['dag_run_id']}")
    # Compose's healthchecks, run against the live services while the DAG runs.
    with ThreadPoolExecutor() as pool:
        names = top.names("run", "airflow")
        health = pool.map(top.healthcheck, names)
        state = api.wait_for_run(
            DAG_ID, run["dag_run_id"], timeout=RUN_TIMEOUT, watch=lambda _: top.cluster.services.check_alive()
        )["state"]
        health = dict(zip(names, health, strict=True))
    seconds = time.perf_counter() - started
    top.timings["DAG run"] = seconds
    tis = api.task_instances(DAG_ID, run["dag_run_id"])
    tasks = {ti["task_id"]: ti["state"] for ti in tis}
    took = ", ".join(
        f"{ti['task_id']} {ti['duration'] or 0:.0f}s" for ti in sorted(tis, key=lambda t: t["start_date"] or "")
    )
    top.log(f"topology: run {state} in {seconds:.0f}s: {took}")
    if state != "success":
        logs = T.task_logs(Path(top.airflow_env()["AIRFLOW_HOME"]), DAG_ID, run["dag_run_id"])
        pytest.fail(f"run {state}: {tasks}\n{logs}\nworker:\n{top.cluster.services.tail('airflow-worker')}")
    # The model server answers /ready once it has loaded the champion the run registered.
    for name in top.names("serving"):
        with top.timed(f"{name} ready"):
            top.wait_healthy(name, timeout=300)
        health[name] = top.healthcheck(name)
    return {"api": api, "run": run, "state": state, "tasks": tasks, "seconds": seconds, "health": health}


def _http_status(url: str, headers: dict | None = None, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.e2e
def test_training_run_succeeds_on_celery(stack) -> None:
    top, result = stack
    assert result["state"] == "success"
    assert set(result["tasks"].values()) == {"success"}, result["tasks"]
    run = result["api"].dag_run(DAG_ID, result["run"]["dag_run_id"])
    assert run["conf"] == RUN_CONF
    # The tasks ran on the Celery worker: their records name the queue and the worker's host.
    tis = result["api"].task_instances(DAG_ID, result["run"]["dag_run_id"])
    assert {ti["queue"] for ti in tis} == {"default"}
    assert all(ti["hostname"] for ti in tis)
    assert "celery@" in top.cluster.services.tail("airflow-worker", 100_000)


@pytest.mark.e2e
def test_logins_are_required(stack) -> None:
    top, result = stack
    assert _http_status(f"{top.api_url}/api/v2/dags") == 401
    wrong = b'{"username": "admin", "password": "not-the-password"}'
    assert _http_status(f"{top.api_url}/auth/token", {"Content-Type": "application/json"}, wrong) == 401
    assert _http_status(f"{top.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    user, password = top.values["MLFLOW_TRACKING_USERNAME"], top.values["MLFLOW_TRACKING_PASSWORD"]
    basic = {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}
    assert _http_status(f"{top.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1", basic) == 200


@pytest.mark.e2e
def test_compose_healthchecks_pass(stack) -> None:
    _, result = stack
    failing = {
        name: (done.returncode, done.stdout[-300:], done.stderr[-300:])
        for name, done in result["health"].items()
        if done.returncode != 0
    }
    assert not failing, failing


@pytest.fixture(scope="module")
def registered(stack):
    """The model version of the run, read from the MLflow server with the pipeline's credentials."""
    import mlflow

    top, result = stack
    os.environ["MLFLOW_TRACKING_USERNAME"] = top.values["MLFLOW_TRACKING_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = top.values["MLFLOW_TRACKING_PASSWORD"]
    try:
        client = mlflow.MlflowClient(top.mlflow_url, top.mlflow_url)
        run_id = result["run"]["dag_run_id"]
        versions = client.search_model_versions(f"name = 'flight_delay' and tags.`lineage.run_id` = '{run_id}'")
        assert len(versions) == 1, versions
        version = client.get_model_version("flight_delay", versions[0].version)
        artifacts = client.get_model_version_download_uri("flight_delay", version.version)
        yield {"client": client, "version": version, "artifacts": artifacts}
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


@pytest.mark.e2e
def test_model_is_registered_on_the_mlflow_server(registered) -> None:
    version = registered["version"]
    assert {"challenger", "champion"} <= set(version.aliases)
    assert version.tags["promotion.forced"] in ("true", "True")
    assert version.tags["lineage.dag_id"] == DAG_ID
    assert version.tags["lineage.dataset_git_rev"]
    champion = registered["client"].get_model_version_by_alias("flight_delay", "champion")
    assert champion.version == version.version


@pytest.mark.e2e
def test_model_artifacts_are_in_the_s3_bucket(stack, registered) -> None:
    top, _ = stack
    bucket = next(
        a.split("//")[1].split("/")[0] for a in C.command(top.services["mlflow"]) if "artifacts-destination" in a
    )
    keys = []
    for page in top.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    # Served by the MLflow server (mlflow-artifacts:/), stored in the bucket under the same path.
    assert registered["artifacts"].startswith("mlflow-artifacts:/"), registered["artifacts"]
    prefix = registered["artifacts"].removeprefix("mlflow-artifacts:").strip("/")
    model_files = {k.removeprefix(prefix + "/") for k in keys if k.startswith(prefix + "/")}
    assert "MLmodel" in model_files, sorted(keys)[:50]
    assert any(k.endswith("model_card.md") for k in keys), "the model card is an artifact of the run"


@pytest.mark.e2e
def test_batch_predictions_use_the_registered_champion(stack, registered) -> None:
    import pandas as pd

    top, _ = stack
    day = dt.date.fromisoformat(DATA_DATE) + dt.timedelta(days=1)
    files = list((top.worker_data_dir() / "predictions" / f"date={day.isoformat()}").glob("*.parquet"))
    assert files, "no predictions written"
    frame = pd.read_parquet(files[0])
    assert len(frame) > 100
    assert set(frame["model_version"].astype(str)) == {str(registered["version"].version)}


@pytest.mark.e2e
def test_dvc_pull_from_the_s3_remote_restores_the_data(stack, registered, tmp_path) -> None:
    """A data scientist's fresh clone gets the dataset version's data back from the S3 remote."""
    top, _ = stack
    env = top.worker_env()
    repo = Path(env["MLOPS_DVC_REPO"])
    rev = registered["version"].tags["lineage.dataset_git_rev"]
    clone_env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "DVC_NO_ANALYTICS": "1",
    }

    def sh(*argv: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run(argv, cwd=cwd, env=clone_env, capture_output=True, text=True)
        assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    # docs/production.md: the datasets branch leaves the stack as a git bundle.
    bundle = tmp_path / "datasets.bundle"
    with open(bundle, "wb") as out:
        subprocess.run(["git", "-C", str(repo), "bundle", "create", "-", "datasets"], stdout=out, check=True)
    clone = tmp_path / "flights"
    sh("git", "clone", "--quiet", "--branch", "datasets", str(bundle), str(clone))
    sh("git", "checkout", "--quiet", rev, cwd=clone)
    dvc = [sys.executable, "-m", "dvc"]
    sh(*dvc, "remote", "add", "--local", "-d", "storage", env["MLOPS_DVC_REMOTE_URL"], cwd=clone)
    sh(*dvc, "remote", "modify", "--local", "storage", "endpointurl", env["MLOPS_DVC_REMOTE_ENDPOINT"], cwd=clone)
    assert not (clone / "data" / "raw").exists()
    # The pointer files by name: a bare `dvc pull` also wants dvc.yaml's outputs (build/), never pushed.
    sh(*dvc, "pull", "data/raw.dvc", "data/processed.dvc", cwd=clone)

    data = Path(env["MLOPS_DATA_DIR"])
    for folder in ("raw", "processed"):
        pulled, original = clone / "data" / folder, data / folder
        files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
        assert files, f"nothing in {original}"
        assert sorted(p.relative_to(pulled) for p in pulled.rglob("*") if p.is_file()) == files
        match, mismatch, errors = filecmp.cmpfiles(original, pulled, [str(f) for f in files], shallow=False)
        assert not mismatch and not errors, (mismatch, errors)
    remote = env["MLOPS_DVC_REMOTE_URL"].removeprefix("s3://").split("/", 1)
    listed = top.s3_client().list_objects_v2(Bucket=remote[0], Prefix=remote[1])
    assert listed.get("KeyCount", 0) > 0, "the DVC remote's bucket is empty"


@pytest.mark.e2e
def test_airflow_init_runs_again_without_touching_the_data_repository(stack) -> None:
    """`docker compose up` again (a new image, a rotated password) re-runs airflow-init on live volumes."""
    top, _ = stack
    repo = Path(top.worker_env()["MLOPS_DVC_REPO"])

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    refs = {ref: git("rev-parse", ref) for ref in ("main", "datasets")}
    assert git("log", "--format=%s", "main").splitlines() == ["Pipeline code of the image"]
    top.run_one_shot("airflow-init")
    assert {ref: git("rev-parse", ref) for ref in refs} == refs, "same image code: no new commit"
    assert git("status", "--porcelain") == ""
