"""Champion/challenger promotion, rollback, the promotion log and model cards.

The gate (:func:`promotion_decision`) is a pure function of the evaluation: the
challenger and the current champion scored on the same holdout in the same
run. Every alias move, by the gate, by force or by rollback, is recorded on
the model versions (tags) and appended to a promotion log a person can read
(``$MLOPS_HOME/promotion_log.md``, also on the registered model's description).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import DatasetConfig, RegisterConfig

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTION_LOG = "promotion_log.md"


@dataclass(frozen=True)
class Decision:
    promote: bool  # the champion alias moves to the challenger now
    reasons: list[str] = field(default_factory=list)
    forced: bool = False
    forced_by: str | None = None
    # Passed the gate, but waits under the alias challenger for its shadow period (register.min_shadow_requests).
    pending: bool = False

    @property
    def summary(self) -> str:
        if self.pending:
            verdict = "passed the gate, waits in shadow"
        else:
            verdict = "promoted" + (" (forced)" if self.forced else "") if self.promote else "refused"
        return f"{verdict}: " + "; ".join(self.reasons)


def acting_user(user: str | None = None) -> str:
    """Who acts: the given user (an Airflow run's triggering user), else ``MLOPS_USER``, else the OS user."""
    import getpass
    import os

    if user:
        return user
    try:
        return os.environ.get("MLOPS_USER") or getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def canary_reason(canary: Any, cfg: RegisterConfig, has_champion: bool) -> tuple[bool, str | None]:
    """The canary's part of the gate: (passes, its reason); (True, None) when the canary is off.

    Args:
        canary: a :class:`pipelines.promotion.canary.Canary` (its ``ran``, ``applicable``, ``note`` and figures),
            or None when it did not run.
        cfg: ``register.canary.min_agreement`` is the bar.
        has_champion: whether the evaluation had a champion; without one and without a canary,
            there is nothing to compare with: not applicable.
    """
    bar = cfg.canary.min_agreement
    if bar is None:
        return True, None
    if canary is None and not has_champion:
        return True, "canary not applicable: no champion to compare with"
    if canary is not None and not canary.ran and not canary.applicable:
        return True, f"canary not applicable: {canary.note}"
    if canary is None or not canary.ran:
        note = canary.note if canary is not None else "it did not run"
        return False, f"canary could not compare the models ({note}), and it is required (min agreement {bar:.1%})"
    figures = (
        f"canary on {canary.day}: decisions agree with champion v{canary.champion_version} on "
        f"{canary.agreement:.2%} of {canary.rows} rows at threshold {canary.threshold:g}, "
        f"mean absolute score difference {canary.mean_abs_diff:.4f}"
    )
    if canary.agreement >= bar:
        return True, f"{figures} (>= {bar:.1%})"
    return False, f"{figures}: below the required {bar:.1%}"


def promotion_decision(
    evaluation: dict[str, Any],
    cfg: RegisterConfig,
    force_reason: str | None = None,
    data_warnings: Sequence[str] | None = None,
    canary: Any = None,
    forced_by: str | None = None,
) -> Decision:
    """Should the challenger become champion, now or after its shadow period?

    Rules (thresholds from ``register`` in params.yaml):
      * its holdout AUC meets the floor ``champion_min_auc``;
      * with no champion yet: it beats the baseline's holdout AUC;
      * with a champion (scored on the same holdout in this run): its AUC is not lower
        than the champion's by more than ``max_auc_drop``, and no slice's AUC is lower
        than the champion's on that slice by more than ``max_slice_auc_drop``;
      * the batch its run validated passed without warnings: a model trained on data that
        only warned (a new category on a share of rows, values far outside the training
        range) is promoted by a person, not automatically;
      * with ``canary.min_agreement`` set and a champion: the two models' decisions on the
        next day's rows (the batch canary) agree on at least that share of them.
    A challenger that passes, with a champion in place and ``min_shadow_requests`` > 0, is
    not promoted yet: it waits in shadow (``pending``). A forced promotion (with a stated
    reason) skips the rules and the shadow period; the rules are still recorded.

    Args:
        evaluation: the challenger, baseline and champion scored on one holdout.
        cfg: the ``register`` section's thresholds.
        force_reason: a person's stated reason to promote whatever the rules say.
        data_warnings: the warnings of the run's validation (one line each); None when unknown
            (a run outside the DAG that did not validate).
        canary: the batch canary's figures (:class:`pipelines.promotion.canary.Canary`), None when it did not run.
        forced_by: who forces the promotion (recorded with the reason).

    Returns:
        The verdict and every reason behind it.
    """
    ch = evaluation["challenger"]
    auc = ch["overall"]["auc"]
    reasons: list[str] = []
    ok = True
    if auc >= cfg.champion_min_auc:
        reasons.append(f"AUC {auc:.4f} meets the floor {cfg.champion_min_auc}")
    else:
        ok = False
        reasons.append(f"AUC {auc:.4f} is below the floor {cfg.champion_min_auc}")
    champion = evaluation.get("champion")
    if champion is None:
        base = evaluation["baseline"]["overall"]["auc"]
        if auc > base:
            reasons.append(f"first model, beats the baseline's AUC {base:.4f}")
        else:
            ok = False
            reasons.append(f"first model, does not beat the baseline's AUC {base:.4f}")
    else:
        champ_auc = champion["overall"]["auc"]
        drop = champ_auc - auc
        version = evaluation.get("champion_version")
        if drop <= cfg.max_auc_drop:
            reasons.append(
                f"AUC {auc:.4f} vs champion v{version} {champ_auc:.4f} (drop {drop:+.4f} <= {cfg.max_auc_drop})"
            )
        else:
            ok = False
            reasons.append(
                f"AUC {auc:.4f} is {drop:.4f} below champion v{version} {champ_auc:.4f} (max drop {cfg.max_auc_drop})"
            )
        regressions = [
            f"{name}={value} {champion['slices'][name][value]['auc']:.3f} -> {m['auc']:.3f}"
            for name, values in ch["slices"].items()
            for value, m in values.items()
            if value in champion["slices"].get(name, {})
            and champion["slices"][name][value]["auc"] - m["auc"] > cfg.max_slice_auc_drop
        ]
        if regressions:
            ok = False
            reasons.append(f"slices regress more than {cfg.max_slice_auc_drop}: " + ", ".join(regressions))
        else:
            reasons.append(f"no slice regresses more than {cfg.max_slice_auc_drop}")
    if data_warnings:
        ok = False
        first = data_warnings[0] if len(data_warnings[0]) <= 300 else data_warnings[0][:297] + "..."
        reasons.append(
            f"trained on a batch that passed validation with {len(data_warnings)} warning(s), e.g. {first}; "
            "check the data, then promote with force_promotion and a promotion_reason"
        )
    passes, reason = canary_reason(canary, cfg, champion is not None)
    ok = ok and passes
    if reason:
        reasons.append(reason)
    if force_reason:
        who = f"forced by {forced_by}" if forced_by else "forced"
        return Decision(promote=True, reasons=[f"{who}: {force_reason}", *reasons], forced=True, forced_by=forced_by)
    if ok and champion is not None and cfg.min_shadow_requests > 0:
        bar = cfg.canary.min_agreement
        reasons.append(
            f"waits under the alias {CHALLENGER} until serving has shadow-scored {cfg.min_shadow_requests} requests "
            "with it" + (f", decisions agreeing on at least {bar:.1%} of their rows" if bar is not None else "")
        )
        return Decision(promote=False, reasons=reasons, pending=True)
    return Decision(promote=ok, reasons=reasons)


# --------------------------------------------------------------------------- registry operations


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def record_move(
    client: Any,
    name: str,
    version: str,
    *,
    action: str,
    previous: str | None,
    reason: str,
    run: str,
    metrics: dict[str, float] | None,
    log_dir: Path,
) -> dict[str, Any]:
    """Tag the version with the move and append it to the promotion log."""
    entry = {
        "when": _now(),
        "model": name,
        "version": version,
        "action": action,
        "previous_champion": previous,
        "reason": reason,
        "run": run,
        "metrics": metrics or {},
    }
    client.set_model_version_tag(name, version, f"promotion.{action}_at", entry["when"])
    client.set_model_version_tag(name, version, "promotion.last", json.dumps(entry)[:5000])
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / PROMOTION_LOG
    if not path.exists():
        path.write_text(
            f"# Promotion log of `{name}`\n\n| when (UTC) | action | version | previous champion | run | holdout AUC | reason |\n|---|---|---|---|---|---|---|\n"
        )
    auc = (metrics or {}).get("auc")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(
            f"| {entry['when']} | {action} | v{version} | {('v' + previous) if previous else '-'} | {run} | "
            f"{auc:.4f} | {reason.replace('|', '/')} |\n"
            if auc is not None
            else f"| {entry['when']} | {action} | v{version} | {('v' + previous) if previous else '-'} | {run} | - | "
            f"{reason.replace('|', '/')} |\n"
        )
    try:
        client.update_registered_model(name, description=path.read_text(encoding="utf-8")[-20000:])
    except Exception as err:  # the description is a convenience copy of the file
        log.warning("could not copy the promotion log to the registered model: %s", err)
    return entry


def rollback(client: Any, name: str, reason: str, log_dir: Path) -> dict[str, Any]:
    """Move ``champion`` back to the champion before the current one, recorded like a promotion.

    Raises:
        ValueError: there is no champion, or it has no previous champion to go back to.
    """
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise ValueError(f"{name} has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get("promotion.previous_champion")
    if not previous or previous == "none":
        raise ValueError(f"{name} v{current} has no previous champion to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "promotion.rolled_back_from", _now())
    entry = record_move(
        client,
        name,
        previous,
        action="rollback",
        previous=current,
        reason=reason,
        run="cli",
        metrics={"auc": float(client.get_model_version(name, previous).tags.get("metrics.holdout_auc", "nan"))},
        log_dir=log_dir,
    )
    # The restored champion's own predecessor is what a second rollback would go back to.
    log.info("rolled %s back from v%s to v%s", name, current, previous)
    return entry


def model_card(
    name: str,
    version: str,
    evaluation: dict[str, Any],
    decision: Decision,
    lineage: dict[str, str],
    features: dict[str, list[str]],
    label_rule: str,
    dataset: DatasetConfig,
    params_diff: Any = None,
) -> str:
    """A Markdown model card: lineage, metrics overall and by slice, the gate's decision, use and limits.

    What the model is for, what its label means and its limits are the data set's words
    (``dataset.description``, ``dataset.label.name`` and ``description``, ``dataset.limitations``).

    Args:
        name: the registered model.
        version: the version the card describes.
        evaluation: its evaluation (challenger, champion, baseline, slices).
        decision: the promotion gate's verdict.
        lineage: code, data and run identifiers.
        features: numeric and categorical feature names.
        label_rule: the label rule in words (``arr_delay gt 15, missing counts as positive``).
        dataset: the data set's own description of itself.
        params_diff: its params against the champion's (:class:`pipelines.promotion.params_diff.ParamsDiff`), or None.

    Returns:
        The card's Markdown.
    """
    label = dataset.label
    lines = [
        f"# Model card: {name} v{version}",
        "",
        "## Intended use",
        dataset.description.strip()
        or f"Scores each {dataset.entity} of the data set {dataset.name} with the probability of {label.name}.",
        "",
        "## Label",
        f"{label.name[:1].upper() + label.name[1:]}: {label_rule}."
        + (f" {label.description.strip()}" if label.description else ""),
        "",
        "## Limits",
        *(f"- {limit}" for limit in dataset.limitations),
        f"- Slices flagged below the overall AUC: {', '.join(evaluation.get('flagged_slices', [])) or 'none'}.",
        "",
        "## Data lineage",
        *(f"- **{k}**: `{v}`" for k, v in sorted(lineage.items())),
        "",
        "## Features",
        f"- numeric: {', '.join(features['numeric'])}",
        f"- categorical: {', '.join(features['categorical'])}",
        "",
        "## Holdout metrics",
        "| model | AUC | log loss | Brier | accuracy | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for who in ("challenger", "champion", "baseline"):
        if who in evaluation and isinstance(evaluation[who], dict) and "overall" in evaluation[who]:
            m = evaluation[who]["overall"]
            label = f"this version ({who})" if who == "challenger" else who
            lines.append(
                f"| {label} | {m['auc']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} | "
                f"{m['accuracy']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} |"
            )
    lines += ["", "## Holdout AUC by slice", "| slice | value | rows | AUC | champion AUC |", "|---|---|---|---|---|"]
    champion_slices = (evaluation.get("champion") or {}).get("slices", {})
    for sname, values in evaluation["challenger"]["slices"].items():
        for value, m in sorted(values.items()):
            champ = champion_slices.get(sname, {}).get(value, {}).get("auc")
            lines.append(
                f"| {sname} | {value} | {int(m['rows'])} | {m['auc']:.4f} | {f'{champ:.4f}' if champ else '-'} |"
            )
    from pipelines.model.importance import card_lines

    lines += ["", *card_lines(evaluation)]
    lines += ["## Parameters against the champion"]
    if params_diff is None:
        lines.append("Not recorded (the run's effective params were not given to the register step).")
    else:
        lines.append(f"{params_diff.summary()}.")
        if params_diff.changed:
            lines += ["", "| parameter | champion | this version |", "|---|---|---|"]
            lines += [f"| {k} | `{old}` | `{new}` |" for k, (old, new) in list(params_diff.changed.items())[:40]]
        lines.append(
            "\nThe full parameters and the diff are logged with the run as `model_spec/v"
            f"{version}/params.yaml` and `params_diff.json`."
        )
    lines += ["", "## Promotion decision", f"**{decision.summary}**", ""]
    lines += [f"- {r}" for r in decision.reasons]
    lines.append("")
    return "\n".join(lines)
