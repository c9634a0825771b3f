"""Command line: ``python -m pipelines <command>``.

    run     every step of one pipeline run in this process, in DAG order
    step    one step (collect, validate, preprocess, train, evaluate, register, batch_predict)

The same ``pipelines.run`` functions back the Airflow tasks and the DVC stages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

from pipelines.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every step of one run, in one process")
    run.add_argument("--date", required=True, type=dt.date.fromisoformat, help="data day, YYYY-MM-DD")
    run.add_argument("--run-id", default=None, help="run id (default: cli__<date>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params.yaml key, e.g. train.epochs=3")
    return p


def _overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from pipelines.run import RunContext, run_all

    try:
        if args.command == "run":
            ctx = RunContext(
                dag_id="cli",
                run_id=args.run_id or f"cli__{args.date.isoformat()}",
                run_day=args.date,
                overrides=_overrides(args.set),
            )
            ctx.params  # noqa: B018 - fail on bad params before any work
            result = run_all(ctx)
            print(json.dumps(result, indent=1, default=str))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
