"""Command line: ``python -m pipelines <command>``.

    run        every step of one pipeline run in this process, in DAG order
    monitor    the monitoring checks of one day, as the monitoring DAG runs them
    step       one training step on explicit paths (what the ``dvc.yaml`` stages run)
    release    publish a quarantined batch after a fix (validated again)
    rollback   move the champion alias back to the previous champion, recorded
    promote-challenger  promote the challenger waiting in shadow once the served log allows it
    reproduce  restore a registered model's code and data, retrain, compare the metrics
    data pull  a model version's (or alias') training data: its dataset version cloned, pulled, checked
    explain    one row through a model version, stage by stage: inputs, preprocessing, logit parts, probability
    tune       search the model's hyper-parameters on a preprocessed dataset; --apply writes the proposal

The same functions back the Airflow tasks, the DVC stages and these commands.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import sys
from pathlib import Path

from pipelines.config import ConfigError, Params, load_params


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="every step of one run, in one process")
    run.add_argument("--date", required=True, type=dt.date.fromisoformat, help="data day, YYYY-MM-DD")
    run.add_argument("--run-id", default=None, help="run id (default: cli__<date>)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key, e.g. train.epochs=3",
    )

    mon = sub.add_parser("monitor", help="the monitoring checks of one day, as the monitoring DAG runs them")
    mon.add_argument("--date", required=True, type=dt.date.fromisoformat, help="monitored day (last of the window)")
    mon.add_argument("--run-id", default=None, help="run id (default: cli_monitor__<date>)")
    mon.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key, e.g. monitor.window_days=3",
    )

    step = sub.add_parser("step", help="one training step on explicit paths (the dvc.yaml stages)")
    step.add_argument("name", choices=["preprocess", "train", "evaluate"])
    step.add_argument("--params", type=Path, default=Path("params.yaml"))
    step.add_argument("--raw", type=Path, default=Path("data/raw"), help="published partitions (preprocess)")
    step.add_argument("--processed", type=Path, default=Path("build/processed"))
    step.add_argument("--model-dir", type=Path, default=Path("build/model"))
    step.add_argument("--out", type=Path, default=Path("build/evaluation"), help="evaluation output (evaluate)")

    rel = sub.add_parser("release", help="publish a quarantined batch after a fix (it is validated again)")
    rel.add_argument("attempt", type=Path, help="data/quarantine/<run>/attempt-N")

    rb = sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    rb.add_argument("--reason", required=True, help="why (recorded on the versions and in the promotion log)")

    pc = sub.add_parser(
        "promote-challenger", help="promote the challenger waiting in shadow once the served log allows it"
    )
    pc.add_argument("--force", action="store_true", help="promote it now, whatever the served log says")
    pc.add_argument("--reason", default=None, help="why it is forced (required with --force, 10 characters or more)")

    rep = sub.add_parser("reproduce", help="restore a model version's code and data, retrain, compare metrics")
    rep.add_argument("--model-version", required=True)
    rep.add_argument("--tolerance", type=float, default=0.01, help="largest accepted |AUC difference|")
    rep.add_argument("--workdir", type=Path, default=None, help="where to clone (default: a temporary folder)")

    tn = sub.add_parser("tune", help="hyper-parameter search on a preprocessed dataset's validation split")
    tn.add_argument(
        "--processed", type=Path, default=None, help="preprocessed data (default: data/processed, the latest version)"
    )
    tn.add_argument("--run-id", default=None, help="run id; the same id resumes its study (default: from data+params)")
    tn.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key, e.g. tune.n_trials=5",
    )
    tn.add_argument(
        "--apply", type=Path, default=None, metavar="PROPOSAL", help="write a proposal.yaml into params.yaml"
    )

    data = sub.add_parser("data", help="a registered model's training data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    pull = data_sub.add_parser("pull", help="clone a model version's dataset version and pull its data")
    which = pull.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-version", help="the model version's number")
    which.add_argument("--alias", help="a registry alias, e.g. champion")
    pull.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="a new or empty folder (default: build/datasets/<model>-v<version>, git-ignored)",
    )

    ex = sub.add_parser("explain", help="one row through a model version, stage by stage")
    row = ex.add_mutually_exclusive_group(required=True)
    row.add_argument("--row", help="the row as a JSON object of column: value, or @file")
    row.add_argument(
        "--key", action="append", metavar="COLUMN=VALUE", help="find the row in the collected data (with --date)"
    )
    ex.add_argument("--date", type=dt.date.fromisoformat, help="the collected day the --key row is in, YYYY-MM-DD")
    ex.add_argument("--model-version", default=None, help="the model version (default: the champion)")
    ex.add_argument("--json", action="store_true", help="print the stages as JSON")
    return p


def _overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(
                f"--set {key}: {value!r} is not a YAML value ({problem}); "
                f"quote it whole for the shell, e.g. --set '{key}={{kind: files, format: csv}}'"
            ) from None
    return out


def _latest_day(raw: Path) -> dt.date:
    days = sorted(p.name.removeprefix("date=") for p in raw.glob("date=*") if p.is_dir())
    if not days:
        raise ConfigError(f"no collected partition in {raw}: run 'dvc pull' or the pipeline first")
    return dt.date.fromisoformat(days[-1])


def _step_tracking(params: Params, processed: Path):
    """One MLflow run per (data, params) for runs outside Airflow: train and evaluate share it."""
    from pipelines.settings import resolve
    from pipelines.steps.preprocess import load_manifest
    from pipelines.tracking import Tracking

    settings = resolve()
    fingerprint = load_manifest(processed)["data_fingerprint"]
    digest = hashlib.sha256(json.dumps(params.model_dump(by_alias=True, mode="json"), sort_keys=True).encode())
    return Tracking(
        tracking_uri=settings.tracking_uri,
        experiment=params.mlflow.experiment,
        artifact_root=settings.artifact_root,
        run_key=f"dvc/{fingerprint[:12]}-{digest.hexdigest()[:12]}",
        tags={"pipeline.entry": "dvc"},
    )


def _step(args: argparse.Namespace) -> dict:
    """One ``dvc.yaml`` stage: ``_<name>_stage`` runs the step of that name on the given paths."""
    stages = {"preprocess": _preprocess_stage, "train": _train_stage, "evaluate": _evaluate_stage}
    return stages[args.name](load_params(args.params), args)


# Each stage hands its step the params sections it reads; tests/unit/test_dvc_yaml.py checks
# that dvc.yaml declares them, and every file the stage imports, from these functions.


def _preprocess_stage(params: Params, args: argparse.Namespace) -> dict:
    from pipelines.steps.preprocess import preprocess

    end = params.preprocess.window_end or _latest_day(args.raw)
    manifest = preprocess(params.dataset, params.preprocess, args.raw, end, args.processed)
    return {"window_end": manifest["window_end"], "data_fingerprint": manifest["data_fingerprint"]}


def _train_stage(params: Params, args: argparse.Namespace) -> dict:
    from pipelines.steps.train import train

    tracking = _step_tracking(params, args.processed)
    result = train(params.dataset, params.preprocess, params.train, args.processed, args.model_dir, tracking)
    _history_plot(args.model_dir)
    return result


def _evaluate_stage(params: Params, args: argparse.Namespace) -> dict:
    from pipelines.steps.evaluate import evaluate

    return evaluate(
        params.dataset,
        params.preprocess,
        params.train,
        params.evaluate,
        params.registration,
        args.processed,
        args.model_dir / "model.keras",
        args.out,
        _step_tracking(params, args.processed),
    )


def _history_plot(model_dir: Path) -> None:
    """Per-epoch metrics as records, the shape ``dvc plots`` reads."""
    history = json.loads((model_dir / "history.json").read_text())
    epochs = len(next(iter(history.values()), []))
    rows = [{"epoch": i, **{k: v[i] for k, v in history.items()}} for i in range(epochs)]
    (model_dir / "history_plot.json").write_text(json.dumps(rows, indent=1))


def _monitor(args: argparse.Namespace) -> int:
    """The monitoring DAG's checks for one day, through the same runner functions; a summary on stdout.

    The cooldown and the guard against a queued training run are kept by Airflow: here the
    decision is what the checks ask for, and no training run is created.
    """
    from pipelines.errors import StepError
    from pipelines.monitoring.checks import DataDrift, Performance, PredictionDrift, check_from_dict
    from pipelines.monitoring.served import summaries
    from pipelines.runner import (
        RunContext,
        run_check_compute,
        run_check_data_drift,
        run_check_performance,
        run_check_prediction_drift,
        run_check_published,
        run_check_served,
        run_check_staleness,
        run_resolve_champion,
        run_retrain_decision,
    )

    ctx = RunContext(
        dag_id="cli",
        run_id=args.run_id or f"cli_monitor__{args.date.isoformat()}",
        run_day=args.date,
        overrides=_overrides(args.set),
    )
    ctx.params  # noqa: B018 - fail on bad params before any work
    published = run_check_published(ctx)
    if not published["published"]:
        print(
            f"error: {published['source_day']} is not published ({published['path']}): nothing to monitor",
            file=sys.stderr,
        )
        return 1
    try:
        champion = run_resolve_champion(ctx)
    except StepError as err:  # no champion yet, or one without its reference
        print(f"error: {err}", file=sys.stderr)
        return 1
    checks = {
        "data_drift": run_check_data_drift(ctx, champion),
        "prediction_drift": run_check_prediction_drift(ctx, champion),
        "performance": run_check_performance(ctx, champion),
    }
    decision = run_retrain_decision(ctx, checks, None, 0)
    kinds = {"data_drift": DataDrift, "prediction_drift": PredictionDrift, "performance": Performance}
    print(f"monitored {decision['day']} with {champion['model_name']} v{champion['version']}")
    for name, result in checks.items():
        print(f"  {check_from_dict(kinds[name], result).summary()}")
    # Reported beside the decision (the staleness and compute checks alert through monitor.alerts).
    for line in summaries(run_check_served(ctx, champion)):
        print(f"  {line}")
    print(f"  {run_check_staleness(ctx, champion)['summary']}")
    print(f"  {run_check_compute(ctx)['summary']}")
    verdict = f"retrain ({', '.join(decision['triggers'])})" if decision["retrain"] else "no retraining"
    print(f"decision: {verdict}; cooldown and queued training runs are not checked outside Airflow")
    print(f"reports: {ctx.run_dir / 'monitor'}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    """``tune``: run (or resume) a study and print its proposal; ``--apply`` writes a proposal into params.yaml."""
    from pipelines.runner import RunContext, run_tune
    from pipelines.settings import resolve

    settings = resolve()
    if args.apply is not None:
        from pipelines.proposal import apply_proposal

        changed = apply_proposal(args.apply, settings.params_path)
        for key, change in changed.items():
            print(f"{settings.params_path}: {key}: {change['from']} -> {change['to']}")
        if not changed:
            print(f"{settings.params_path} already holds the values of {args.apply}")
        return 0
    processed = args.processed or settings.processed_dir
    manifest_path = processed / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(
            f"no preprocessed dataset in {processed}: run the pipeline or 'dvc pull', or pass --processed"
        )
    manifest = json.loads(manifest_path.read_text())
    overrides = _overrides(args.set)
    params = load_params(settings.params_path).with_overrides(overrides)
    # The same data and params resume the same study; anything else starts a new one.
    digest = hashlib.sha256(
        json.dumps([params.train.model_dump(mode="json"), params.tune.model_dump(mode="json")], sort_keys=True).encode()
    )
    window_end = dt.date.fromisoformat(manifest["window_end"])
    ctx = RunContext(
        dag_id="cli",
        run_id=args.run_id or f"cli_tune__{window_end}__{manifest['data_fingerprint'][:8]}-{digest.hexdigest()[:8]}",
        run_day=window_end,
        overrides=overrides,
    )
    result = run_tune(ctx, str(processed))
    print(json.dumps(result, indent=1, default=str))
    print(f"\nproposal ({result['proposal_path']}):\n" + Path(result["proposal_path"]).read_text())
    if result["changed"]:
        print(f"apply to params.yaml: {result['apply']}")
        print(f"or for one run: python -m pipelines run --date D {result['set_flags']}")
    else:
        print("the current train values remain best on validation: nothing to change")
    return 0


def _explain(args: argparse.Namespace) -> int:
    """``explain``: the stages of one row through a registered version, as text or JSON."""
    from pipelines.model.explain import explain, format_explanation
    from pipelines.settings import resolve

    settings = resolve()
    params = load_params(settings.params_path)
    bad = [pair for pair in args.key or [] if "=" not in pair]
    if bad:
        raise ConfigError(f"--key expects COLUMN=VALUE, got {bad}")
    keys = dict(pair.partition("=")[::2] for pair in args.key or [])
    result = explain(
        params.dataset,
        params.registration.model_name,
        settings.tracking_uri,
        settings.raw_dir,
        row=args.row,
        keys=keys,
        day=args.date,
        version=args.model_version,
    )
    print(json.dumps(result, indent=1) if args.json else format_explanation(result))
    return 0


def _data_pull(args: argparse.Namespace) -> int:
    """``data pull``: the dataset version of a model version or alias, in a folder of its own."""
    from pipelines.data.pull import model_dataset, pull_model_data, registry_client
    from pipelines.errors import VersioningError
    from pipelines.settings import resolve

    settings = resolve()
    dest = args.dest
    if dest is None:  # named after the version the alias points to now
        name = load_params(settings.params_path).registration.model_name
        found = model_dataset(
            registry_client(settings.tracking_uri), name, version=args.model_version, alias=args.alias
        )
        dest = Path("build") / "datasets" / f"{name}-v{found.model_version}"
    try:
        pulled = pull_model_data(settings, dest, version=args.model_version, alias=args.alias)
    except VersioningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(pulled.as_dict(), indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from pipelines.runner import RunContext, run_all

            ctx = RunContext(
                dag_id="cli",
                run_id=args.run_id or f"cli__{args.date.isoformat()}",
                run_day=args.date,
                overrides=_overrides(args.set),
            )
            ctx.params  # noqa: B018 - fail on bad params before any work
            result = run_all(ctx)
        elif args.command == "monitor":
            return _monitor(args)
        elif args.command == "step":
            result = _step(args)
        elif args.command == "rollback":
            import mlflow

            from pipelines.promotion import rollback
            from pipelines.settings import resolve

            settings = resolve()
            name = load_params(settings.params_path).registration.model_name
            client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
            try:
                result = rollback(client, name, args.reason, settings.home)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
        elif args.command == "promote-challenger":
            from pipelines.runner import RunContext, force_reason, run_promote_challenger

            reason = force_reason({"force_promotion": args.force, "promotion_reason": args.reason})
            ctx = RunContext(dag_id="cli", run_id="promote-challenger", run_day=dt.datetime.now(dt.UTC).date())
            result = run_promote_challenger(ctx, force_reason=reason)
        elif args.command == "release":
            from pipelines.settings import resolve
            from pipelines.steps.validate import ValidationFailed, release
            from pipelines.validation.suite import load_validation_reference

            settings = resolve()
            params = load_params(settings.params_path)
            try:
                result = release(
                    params.dataset,
                    params.validation,
                    args.attempt,
                    settings.raw_dir,
                    reference=load_validation_reference(settings.processed_dir),
                )
            except (ValueError, ValidationFailed) as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
        elif args.command == "data":
            return _data_pull(args)
        elif args.command == "explain":
            return _explain(args)
        elif args.command == "tune":
            return _tune(args)
        else:
            from pipelines.reproduce import reproduce

            result = reproduce(args.model_version, tolerance=args.tolerance, workdir=args.workdir)
            print(json.dumps(result, indent=1, default=str))
            return 0 if result["within_tolerance"] else 1
        print(json.dumps(result, indent=1, default=str))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
