"""The shadow period against a real MLflow registry: ``python -m pipelines promote-challenger``.

Versions are registered without training (the shadow period reads the registry and the served
log, never the model); the served log is written by the real served log. A challenger waits
while the log holds too few requests, is promoted once it holds enough that agree, is refused
when they do not, and a person can force it, named in the record.
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
from shadow_helpers import write_served

NAME = "flight_delay"
REPO = Path(__file__).resolve().parents[2]
SINCE = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating one takes seconds); each test has its own model in it."""
    root = tmp_path_factory.mktemp("registry")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture
def registry(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A new registered model, a data folder and a params file asking for 3 shadow requests agreeing on 90%."""
    import mlflow

    name = f"{NAME}_{request.node.name[5:40]}"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["register"].update({"model_name": name, "min_shadow_requests": 3, "canary": {"min_agreement": 0.9}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_DATA_DIR": str(tmp_path / "data"),
        "MLOPS_PARAMS": str(tmp_path / "params.yaml"),
        "MLOPS_VERSIONING": "off",
        "MLOPS_USER": "carol",
        "MLFLOW_TRACKING_URI": store,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the in-process command reads the same environment
    client = mlflow.MlflowClient(store, store)
    client.create_registered_model(name)
    source = tmp_path / "model"
    source.mkdir()
    return {"client": client, "env": os.environ | env, "source": str(source), "root": tmp_path, "name": name}


def _version(registry, *, champion: bool = False, waiting: bool = False) -> str:
    client = registry["client"]
    version = str(client.create_model_version(registry["name"], registry["source"]).version)
    client.set_model_version_tag(registry["name"], version, "metrics.holdout_auc", "0.710000")
    if champion:
        client.set_registered_model_alias(registry["name"], "champion", version)
    if waiting:  # what the register step leaves on a challenger that passed the gate in shadow mode
        client.set_registered_model_alias(registry["name"], "challenger", version)
        client.set_model_version_tag(registry["name"], version, "promotion.pending", "shadow")
        client.set_model_version_tag(registry["name"], version, "promotion.shadow_since", SINCE.isoformat())
    return version


def _cli(registry, *args: str) -> subprocess.CompletedProcess:
    """The command as an operator runs it, in its own interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "promote-challenger", *args],
        capture_output=True,
        text=True,
        env=registry["env"],
        cwd=REPO,
    )


def _promote(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """The same command's ``main``, in this process (an interpreter start saved per call)."""
    from pipelines.__main__ import main

    capsys.readouterr()
    code = main(["promote-challenger", *args])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    return json.loads(out.out)


def _requests(champion: str, shadow: str, n: int, agree: bool) -> list:
    return [
        (f"r{i}", SINCE + dt.timedelta(hours=i), champion, shadow, [(0.7, 0.8 if agree else 0.3), (0.1, 0.2)])
        for i in range(n)
    ]


def _champion(registry) -> str:
    return str(registry["client"].get_model_version_by_alias(registry["name"], "champion").version)


def _log(registry) -> str:
    return (registry["root"] / "home" / "promotion_log.md").read_text()


def test_a_challenger_waits_for_enough_requests_then_is_promoted(registry, capsys) -> None:
    old = _version(registry, champion=True)
    new = _version(registry, waiting=True)
    served = registry["root"] / "data" / "served"
    write_served(served, _requests(old, new, 2, agree=True))

    waited = _promote(capsys)
    assert waited["action"] == "wait" and "3 requests needed" in waited["reason"]
    assert _champion(registry) == old, "the champion stays intact while the challenger waits"

    write_served(served, [("late", SINCE, old, new, [(0.2, 0.2)])])
    run = _cli(registry)
    assert run.returncode == 0, run.stderr[-3000:]
    done = json.loads(run.stdout)
    assert done["action"] == "promote" and done["evidence"]["requests"] == 3
    assert "shadow period passed: 3 requests" in done["reason"]
    assert _champion(registry) == new
    tags = registry["client"].get_model_version(registry["name"], new).tags
    assert tags["promotion.pending"] == "promoted" and tags["promotion.previous_champion"] == old
    assert tags["shadow.requests"] == "3" and tags["promotion.decision"].startswith("promoted after shadow")
    assert f"| promote | v{new} | v{old} |" in _log(registry)
    assert _promote(capsys)["action"] == "none", "nothing waits any more"


def test_enough_requests_that_disagree_refuse_the_challenger(registry, capsys) -> None:
    old = _version(registry, champion=True)
    new = _version(registry, waiting=True)
    write_served(registry["root"] / "data" / "served", _requests(old, new, 3, agree=False))
    done = _promote(capsys)
    assert done["action"] == "refuse" and "below the required 90.0%" in done["reason"]
    assert _champion(registry) == old
    assert registry["client"].get_model_version(registry["name"], new).tags["promotion.pending"] == "refused"
    assert f"| refuse | v{new} | v{old} |" in _log(registry)


def test_a_person_can_force_the_waiting_challenger_and_is_named(registry, capsys) -> None:
    from pipelines.__main__ import main

    old = _version(registry, champion=True)
    new = _version(registry, waiting=True)
    assert main(["promote-challenger", "--force", "--reason", "short"]) == 2
    assert "promotion_reason" in capsys.readouterr().err
    done = _promote(capsys, "--force", "--reason", "load test passed on the staging cluster")
    assert done["action"] == "force-promote" and _champion(registry) == new
    tags = registry["client"].get_model_version(registry["name"], new).tags
    assert tags["promotion.forced_by"] == "carol" and tags["promotion.forced"] == "true"
    assert f"| force-promote | v{new} | v{old} |" in _log(registry)
    assert "forced by carol: load test passed on the staging cluster" in _log(registry)
