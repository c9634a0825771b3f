"""The whole benchmark suite, one command: ``.venv/bin/python -m benchmarks`` (or ``make bench``).

Runs each benchmark in turn, each printing its table and writing it to
``benchmarks/results/<name>.md`` (raw figures beside it as JSON):

    main_command    ``make pipeline`` on a fresh state: wall time and the process tree's peak memory (PSS)
    e2e             two nights (the first run, then the next night) through Airflow and through the CLI
    scaling         the nightly run at 1x, 4x and 16x the data
    input_pipeline  tf.data against training consumption and an in-memory baseline, at 1x and 10x
    throughput      batch scoring (production path vs one whole frame), validation and drift per million rows
    serving         the online service against mlflow models serve: latency at fixed rates, batches, swaps, memory
    feature_cost    each feature group's preprocessing at scoring time: latency per 1,000 rows and memory
    staleness       AUC by model age: models of weekly nights scored 1-60 days on, against a fresh model

``--only e2e,throughput`` runs a subset. On a quiet 2-core machine (2026-11-30) e2e's warm and cli
modes (its default) took about 4 minutes a repeat (two nights each; ``--modes base,...`` adds the old code's),
``scaling --scales 1,4,16`` 7.5, input_pipeline 5, throughput about 3 and serving about 6; staleness took 6.5 on a
busy one. Nothing here is a test and CI times nothing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

SUITE = ("main_command", "e2e", "scaling", "input_pipeline", "throughput", "serving", "feature_cost", "staleness")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SUITE), help=f"comma-separated subset of {', '.join(SUITE)}")
    args = p.parse_args(argv)
    failed = []
    for name in args.only.split(","):
        if name not in SUITE:
            p.error(f"unknown benchmark {name!r}; choose from {', '.join(SUITE)}")
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.{name}").main([])
        except Exception as err:  # one broken benchmark should not hide the others' tables
            print(f"{name} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - started:.0f} s ===", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
