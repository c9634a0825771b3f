"""Sensitive columns (``dataset.sensitive``) can be nothing whose values the pipeline would show.

A feature, key, time or label column, a slice, a cross or a value rule would read or print the
values that are dropped or hashed at collect: each is refused when the params load, naming its key.
Hashing itself (:mod:`pipelines.data.privacy`) needs only pandas and the standard library.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import ConfigError, load_params
from pipelines.data.privacy import protect
from pipelines.errors import CollectError
from pipelines.monitoring.checks import drift_columns

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
# tailnum has a null-rate override in params.yaml: a rule on a sensitive column is refused, so it goes.
NO_TAILNUM_RULE = {
    "validate.null_fraction_overrides": {
        k: v for k, v in PARAMS.validation.null_fraction_overrides.items() if k != "tailnum"
    }
}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"dataset.sensitive": {"dest": "hash"}}, "dataset.sensitive.dest: a sensitive column cannot be a feature"),
        ({"dataset.sensitive": {"flight": "drop"}}, "dataset.sensitive.flight: a sensitive column cannot be a key"),
        ({"dataset.sensitive": {"flight_date": "hash"}}, "nor the time column (dataset.time_column)"),
        ({"dataset.sensitive": {"arr_delay": "drop"}}, "cannot be the label's source column"),
        ({"dataset.sensitive": {"gate": "drop"}}, "dataset.sensitive.gate: no column 'gate' in dataset.schema"),
        (
            {"dataset.sensitive": {"tailnum": "hash"}},
            "validate.null_fraction_overrides.tailnum: 'tailnum' is a sensitive",
        ),
        (
            {"dataset.sensitive": {"tailnum": "hash"}, **NO_TAILNUM_RULE, "validate.categories.tailnum": ["N1"]},
            "validate.categories.tailnum: 'tailnum' is a sensitive column",
        ),
        (
            {"dataset.sensitive": {"tailnum": "hash"}, **NO_TAILNUM_RULE, "evaluate.slice_columns": ["tailnum"]},
            "evaluate.slice_columns: 'tailnum' is a sensitive column",
        ),
        (
            {"dataset.sensitive": {"tailnum": "hash"}, **NO_TAILNUM_RULE, "train.crosses": [["origin", "tailnum"]]},
            "train.crosses ['origin', 'tailnum']: ['tailnum'] are sensitive columns",
        ),
        ({"dataset.sensitive": {"tailnum": "encrypt"}}, "dataset.sensitive.tailnum"),
    ],
)
def test_a_sensitive_column_where_its_values_would_show_is_refused_naming_the_key(override: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        PARAMS.with_overrides(override)
    assert message in str(err.value)


def test_a_hashed_column_is_text_and_a_dropped_one_is_not_collected() -> None:
    params = PARAMS.with_overrides({"dataset.sensitive": {"tailnum": "hash", "year": "drop"}, **NO_TAILNUM_RULE})
    collected = params.dataset.collected_schema
    assert collected["tailnum"] == "string" and "year" not in collected
    assert list(collected) == [c for c in params.dataset.schema_ if c != "year"]


def test_protect_drops_and_hashes_with_the_salt_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PARAMS.with_overrides(
        {
            "dataset.sensitive": {"tailnum": "hash", "year": "drop"},
            "dataset.sensitive_salt_env": "TEST_SALT",
            **NO_TAILNUM_RULE,
        }
    ).dataset
    frame = pd.DataFrame({"tailnum": ["N14228", None, "N14228"], "year": [2013, 2013, 2013], "flight": [1, 2, 3]})
    monkeypatch.delenv("TEST_SALT", raising=False)
    with pytest.raises(CollectError, match="TEST_SALT .* is not set"):
        protect(frame.copy(), spec)
    monkeypatch.setenv("TEST_SALT", "short")
    with pytest.raises(CollectError, match="fewer than 16 characters"):
        protect(frame.copy(), spec)

    monkeypatch.setenv("TEST_SALT", "a-salt-of-some-length")
    out = protect(frame.copy(), spec)
    assert list(out.columns) == ["tailnum", "flight"]
    digest = hashlib.sha256(b"a-salt-of-some-length" + b"N14228").hexdigest()
    assert out["tailnum"].tolist() == [digest, None, digest]  # the same value, the same digest; missing stays
    monkeypatch.setenv("TEST_SALT", "another-salt-of-some-length")
    assert protect(frame.copy(), spec)["tailnum"][0] != digest


def test_drift_never_watches_a_sensitive_column() -> None:
    # Refused when the params load; a spec built around that check still keeps it out of the report.
    spec = PARAMS.dataset.model_copy(update={"sensitive": {"dest": "hash"}})
    numeric, categorical = drift_columns(spec, PARAMS.monitor.drift)
    assert "dest" not in categorical and categorical == ["carrier", "origin"]
    assert numeric
