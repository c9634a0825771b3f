"""Data versioning end to end: the real DAG records DVC dataset versions that a fresh clone pulls back.

The project is cloned into a temporary folder, which plays the team's
repository; the data folder lives inside that clone, the DVC remote in a local
folder beside it. Real git, real DVC, real Airflow (``dag.test()``), real MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import set_env

REPO = Path(__file__).resolve().parents[2]
DAYS = ("2013-06-20", "2013-06-21")
RUN_CONF = {"training_window_days": 35, "epochs": 1}

pytestmark = pytest.mark.e2e


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------- dvc.yaml and the DAG agree


def test_dvc_stages_match_dag_tasks() -> None:
    """Each stage is named after a DAG task and its module, and runs that step's code."""
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.config import load_params

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    tasks = set(DagBag(dag_folder=str(REPO / "dags")).dags["flights_training"].task_ids)
    raw = load_params(REPO / "params.yaml").model_dump(by_alias=True)
    assert set(stages) == {"preprocess", "train", "evaluate"}
    for name, stage in stages.items():
        assert name in tasks, f"stage {name} is not a task of the training DAG"
        assert stage["cmd"].startswith(f"python -m pipelines step {name} "), stage["cmd"]
        assert f"pipelines/steps/{name}.py" in stage["deps"], f"stage {name} does not depend on its module"
        for key in stage.get("params", []):
            assert key in raw, f"stage {name} names params key {key!r}, absent from params.yaml"


# --------------------------------------------------------------------------- two nightly runs


@pytest.fixture(scope="module")
def versioned_runs(tmp_path_factory, airflow_db):
    """Two consecutive nightly runs of the DAG with versioning on, in a clone of the project."""
    from airflow.dag_processing.dagbag import DagBag

    root = tmp_path_factory.mktemp("dvc-e2e")
    team = root / "team.git"  # the team's shared repository
    project = root / "project"  # the clone the pipeline runs in
    subprocess.run(["git", "clone", "--quiet", "--bare", str(REPO), str(team)], check=True)
    subprocess.run(["git", "clone", "--quiet", str(team), str(project)], check=True)
    env = {
        "MLOPS_DATASETS_GIT_REMOTE": "origin",
        "MLOPS_VERSIONING": "on",
        "MLOPS_DVC_REPO": str(project),
        "MLOPS_DATA_DIR": str(project / "data"),
        "MLOPS_DVC_REMOTE_URL": str(root / "remote"),
        "MLOPS_HOME": str(root / "home"),
    }
    restore_env = set_env(env)
    head_before = _git(project, "rev-parse", "HEAD")
    try:
        dag = DagBag(dag_folder=str(REPO / "dags")).dags["flights_training"]
        runs = []
        for day in DAYS:
            logical = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC) + dt.timedelta(days=1, hours=3)
            runs.append(dag.test(logical_date=logical, run_conf={"data_date": day, **RUN_CONF}))
        yield {"root": root, "team": team, "project": project, "runs": runs, "env": env, "head_before": head_before}
    finally:
        restore_env()


def _versions(runs) -> list:
    import mlflow

    from pipelines.settings import resolve

    uri = resolve().tracking_uri
    client = mlflow.MlflowClient(uri, uri)
    out = []
    for run in runs:
        found = client.search_model_versions(f"name = 'flight_delay' and tags.`lineage.run_id` = '{run.run_id}'")
        assert len(found) == 1, run.run_id
        out.append(found[0])
    return out


def test_each_run_records_a_dataset_version(versioned_runs) -> None:
    project = versioned_runs["project"]
    assert [r.state for r in versioned_runs["runs"]] == ["success", "success"]
    versions = _versions(versioned_runs["runs"])
    revs = [v.tags["lineage.dataset_git_rev"] for v in versions]
    assert len(set(revs)) == 2
    history = _git(project, "rev-list", "--first-parent", "datasets").split()
    assert history[:2] == [revs[1], revs[0]], "the second version follows the first on the datasets branch"
    assert _git(versioned_runs["team"], "rev-parse", "datasets") == revs[1], "the branch was pushed to the team"
    for v in versions:
        assert v.tags["lineage.dataset_content_hash"].startswith("sha256:")
        assert v.tags["lineage.code_revision"]
    # The developer's branch and work tree are untouched.
    assert _git(project, "rev-parse", "HEAD") == versioned_runs["head_before"]
    assert _git(project, "status", "--porcelain") == ""


