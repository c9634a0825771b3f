"""One row through the model, stage by stage: ``python -m pipelines explain``.

What a data scientist asks of a surprising score: what did the model see, what did
its preprocessing make of it, and which part of the model pushed the score where.
:func:`explain_row` answers from the composed Keras model itself, reading its graph
(no second copy of the feature logic that could drift from it):

1. the raw values, and the typed inputs they become (:func:`to_model_inputs`, as in
   batch scoring and serving);
2. the preprocessing outputs: each scaled number, missing flag and periodic
   encoding of the ``numeric`` tensor, and each id of the ``ids`` tensor (category
   ids with their vocabulary entry, bucket ids with their interval, crosses with
   their parts);
3. the logit as the sum of its parts: the wide part's bias and one term per input
   (value times weight: exact, it is linear), and the deep part's logit (one number:
   it is not additive);
4. the probability, the sigmoid of that logit.

The row comes as JSON or is found in the collected data by its key
(:func:`find_row`); the model is a registered version, the champion by default
(:func:`load_registered`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import ConfigError, DatasetConfig, FeatureSpec
from pipelines.model.core import IDS, NUMERIC

# The Keras classes of the preprocessing layers an id column can come from, and what its id is.
_ID_KINDS = {"StringLookup": "category", "IntegerCategories": "category", "NumericBuckets": "bucket"}
_SUFFIXES = ("_lookup", "_category")  # layer names beyond the column's own name (buckets keep "_bucket")


def _sources(layer: Any) -> list[Any]:
    """The layers whose outputs feed ``layer`` (its first call), in order."""
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation for t in node.input_tensors]


def _numeric_columns(pre: Any) -> list[tuple[Any, str, list[str]]]:
    """Each column of the ``numeric`` tensor: (producing layer, name, raw source columns)."""
    top = pre.output[NUMERIC]._keras_history.operation
    blocks = _sources(top) if type(top).__name__ == "Concatenate" else [top]
    out = []
    for block in blocks:
        inputs = [s.name for s in _sources(block)]
        kind = type(block).__name__
        if kind == "NumericPreprocessing":
            out += [(block, f"scaled {c}", [c]) for c in inputs]
        elif kind == "MissingIndicators":
            out += [(block, f"missing {c}", [c]) for c in inputs]
        elif kind == "PeriodicEncoding":
            name = block.name.removesuffix("_periodic")
            out += [(block, f"{name} {f}", inputs) for f in ("sin", "cos")]
        else:  # a layer this module does not know: still one named column per output
            width = int(block.output.shape[-1])
            out += [(block, f"{block.name}[{i}]", inputs) for i in range(width)]
    return out


def _id_label(layer: Any, local: int) -> Any:
    """What an id stands for: the vocabulary entry, the integer, the bucket's interval."""
    kind = type(layer).__name__
    if kind == "StringLookup":
        vocab = layer.get_vocabulary()
        return "(unseen or missing)" if local == 0 else vocab[local]
    if kind == "IntegerCategories":
        return "(missing or out of range)" if local == 0 else layer.low - 1 + local
    if kind == "NumericBuckets":
        if local == 0:
            return "(missing)"
        b = [float(f"{v:.6g}") for v in layer.boundaries]  # float32 boundaries, shown as written
        lo = b[local - 2] if local >= 2 else None
        hi = b[local - 1] if local - 1 < len(b) else None
        return [lo, hi]  # the value is at or above lo, below hi; None: unbounded
    return None


def _id_columns(pre: Any) -> list[dict[str, Any]]:
    """Each column of the ``ids`` tensor: name, kind, raw sources, its layer and parts (crosses)."""
    ids_layer = pre.get_layer(IDS)
    feeders = _sources(ids_layer)
    columns = []
    for layer in feeders:
        name = layer.name
        for suffix in _SUFFIXES:
            name = name.removesuffix(suffix)
        columns.append(
            {
                "name": name if type(layer).__name__ != "IntegerCategories" else f"{name} (category)",
                "kind": _ID_KINDS.get(type(layer).__name__, type(layer).__name__),
                "sources": [s.name for s in _sources(layer)],
                "layer": layer,
                "cross_name": name,  # as train.crosses names it
            }
        )
    for cross in ids_layer.crosses:
        parts = [columns[i] for i in cross]
        columns.append(
            {
                "name": " x ".join(p["cross_name"] for p in parts),
                "kind": "cross",
                "sources": list(dict.fromkeys(s for p in parts for s in p["sources"])),
                "parts": list(cross),
            }
        )
    return columns


