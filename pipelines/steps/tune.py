"""Tune: search the model's main hyper-parameters on a preprocessed dataset's validation split.

An Optuna study (TPE sampler, median pruner) over ``tune.space``: learning rate,
hidden units, embedding size, dropout and batch size. A trial is a short training
run of ``tune.epochs`` epochs through the train step's own
:func:`pipelines.steps.train.fit_model` (the same input pipeline and model, every
other ``train`` key as configured, ``train.seed`` for every trial), scored by its
best epoch's validation AUC. Trial 0 is always the current ``train`` values
(enqueued), so the best trial is never worse than them on validation.

Every trial is an MLflow run nested under the study's parent run (per-epoch metrics,
its values, its state); the parent holds the search's settings, the data's
fingerprint, the best values and the proposal. The proposal is a YAML file of
``params.yaml`` overrides in the run's folder (``proposal.yaml``), applied with
``python -m pipelines tune --apply <file>`` or given as ``--set`` flags to a run
(:mod:`pipelines.proposal`).

The study lives in a journal file in the run's folder: a retried task (or the same
``--run-id`` again) resumes it, keeping the finished trials and failing the one
that was running when the process died.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from pipelines.config import DatasetConfig, PreprocessConfig, TrainConfig, TuneConfig
from pipelines.errors import StepError
from pipelines.proposal import TUNED_KEYS, apply_command, proposal_text, set_flags
from pipelines.tracking import RUN_KEY_TAG, Tracking, ensure_experiment, get_or_create_run

log = logging.getLogger(__name__)

KNOBS = TUNED_KEYS
STUDY_NAME = "tune"
STUDY_FILE = "study.journal"
PROPOSAL_FILE = "proposal.yaml"
TRIALS_FILE = "trials.json"
MANIFEST = "manifest.json"  # pipelines.steps.preprocess.MANIFEST_FILE, not imported: this module loads light
DEFAULTS_ATTR = "defaults"  # user attribute of the trial of the current train values
VALUES_ATTR = "train"  # user attribute: the train values the trial trained with (rounded as proposed)


def _label(units: tuple[int, ...] | list[int]) -> str:
    """``hidden_units`` as an Optuna choice (choices must be scalars): ``[64, 32]`` -> ``"64-32"``."""
    return "-".join(str(int(u)) for u in units) or "none"


def _units(label: str) -> list[int]:
    return [] if label == "none" else [int(u) for u in label.split("-")]


def _round(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: what a trial trains with and a proposal writes."""
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def current_values(train_cfg: TrainConfig) -> dict[str, Any]:
    """The tuned keys' current values (trial 0), as ``params.yaml`` holds them."""
    return {
        "learning_rate": train_cfg.learning_rate,
        "hidden_units": list(train_cfg.hidden_units),
        "embedding_dim": train_cfg.embedding_dim,
        "dropout": train_cfg.dropout,
        "batch_size": train_cfg.batch_size,
    }


def _suggest(trial: Any, space: TuneConfig.Space, current: dict[str, Any]) -> dict[str, Any]:
    """The trial's ``train`` values; the current ones widen the space when outside it (trial 0 stays valid)."""
    values: dict[str, Any] = {}
    for key in ("learning_rate", "dropout"):
        rng = getattr(space, key)
        low, high = min(rng.low, current[key]), max(rng.high, current[key])
        values[key] = _round(trial.suggest_float(key, low, high, log=rng.log))
    for key in ("embedding_dim", "batch_size"):
        choices = list(dict.fromkeys([*getattr(space, key), current[key]]))
        values[key] = int(trial.suggest_categorical(key, sorted(choices)))
    labels = list(dict.fromkeys([*(_label(u) for u in space.hidden_units), _label(current["hidden_units"])]))
    values["hidden_units"] = _units(trial.suggest_categorical("hidden_units", labels))
    return {k: values[k] for k in KNOBS}


def _optuna_params(values: dict[str, Any]) -> dict[str, Any]:
    """Trial values as Optuna parameters (what ``enqueue_trial`` takes)."""
    return {**values, "hidden_units": _label(values["hidden_units"])}


