"""The feature spec applied to frames: label rule, model inputs, fingerprints.

One implementation serves training (rows written to TFRecord), evaluation
and serving (rows fed to the registered model), so the model sees the same
typed values on every path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import FeatureSpec, LabelRule

LABEL = "label"
MISSING_CATEGORY = ""

_OPS = {  # label_rule.operator -> NumPy's comparison ufunc
    "gt": np.greater,
    "ge": np.greater_equal,
    "lt": np.less,
    "le": np.less_equal,
}


def apply_label_rule(frame: pd.DataFrame, rule: LabelRule) -> pd.DataFrame:
    """Add the binary ``label`` column, dropping rows if ``rule.missing == "drop"``.

    With the default flights rule a cancelled or diverted flight (no arrival
    delay recorded) counts as late: the passenger did not arrive on time.
    """
    values = pd.to_numeric(frame[rule.source_column], errors="coerce")
    missing = values.isna().to_numpy()
    label = _OPS[rule.operator](values.fillna(0).to_numpy(), rule.threshold).astype(np.int64)
    if rule.missing == "positive":
        label[missing] = 1
    elif rule.missing == "negative":
        label[missing] = 0
    out = frame.assign(**{LABEL: label})
    if rule.missing == "drop":
        out = out.loc[~missing].reset_index(drop=True)
    return out


def to_model_inputs(frame: pd.DataFrame, features: FeatureSpec) -> dict[str, np.ndarray]:
    """The model's raw inputs: numeric features as float32 (NaN kept), categoricals as str.

    Imputation, scaling and vocabulary lookup happen inside the model.
    """
    inputs: dict[str, np.ndarray] = {}
    for col in features.numeric:
        inputs[col] = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float32)
    for col in features.categorical:
        inputs[col] = frame[col].astype("string").fillna(MISSING_CATEGORY).to_numpy(dtype=object).astype(str)
    return inputs


def frame_fingerprint(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> str:
    """A stable content hash of a frame's rows (order included), as 16 hex digits."""
    cols = list(columns) if columns is not None else list(frame.columns)
    hashed = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(paths: Iterable[Path], root: Path) -> str:
    """Hash of the files' relative names and contents: the identity of a data set version."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()