def _frame(row: dict[str, Any], features: FeatureSpec) -> pd.DataFrame:
    missing = [c for c in features.all if c not in row]
    if missing:
        raise ConfigError(f"the row lacks feature columns {missing}")
    return pd.DataFrame([{c: row[c] for c in features.all}])


def _plain(v: Any) -> Any:
    """A JSON-friendly value (NaN as None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    if isinstance(v, pd.Timestamp | dt.date):
        return v.isoformat()
    return v


def explain_row(model: Any, features: FeatureSpec, row: dict[str, Any]) -> dict[str, Any]:
    """Every stage of ``model`` on one raw row.

    Args:
        model: the composed Keras model (``preprocessing`` then ``core``), as saved and registered.
        features: the model's raw feature columns.
        row: raw values by column (others are ignored); None or NaN is missing.

    Returns:
        ``raw``, ``inputs`` (typed), ``numeric`` and ``ids`` (the preprocessing outputs),
        ``logit`` (``wide``: its bias, terms and total; ``deep``; ``total``, the model's own
        logit, which the parts sum to) and ``probability`` (the model's output: the sigmoid
        of the total).
    """
    import keras

    from pipelines.model.features import to_model_inputs
    from pipelines.model.network import predict_proba

    pre, core = model.get_layer("preprocessing"), model.get_layer("core")
    inputs = to_model_inputs(_frame(row, features), features)
    numeric_cols, id_cols = _numeric_columns(pre), _id_columns(pre)
    feeders = [c["layer"] for c in id_cols if "layer" in c]
    outputs = {NUMERIC: pre.output[NUMERIC], IDS: pre.output[IDS]}
    outputs.update({f"feeder_{i}": layer.output for i, layer in enumerate(feeders)})
    got = keras.Model(pre.input, outputs).predict_on_batch(inputs)
    stage = {k: np.asarray(got[k])[0] for k in (NUMERIC, IDS)}
    local_ids = [int(np.asarray(got[f"feeder_{i}"]).reshape(-1)[0]) for i in range(len(feeders))]

    sizes = pre.get_layer(IDS).column_sizes
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    ids_out = []
    for j, col in enumerate(id_cols):
        entry = {"name": col["name"], "kind": col["kind"], "sources": col["sources"]}
        entry["id"] = int(stage[IDS][j] - offsets[j])
        if "layer" in col:
            entry["label"] = _plain(_id_label(col["layer"], local_ids[j]))
        else:
            entry["parts"] = [local_ids[i] for i in col["parts"]]
        entry["row"] = int(stage[IDS][j])  # the row of the shared embedding table
        ids_out.append(entry)
    numeric_out = [
        {"name": name, "sources": sources, "value": float(stage[NUMERIC][i])}
        for i, (_, name, sources) in enumerate(numeric_cols)
    ]

    core_in = {NUMERIC: stage[NUMERIC][None, :], IDS: stage[IDS][None, :]}
    has_wide = any(layer.name == "wide_logit" for layer in core.layers)
    logits = keras.Model(
        core.input, {"deep": core.get_layer("deep_logit").output, "total": core.get_layer("delay_probability").input}
    ).predict_on_batch(core_in)
    deep, total = (float(np.asarray(logits[k]).reshape(-1)[0]) for k in ("deep", "total"))
    wide: dict[str, Any] | None = None
    if has_wide:
        dense, table = core.get_layer("wide_logit"), core.get_layer("wide_weights")
        kernel = np.asarray(dense.kernel)[:, 0].astype(np.float64)
        bias = float(np.asarray(dense.bias)[0])
        id_weights = np.asarray(table.embeddings)[stage[IDS], 0].astype(np.float64)
        values = np.concatenate([stage[NUMERIC].astype(np.float64), id_weights])
        names = [(c["name"], c["sources"], "numeric") for c in numeric_out] + [
            (c["name"], c["sources"], c["kind"]) for c in ids_out
        ]
        terms = [
            {
                "name": n,
                "sources": src,
                "kind": kind,
                "value": float(v),
                "weight": float(w),
                "contribution": float(v * w),
            }
            for (n, src, kind), v, w in zip(names, values, kernel, strict=True)
        ]
        wide_total = bias + float(np.sum(values * kernel))
        by_feature: dict[str, float] = {}
        for t in terms:
            key = t["sources"][0] if len(t["sources"]) == 1 else " x ".join(t["sources"])
            by_feature[key] = by_feature.get(key, 0.0) + t["contribution"]
        wide = {
            "bias": bias,
            "total": wide_total,
            "by_feature": dict(sorted(by_feature.items(), key=lambda kv: -abs(kv[1]))),
            "terms": sorted(terms, key=lambda t: -abs(t["contribution"])),
        }
    return {
        "raw": {c: _plain(row[c]) for c in features.all},
        "inputs": {c: _plain(v[0]) for c, v in inputs.items()},
        "numeric": numeric_out,
        "ids": ids_out,
        "logit": {"wide": wide, "deep": deep, "total": total},
        "probability": float(predict_proba(model, inputs)[0]),
    }


def format_explanation(ex: dict[str, Any], top: int = 15) -> str:
    """The explanation as text, one stage after another (the ``top`` largest wide terms)."""

    def num(v: Any) -> str:
        return "missing" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = []
    if "model" in ex:
        lines.append(f"model: {ex['model']['name']} v{ex['model']['version']}")
    lines += ["", "1. raw values -> model inputs"]
    lines += [f"   {c:<16} {num(v):>14}  -> {num(ex['inputs'][c])}" for c, v in ex["raw"].items()]
    lines += ["", "2. preprocessing", "   numeric (scaled values, missing flags, periodic encodings):"]
    lines += [f"   {c['name']:<28} {c['value']:>10.4f}" for c in ex["numeric"]]
    lines.append("   ids (categories, buckets, crosses):")
    for c in ex["ids"]:
        what = c.get("label") if "label" in c else "parts " + ", ".join(str(p) for p in c["parts"])
        if c["kind"] == "bucket" and isinstance(what, list):
            what = (
                f"[{num(what[0]) if what[0] is not None else '-inf'}, {num(what[1]) if what[1] is not None else 'inf'})"
            )
        lines.append(f"   {c['name']:<28} {c['kind']:<9} id {c['id']:>5}  {what}")
    lg = ex["logit"]
    lines += ["", "3. logit = wide + deep"]
    if lg["wide"] is not None:
        w = lg["wide"]
        lines.append(f"   wide  {w['total']:+.4f}  (bias {w['bias']:+.4f})")
        lines.append("      by raw feature (crosses apart):")
        lines += [f"      {k:<32} {v:+.4f}" for k, v in w["by_feature"].items()]
        lines.append("      largest terms, value x weight:")
        for t in w["terms"][:top]:
            lines.append(f"      {t['name']:<32} {t['value']:>9.4f} x {t['weight']:+.4f} = {t['contribution']:+.4f}")
        if len(w["terms"]) > top:
            rest = sum(t["contribution"] for t in w["terms"][top:])
            lines.append(f"      ({len(w['terms']) - top} more terms)                  {rest:+.4f}")
    lines.append(f"   deep  {lg['deep']:+.4f}")
    lines.append(f"   logit {lg['total']:+.4f}")
    lines += ["", f"4. probability = sigmoid({lg['total']:+.4f}) = {ex['probability']:.6f}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- where the row and model come from


def parse_row(text: str) -> dict[str, Any]:
    """A row given as a JSON object, or ``@path`` of a file holding one."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--row is not JSON: {err}") from None
    if not isinstance(row, dict):
        raise ConfigError("--row must be one JSON object of column: value")
    return row


