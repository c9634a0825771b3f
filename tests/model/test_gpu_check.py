"""The GPU check (``benchmarks/gpu_check.py``) end to end on this machine's CPU, on a tiny export.

``export`` applies the project's preprocessing to the three weeks of
``test_network``'s processed flights and trains the reference here; ``run``
measures with JAX's CPU backend in processes where TensorFlow and pydantic cannot
be imported, as on the GPU machine, and prints its table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_network import PARAMS_FILE, REPO, params, processed  # noqa: F401 (module fixtures)

# What the GPU machine lacks: any import of these fails in the check's processes.
_WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import sys
    for name in ("tensorflow", "pydantic", "pipelines.config"):
        sys.modules[name] = None
    from benchmarks.gpu_check import main
    main(sys.argv[1:])
    """
)


@pytest.fixture(scope="module")
def exported(processed: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    from benchmarks.gpu_check import export

    out = tmp_path_factory.mktemp("gpu-data")
    export(out, processed[0], PARAMS_FILE, reference_epochs=1)
    return out


def test_export_holds_the_preprocessed_splits_and_the_reference(
    exported: Path,
    processed: tuple[Path, dict[str, Any]],  # noqa: F811
) -> None:
    meta = json.loads((exported / "meta.json").read_text())
    manifest = processed[1]
    assert meta["rows"] == {s: manifest["splits"][s]["rows"] for s in ("train", "validation", "holdout")}
    with np.load(exported / "arrays.npz") as z:
        assert z["train_numeric"].shape == (meta["rows"]["train"], meta["shape"]["numeric_width"])
        assert z["holdout_ids"].shape == (meta["rows"]["holdout"], meta["shape"]["id_columns"])
        assert 0 <= z["train_ids"].min() and z["train_ids"].max() < meta["shape"]["id_rows"]
        assert np.isfinite(z["validation_numeric"]).all()
        assert set(np.unique(z["train_label"])) <= {0, 1}
    ref = meta["reference"]
    assert ref["backend"] == "tensorflow" and ref["epochs_run"] == 1
    assert 0.5 < ref["holdout_auc"] <= 1 and ref["examples_per_s"] > 0


def test_run_on_cpu_without_tensorflow_prints_its_table(exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TENSORFLOW, "run", "--data", str(exported), "--out", str(out),
         "--platforms", "cpu", "--batches", "512,4096", "--epochs", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())["results"]
    assert [(r["platform"], r["precision"], r["batch"]) for r in results] == [
        ("cpu", p, b) for p in ("float32", "mixed_bfloat16") for b in (512, 4096)
    ], proc.stdout
    for r in results:
        assert "skipped" not in r, r
        assert r["epochs_run"] == 2 and r["examples_per_s"] > 0
        assert 0.5 < r["holdout_auc"] <= 1
    table = (out / "gpu_check.md").read_text()
    assert "| cpu | cpu | float32 | 512 |" in table and "| cpu | cpu | mixed_bfloat16 | 4,096 |" in table
    assert table in proc.stdout