def test_fresh_clone_pulls_byte_identical_data(versioned_runs, tmp_path) -> None:
    from pipelines.config import load_params
    from pipelines.data.partitions import partition_path
    from pipelines.model.features import files_fingerprint
    from pipelines.steps.collect import training_window
    from pipelines.steps.version import restore_dataset_version

    for i, v in enumerate(_versions(versioned_runs["runs"])):
        dest = restore_dataset_version(
            str(versioned_runs["team"]),  # a fresh clone of the team's repository
            v.tags["lineage.dataset_git_rev"],
            tmp_path / f"clone-{i}",
            remote_url=versioned_runs["env"]["MLOPS_DVC_REMOTE_URL"],
        )
        processed = dest / "data" / "processed"
        assert files_fingerprint(processed.glob("splits/*.parquet"), processed) == v.tags["lineage.data_fingerprint"]
        sheet = (dest / "DATASHEET.md").read_text()
        assert "Collection window" in sheet and "Who can read it" in sheet and "Retention" in sheet
        assert "Validation**: passed" in sheet
        params = load_params(dest / "params.yaml")  # the run's effective params
        assert params.preprocess.window_end == dt.date.fromisoformat(DAYS[i])
        assert params.preprocess.training_window_days == RUN_CONF["training_window_days"]
        raw = dest / "data" / "raw"
        window = [partition_path(raw, d) for d in training_window(params.preprocess.window_end, 35, params.dataset)]
        assert files_fingerprint(window, raw) == v.tags["lineage.raw_fingerprint"]


def test_reproduce_a_model_version_from_its_lineage(versioned_runs, tmp_path) -> None:
    """`python -m pipelines reproduce` restores code and data, runs `dvc repro`, compares the AUC."""
    version = str(_versions(versioned_runs["runs"])[1].version)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "reproduce", "--model-version", version, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert result["within_tolerance"], result
    assert abs(result["difference"]) <= 0.01
    clone = Path(result["workdir"])
    assert (clone / "build" / "model" / "model.keras").is_file()
    assert (clone / "dvc.lock").is_file()
    # A data scientist varies a parameter from the same restored version.
    env = os.environ | {"PYTHONPATH": str(clone), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    exp = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "train.epochs=1", "--name", "one-epoch"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
    )
    assert exp.returncode == 0, exp.stdout[-2000:] + exp.stderr[-2000:]
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=clone, capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0 and "one-epoch" in shown.stdout