def find_row(dataset: DatasetConfig, raw_dir: Path, day: dt.date, keys: dict[str, str]) -> dict[str, Any]:
    """The one collected row of ``day`` whose columns equal ``keys`` (numbers compared as numbers).

    Raises:
        ConfigError: no partition for the day, an unknown column, or not exactly one matching row.
    """
    from pipelines.data.partitions import partition_path, read_partitions

    path = partition_path(raw_dir, day)
    if not path.is_file():
        raise ConfigError(f"no collected partition for {day} in {raw_dir}")
    frame = read_partitions([path])
    unknown = [c for c in keys if c not in frame.columns]
    if unknown:
        raise ConfigError(f"--key names columns the data does not have: {unknown}")
    match = pd.Series(True, index=frame.index)
    for col, value in keys.items():
        if pd.api.types.is_numeric_dtype(frame[col]):
            match &= pd.to_numeric(frame[col], errors="coerce") == float(value)
        else:
            match &= frame[col].astype("string") == value
    found = frame.loc[match]
    if len(found) != 1:
        shown = " ".join(f"{k}={v}" for k, v in keys.items())
        hint = f"; name more of the key columns {list(dataset.key_columns)}" if len(found) > 1 else ""
        raise ConfigError(f"{len(found)} rows of {day} match {shown}, not one{hint}")
    return {c: _plain(v) for c, v in found.iloc[0].items()}