def trial_config(train_cfg: TrainConfig, values: dict[str, Any], epochs: int) -> TrainConfig:
    """The ``train`` section of a trial: the configured one with the trial's values and ``epochs``, validated."""
    raw = {**train_cfg.model_dump(by_alias=True), **values, "epochs": epochs}
    return TrainConfig.model_validate(raw)


def _trial_callback(client: Any, run_id: str, trial: Any, prune: bool):
    import keras

    class TrialReporter(keras.callbacks.Callback):
        """Per-epoch metrics into the trial's MLflow run; the validation AUC to Optuna, which may prune."""

        pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            from mlflow.entities import Metric

            logs = logs or {}
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in logs.items()])
            if "val_auc" not in logs:
                return
            trial.report(float(logs["val_auc"]), epoch)
            if prune and trial.should_prune():
                self.pruned_at = epoch
                self.model.stop_training = True

    return TrialReporter()


class _Study:
    """One study: the Optuna study in its journal, the parent MLflow run, what a trial runs."""

    def __init__(
        self,
        dataset: DatasetConfig,
        preprocess_cfg: PreprocessConfig,
        train_cfg: TrainConfig,
        cfg: TuneConfig,
        processed_dir: Path,
        out_dir: Path,
        tracking: Tracking,
    ) -> None:
        import mlflow
        import optuna

        self.dataset, self.preprocess_cfg, self.train_cfg, self.cfg = dataset, preprocess_cfg, train_cfg, cfg
        self.processed_dir, self.out_dir, self.tracking = processed_dir, out_dir, tracking
        self.current = current_values(train_cfg)
        self.client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
        self.experiment_id = ensure_experiment(tracking)
        self.parent_id = get_or_create_run(tracking)
        self.client.update_run(self.parent_id, status="RUNNING")  # again, when a failed study resumes
        out_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from here instead
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out_dir / STUDY_FILE)))
        self.study = optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            # Trial 0 and the next ones always finish: the median needs some to compare with.
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
            if cfg.prune
            else optuna.pruners.NopPruner(),
        )
        self.hardware: Any = None

    def resume(self) -> None:
        """Fail what a killed attempt left running; enqueue the current values unless a trial holds them."""
        from optuna.trial import TrialState

        for stale in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.warning("trial %d was left running by an earlier attempt: marked failed", stale.number)
            self.study.tell(stale.number, state=TrialState.FAIL)
        for run in self._trial_runs():
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "FAILED")
        held = (TrialState.COMPLETE, TrialState.WAITING)
        if not any(t.user_attrs.get(DEFAULTS_ATTR) and t.state in held for t in self.study.trials):
            self.study.enqueue_trial(_optuna_params(self.current), user_attrs={DEFAULTS_ATTR: True})

    def _trial_runs(self) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'"
        )

    def log_parent(self, manifest: dict[str, Any]) -> None:
        import mlflow

        params = {
            "tune.n_trials": self.cfg.n_trials,
            "tune.epochs": self.cfg.epochs,
            "tune.seed": self.cfg.seed,
            "tune.timeout_seconds": self.cfg.timeout_seconds,
            "tune.prune": self.cfg.prune,
            "tune.space": json.dumps(self.cfg.space.model_dump(mode="json")),
            **{f"current.{k}": v for k, v in self.current.items()},
        }
        logged = set(self.client.get_run(self.parent_id).data.params)  # immutable: a resumed study logs none twice
        new = [mlflow.entities.Param(k, str(v)) for k, v in params.items() if k not in logged]
        if new:
            self.client.log_batch(self.parent_id, params=new)
        self.client.set_tag(self.parent_id, "data.fingerprint", manifest["data_fingerprint"])
        self.client.set_tag(self.parent_id, "data.window_end", manifest["window_end"])
        self.client.set_tag(self.parent_id, "data.processed_dir", str(self.processed_dir))

    def objective(self, trial: Any) -> float:
        import keras
        import optuna

        from pipelines.steps.train import fit_model

        is_current = bool(trial.user_attrs.get(DEFAULTS_ATTR))
        values = _suggest(trial, self.cfg.space, self.current)
        if is_current:  # exactly as configured, unrounded
            values = dict(self.current)
        trial.set_user_attr(VALUES_ATTR, values)
        run = self.client.create_run(
            self.experiment_id,
            tags={
                "mlflow.parentRunId": self.parent_id,
                "mlflow.runName": f"trial-{trial.number:03d}",
                RUN_KEY_TAG: f"{self.tracking.run_key}/trial-{trial.number}",
                "tune.trial": str(trial.number),
                "tune.current_values": str(is_current).lower(),
                **self.tracking.tags,
            },
        )
        run_id = run.info.run_id
        self.client.log_batch(
            run_id,
            params=[
                *(self._param(f"train.{k}", v) for k, v in values.items()),
                self._param("train.epochs", self.cfg.epochs),
            ],
        )
        reporter = _trial_callback(self.client, run_id, trial, self.cfg.prune)
        try:
            keras.utils.set_random_seed(self.train_cfg.seed)  # trials differ by their values only
            _, history, seconds = fit_model(
                self.dataset,
                self.preprocess_cfg,
                trial_config(self.train_cfg, values, self.cfg.epochs),
                self.processed_dir,
                self.hardware,
                [reporter],
                cache_dir=self.out_dir,
            )
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        finally:
            keras.backend.clear_session()
        val_auc = max(history.get("val_auc") or [float("nan")])
        self.client.log_metric(run_id, "best_val_auc", val_auc)
        self.client.log_metric(run_id, "train_seconds", seconds)
        state = "pruned" if reporter.pruned_at is not None else "complete"
        self.client.set_tag(run_id, "tune.state", state)
        self.client.set_terminated(run_id, "FINISHED")
        log.info(
            "trial %d%s: validation AUC %.4f in %.1fs with %s%s",
            trial.number,
            " (current values)" if is_current else "",
            val_auc,
            seconds,
            json.dumps(values),
            f", pruned after epoch {reporter.pruned_at + 1}" if reporter.pruned_at is not None else "",
        )
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned()
        return val_auc

    @staticmethod
    def _param(key: str, value: Any) -> Any:
        import mlflow

        return mlflow.entities.Param(key, json.dumps(value) if isinstance(value, list) else str(value))


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _trials_table(study: Any) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "current_values": bool(t.user_attrs.get(DEFAULTS_ATTR)),
            "val_auc": t.value,
            "values": t.user_attrs.get(VALUES_ATTR),
            "seconds": t.duration.total_seconds() if t.duration else None,
        }
        for t in study.trials
    ]


