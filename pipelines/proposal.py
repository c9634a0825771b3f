"""The tuning proposal: its file, its ``--set`` flags, and writing it into ``params.yaml``.

:func:`pipelines.steps.tune.tune` writes the best trial's values as ``proposal.yaml``, a
mapping of ``params.yaml`` sections to keys (``train: {learning_rate: ..., ...}``) under a
header saying where they come from; ``python -m pipelines tune --apply <file>`` edits those
keys' lines of ``params.yaml`` in place, keeping its comments, and validates the result
before writing it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import ConfigError, parse_params

TUNED_KEYS = ("learning_rate", "hidden_units", "embedding_dim", "dropout", "batch_size")


def apply_command(proposal_path: Path) -> str:
    return f"python -m pipelines tune --apply {shlex.quote(str(proposal_path))}"


def set_flags(changed: dict[str, Any]) -> str:
    """The changed values as ``--set`` flags for ``python -m pipelines run`` (or ``pipelines.ops.replay``)."""
    return " ".join(f"--set {shlex.quote(f'train.{k}={_yaml_value(v)}')}" for k, v in changed.items())


def proposal_text(
    values: dict[str, Any],
    *,
    best_auc: float,
    current_auc: float,
    best_trial: int,
    trials: int,
    epochs: int,
    data: str,
    run: str,
    path: Path,
) -> str:
    """The proposal file: ``params.yaml`` overrides (``train:`` keys) under a header saying where they come from."""
    header = [
        f"# Proposed by the tuning run {run}.",
        f"# Best validation AUC {best_auc:.4f} (trial {best_trial}) against {current_auc:.4f} for the current",
        f"# train values (trial 0), over {trials} finished trial(s) of {epochs} epoch(s) on data {data}.",
        f"# Apply: {apply_command(path)}   (edits these keys of params.yaml in place)",
    ]
    body = yaml.safe_dump({"train": {k: values[k] for k in TUNED_KEYS}}, sort_keys=False, default_flow_style=None)
    return "\n".join(header) + "\n" + body


def _yaml_value(value: Any) -> str:
    """A value as one line of YAML flow style (``[64, 32]``, ``0.0042``), read back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def load_proposal(path: Path) -> dict[str, dict[str, Any]]:
    """A proposal file's overrides, ``{section: {key: value}}``.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping of sections to mappings.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"proposal file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path} must map params.yaml sections to their keys, e.g. 'train: {{dropout: 0.1}}'")
    return raw


def apply_proposal(proposal: Path, params_path: Path) -> dict[str, dict[str, Any]]:
    """Write a proposal's values into ``params_path``, editing each key's line in place (comments kept).

    Each key must sit on one line of its section (``  key: value  # comment``), as in this
    repository's ``params.yaml``; the edited file is validated before it is written.

    Returns:
        ``{"section.key": {"from": old, "to": new}}`` for the keys whose value changed.

    Raises:
        ConfigError: a key is not found on a line of its own, or the result is not valid params.
    """
    overrides = load_proposal(proposal)
    text = Path(params_path).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    before = parse_params(yaml.safe_load(text))
    for section, keys in overrides.items():
        start = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(section)}:\s*(#.*)?$", line)), None)
        if start is None:
            raise ConfigError(f"{params_path}: no top-level '{section}:' section to apply {proposal} to")
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"\S", lines[i])), len(lines))
        for key, value in keys.items():
            pattern = re.compile(rf"^(  {re.escape(key)}:[ \t]*)([^#\n]*?)([ \t]*#.*)?(\r?\n)?$")
            found = [i for i in range(start + 1, end) if pattern.match(lines[i])]
            if len(found) != 1 or not pattern.match(lines[found[0]]).group(2).strip():
                raise ConfigError(
                    f"{params_path}: '{section}.{key}' is not a value on one line of its own; set it by hand to "
                    f"{_yaml_value(value)}"
                )
            m = pattern.match(lines[found[0]])
            lines[found[0]] = f"{m.group(1)}{_yaml_value(value)}{m.group(3) or ''}{m.group(4) or ''}"
    new_text = "".join(lines)
    after = parse_params(yaml.safe_load(new_text))  # a bad value fails here, naming the key, before writing
    for section, keys in overrides.items():
        got = after.model_dump(by_alias=True, mode="json")[section]
        for key, value in keys.items():
            if got[key] != json.loads(json.dumps(value)):
                raise ConfigError(f"{params_path}: '{section}.{key}' reads {got[key]!r} after the edit, not {value!r}")
    Path(params_path).write_text(new_text, encoding="utf-8")
    old = before.model_dump(by_alias=True, mode="json")
    new = after.model_dump(by_alias=True, mode="json")
    return {
        f"{s}.{k}": {"from": old[s][k], "to": new[s][k]}
        for s, keys in overrides.items()
        for k in keys
        if old[s][k] != new[s][k]
    }