def load_registered(tracking_uri: str, name: str, version: str | None = None, alias: str = "champion"):
    """A registered version's Keras model and feature spec (``alias``'s version when none is given).

    Returns:
        The composed Keras model, its :class:`FeatureSpec`, the version, and the pyfunc (batch scoring).

    Raises:
        ConfigError: the version or alias does not exist.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import use_tracking

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    try:
        version = str(version or client.get_model_version_by_alias(name, alias).version)
        client.get_model_version(name, version)
    except MlflowException as err:
        which = f"version {version}" if version else f"alias {alias!r}"
        raise ConfigError(f"{name} has no {which} in {tracking_uri}: {err.message}") from None
    with use_tracking(tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    inner = pyfunc.unwrap_python_model()
    return inner.model, inner.features, version, pyfunc


def explain(
    dataset: DatasetConfig,
    model_name: str,
    tracking_uri: str,
    raw_dir: Path,
    row: str | None = None,
    keys: dict[str, str] | None = None,
    day: dt.date | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """``python -m pipelines explain``: one row (JSON, or found by ``keys`` on ``day``) through a version.

    Args:
        dataset: the key columns (named when ``keys`` match several rows).
        model_name: the registered model (``register.model_name``).
        tracking_uri: the MLflow registry.
        raw_dir: the collected partitions ``keys`` are looked up in.
        row: the row as a JSON object, or ``@file``.
        keys: column -> value identifying one collected row of ``day``.
        day: the collected day of the row (with ``keys``).
        version: the model version; None: the champion.

    Returns:
        :func:`explain_row`'s stages, with ``model`` (name, version) and ``row_source``.

    Raises:
        ConfigError: neither or both of ``row`` and ``keys``, ``keys`` without ``day``, no such
            row or version.
    """
    if (row is None) == (not keys):
        raise ConfigError("give the row either as --row JSON or as --key COLUMN=VALUE ... --date DAY")
    if keys:
        if day is None:
            raise ConfigError("--key needs --date: the collected day the row is in")
        values = find_row(dataset, raw_dir, day, keys)
        source = f"{raw_dir}, {day}, " + " ".join(f"{k}={v}" for k, v in keys.items())
    else:
        values, source = parse_row(row or ""), "--row"
    model, features, version, _ = load_registered(tracking_uri, model_name, version)
    return {
        "model": {"name": model_name, "version": version},
        "row_source": source,
        **explain_row(model, features, values),
    }