def describe_dataset(processed_dir: Path) -> dict[str, Any]:
    """What a study would tune on: the folder, its fingerprint, window end and rows per split (light: JSON only).

    Raises:
        StepError: no preprocessed dataset in ``processed_dir``, or an empty training or validation split.
    """
    path = Path(processed_dir) / MANIFEST
    if not path.is_file():
        raise StepError(
            f"no preprocessed dataset in {processed_dir} ({MANIFEST} missing): run the training pipeline, "
            "'dvc pull' a dataset version, or name the processed folder of a run"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    rows = {name: split["rows"] for name, split in manifest["splits"].items()}
    for name in ("train", "validation"):
        if not rows.get(name):
            raise StepError(f"the {name} split of {processed_dir} has no rows: nothing to tune on")
    return {
        "processed_dir": str(processed_dir),
        "data_fingerprint": manifest["data_fingerprint"],
        "window_end": manifest["window_end"],
        "rows": rows,
    }


def tune(
    dataset: DatasetConfig,
    preprocess_cfg: PreprocessConfig,
    train_cfg: TrainConfig,
    cfg: TuneConfig,
    processed_dir: Path,
    out_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Search ``cfg.space`` on ``processed_dir``'s validation split; write the best values as a proposal.

    Args:
        dataset: the data set's feature spec.
        preprocess_cfg: how the shards were written.
        train_cfg: the current ``train`` section: trial 0, and every key the search leaves alone.
        cfg: the ``tune`` section: trials, time limit, seed, epochs per trial, the space.
        processed_dir: the output of :func:`pipelines.steps.preprocess.preprocess` (a dataset version's
            ``data/processed``, or a run's ``processed`` folder).
        out_dir: the run's tuning folder: the study's journal, ``proposal.yaml``, ``trials.json``.
        tracking: the study's parent MLflow run (its experiment is ``tune.experiment``).

    Returns:
        The parent MLflow run id, the trials finished, the best and the current values' validation
        AUC, the proposal's path and values, and the commands that apply it.

    Raises:
        StepError: ``processed_dir`` holds no preprocessed dataset, or its validation split is empty.
    """
    import tensorflow as tf

    from pipelines.model.network import select_hardware

    describe_dataset(processed_dir)  # fails clearly on a missing or empty dataset
    manifest = json.loads((processed_dir / MANIFEST).read_text(encoding="utf-8"))
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()

    study = _Study(dataset, preprocess_cfg, train_cfg, cfg, processed_dir, out_dir, tracking)
    study.resume()
    study.log_parent(manifest)
    study.hardware = select_hardware(train_cfg.mixed_precision, backend=train_cfg.backend)
    remaining = cfg.n_trials - _finished(study.study)
    log.info(
        "tuning on %s (%s validation rows): %d trial(s) to run of %d, %d epoch(s) each, time limit %s s",
        processed_dir,
        manifest["splits"]["validation"]["rows"],
        max(remaining, 0),
        cfg.n_trials,
        cfg.epochs,
        cfg.timeout_seconds,
    )
    started = time.perf_counter()
    try:
        if remaining > 0:
            study.study.optimize(study.objective, n_trials=remaining, timeout=cfg.timeout_seconds, gc_after_trial=True)
        result = _propose(study, manifest, time.perf_counter() - started)
    except BaseException:
        study.client.set_terminated(study.parent_id, "FAILED")
        raise
    study.client.set_terminated(study.parent_id, "FINISHED")
    return result


def _propose(study: _Study, manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Write ``proposal.yaml`` and ``trials.json``; log them and the best values to the parent run."""
    from optuna.trial import TrialState

    complete = study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    current = next((t for t in complete if t.user_attrs.get(DEFAULTS_ATTR)), None)
    if current is None:
        raise StepError("the trial of the current train values did not complete: no baseline to compare with")
    # Ties go to the current values: a proposal changes params.yaml only for a better AUC.
    best = max(complete, key=lambda t: (t.value, bool(t.user_attrs.get(DEFAULTS_ATTR))))
    values = best.user_attrs[VALUES_ATTR]
    changed = {k: v for k, v in values.items() if v != study.current[k]}
    out_dir = study.out_dir
    proposal_path = out_dir / PROPOSAL_FILE
    text = proposal_text(
        values,
        best_auc=float(best.value),
        current_auc=float(current.value),
        best_trial=best.number,
        trials=len(complete),
        epochs=study.cfg.epochs,
        data=f"{manifest['data_fingerprint'][:12]} (window ending {manifest['window_end']})",
        run=f"{study.tracking.run_key} (MLflow run {study.parent_id})",
        path=proposal_path,
    )
    proposal_path.write_text(text, encoding="utf-8")
    table = _trials_table(study.study)
    (out_dir / TRIALS_FILE).write_text(json.dumps(table, indent=1), encoding="utf-8")

    client, parent = study.client, study.parent_id
    client.log_metric(parent, "best_val_auc", float(best.value))
    client.log_metric(parent, "current_val_auc", float(current.value))
    client.log_metric(parent, "trials_finished", _finished(study.study))
    client.set_tag(parent, "tune.best_trial", str(best.number))
    client.set_tag(parent, "tune.proposal", json.dumps(changed) if changed else "none: the current values are best")
    client.log_artifact(parent, str(proposal_path), "tune")
    client.log_artifact(parent, str(out_dir / TRIALS_FILE), "tune")
    result = {
        "mlflow_run_id": parent,
        "trials": {s: sum(1 for t in table if t["state"] == s) for s in ("complete", "pruned", "fail")},
        "best_trial": best.number,
        "best_val_auc": float(best.value),
        "current_val_auc": float(current.value),
        "proposal_path": str(proposal_path),
        "proposal": values,
        "changed": changed,
        "apply": apply_command(proposal_path),
        "set_flags": set_flags(changed),
        "seconds": round(seconds, 1),
    }
    log.info(
        "best trial %d: validation AUC %.4f (current values %.4f); %s",
        best.number,
        best.value,
        current.value,
        f"proposal {proposal_path}: {result['apply']}" if changed else "the current values remain best",
    )
    return result