def _pipelines(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_teammate_pulls_a_model_versions_data_in_a_fresh_clone(versioned_runs, tmp_path) -> None:
    """`python -m pipelines data pull`: by version or alias, from the project's registry; the clone knows the remote."""
    from pipelines.model.features import files_fingerprint

    teammate = tmp_path / "teammate"
    subprocess.run(["git", "clone", "--quiet", str(versioned_runs["team"]), str(teammate)], check=True)
    # The committed .dvc/config names the team's remote: no `dvc remote add` in a fresh clone ...
    remotes = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "list"], cwd=teammate, capture_output=True, text=True, check=True
    ).stdout
    assert remotes.split()[:2] == ["storage", "s3://<team-bucket>/flights-mlops"] and "(default)" in remotes, remotes
    # ... and the embedded setup's local override (.dvc/config.local, git-ignored) wins where it exists.
    project_remotes = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "list"], cwd=versioned_runs["project"], capture_output=True, text=True
    ).stdout
    assert versioned_runs["env"]["MLOPS_DVC_REMOTE_URL"] in project_remotes, project_remotes

    env = {**os.environ, "MLOPS_DVC_REPO": str(teammate), "MLOPS_DATA_DIR": str(teammate / "data")}
    versions = _versions(versioned_runs["runs"])
    by_version = _pipelines(
        "data",
        "pull",
        "--model-version",
        str(versions[0].version),
        "--dest",
        str(tmp_path / "v1"),
        cwd=teammate,
        env=env,
    )
    assert by_version.returncode == 0, by_version.stderr[-3000:]
    pulled = json.loads(by_version.stdout[by_version.stdout.index("{") :])
    assert pulled["git_rev"] == versions[0].tags["lineage.dataset_git_rev"]
    processed = tmp_path / "v1" / "data" / "processed"
    assert (
        files_fingerprint(processed.glob("splits/*.parquet"), processed) == versions[0].tags["lineage.data_fingerprint"]
    )

    by_alias = _pipelines(
        "data", "pull", "--alias", "challenger", "--dest", str(tmp_path / "challenger"), cwd=teammate, env=env
    )
    assert by_alias.returncode == 0, by_alias.stderr[-3000:]
    assert json.loads(by_alias.stdout[by_alias.stdout.index("{") :])["model_version"] == str(versions[1].version)

    for args, expected in (
        (("--model-version", "999"), "flight_delay version 999 is not in the registry"),
        (("--alias", "no-such-alias"), "flight_delay@no-such-alias is not in the registry"),
    ):
        bad = _pipelines("data", "pull", *args, "--dest", str(tmp_path / "bad"), cwd=teammate, env=env)
        assert bad.returncode == 2 and expected in bad.stderr, bad.stderr[-2000:]
        assert not (tmp_path / "bad").exists()

    # Without the registry's location: a clear error, and no stray empty mlflow.db anywhere.
    nowhere = tmp_path / "no-home"
    lost = _pipelines("data", "pull", "--model-version", "1", cwd=teammate, env={**env, "MLOPS_HOME": str(nowhere)})
    assert lost.returncode == 2 and "no MLflow registry at" in lost.stderr and "MLFLOW_TRACKING_URI" in lost.stderr
    assert not list(nowhere.rglob("mlflow.db")) and not list(teammate.rglob("mlflow.db"))
    assert _git(teammate, "status", "--porcelain") == ""


def test_overlapping_runs_keep_a_consistent_history(versioned_runs) -> None:
    """Two runs versioning at the same moment both land, one after the other."""
    from pipelines.settings import resolve

    project = versioned_runs["project"]
    runs_dir = resolve().home / "runs" / "flights_training"
    processed = sorted(runs_dir.glob("*/processed"))
    assert len(processed) == 2
    tip = _git(project, "rev-parse", "datasets")
    script = (
        "import sys, datetime as dt\n"
        "from pipelines.runner import RunContext, run_version_data\n"
        "from pipelines.steps.preprocess import load_manifest\n"
        "p = sys.argv[1]\n"
        "ctx = RunContext(dag_id='overlap', run_id=sys.argv[2], run_day=dt.date(2013, 6, 21))\n"
        "print(run_version_data(ctx, {'processed_dir': p, 'data_fingerprint': load_manifest(__import__('pathlib').Path(p))['data_fingerprint']})['git_rev'])\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(p), f"overlap-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for i, p in enumerate(processed)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    history = _git(project, "rev-list", "--first-parent", "datasets").split()
    new = [o.strip().splitlines()[-1] for o, _ in outs]
    assert set(new) <= set(history)
    assert tip in history and history.index(tip) >= 1, "both versions were added on top of the previous tip"
    subprocess.run(["git", "fsck", "--no-progress"], cwd=project, check=True, capture_output=True)
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--cloud"], cwd=project, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr


def test_unreachable_remote_fails_clearly_and_loses_nothing(versioned_runs, monkeypatch) -> None:
    from pipelines.errors import VersioningError
    from pipelines.runner import RunContext, run_version_data
    from pipelines.settings import resolve

    project = versioned_runs["project"]
    tip = _git(project, "rev-parse", "datasets")
    processed = sorted((resolve().home / "runs" / "flights_training").glob("*/processed"))[0]
    monkeypatch.setenv("MLOPS_DVC_REMOTE_URL", "s3://flights-dvc/remote")
    monkeypatch.setenv("MLOPS_DVC_REMOTE_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    ctx = RunContext(dag_id="unreachable", run_id="r1", run_day=dt.date(2013, 6, 21))
    with pytest.raises(VersioningError, match="127.0.0.1:9"):
        run_version_data(ctx, {"processed_dir": str(processed), "data_fingerprint": "x"})
    assert _git(project, "rev-parse", "datasets") == tip
    assert _git(project, "status", "--porcelain") == ""
