"""Unit tests of ``pipelines.serving.schema``: the request body generated from the feature spec.

Every kind of bad request is refused with its status and a message naming the
field (and the row, in a batch); good rows come back typed, in feature order.
The ``serve`` section of params.yaml is validated like the others.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.config import ConfigError, Params, load_params
from pipelines.serving.schema import RequestError, RowParser, Rows, row_model

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
MAX_ROWS = 5


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


@pytest.fixture(scope="module")
def parser(params: Params) -> RowParser:
    return RowParser(params.dataset, MAX_ROWS)


def _row(params: Params) -> dict[str, Any]:
    """A plausible flight, every feature set, typed as the schema says."""
    kinds = {"int": 6, "float": 21.5, "string": "JFK"}
    return {col: kinds[params.dataset.schema_[col]] for col in params.dataset.features.all}


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def _refused(parser: RowParser, body: bytes | str) -> RequestError:
    with pytest.raises(RequestError) as err:
        parser.parse(body.encode() if isinstance(body, str) else body)
    return err.value


def test_the_row_type_has_every_feature_required_and_nothing_else(params: Params) -> None:
    row = row_model(params.dataset)
    assert tuple(row.__annotations__) == params.dataset.features.all
    assert row.__required_keys__ == set(params.dataset.features.all)


def test_one_row_and_a_batch_are_accepted_in_feature_order(params: Params, parser: RowParser) -> None:
    row = _row(params)
    rows, single = parser.parse(_body(row))
    assert single and rows == [row] and tuple(rows[0]) == params.dataset.features.all
    rows, single = parser.parse(_body([row] * MAX_ROWS))
    assert not single and len(rows) == MAX_ROWS


def test_a_missing_weather_reading_may_be_null_and_an_int_float_is_a_float(params: Params, parser: RowParser) -> None:
    row = _row(params) | {"wind_gust": None, "temp": 40}
    rows, _ = parser.parse(_body(row))
    assert rows[0]["wind_gust"] is None and rows[0]["temp"] == 40.0


def test_unknown_category_values_are_not_refused(params: Params, parser: RowParser) -> None:
    # The model maps a value it never saw to its out-of-vocabulary id, as batch scoring does.
    rows, _ = parser.parse(_body(_row(params) | {"carrier": "ZZ"}))
    assert rows[0]["carrier"] == "ZZ"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda r: r.pop("distance"), "distance", "Field required"),
        (lambda r: r.update(runway="4L"), "runway", "unknown field"),
        (lambda r: r.update(hour="seven"), "hour", "valid integer"),
        (lambda r: r.update(hour=7.5), "hour", "valid integer"),
        (lambda r: r.update(hour=None), "hour", "valid integer"),
        (lambda r: r.update(hour=True), "hour", "valid integer"),
        (lambda r: r.update(temp="21.5"), "temp", "valid number"),
        (lambda r: r.update(carrier=9), "carrier", "valid string"),
    ],
)
def test_a_bad_field_is_named(params: Params, parser: RowParser, change, field: str, words: str) -> None:
    row = _row(params)
    change(row)
    err = _refused(parser, _body(row))
    assert err.status == 422
    assert [p["field"] for p in err.problems] == [field]
    assert words in err.problems[0]["message"] and f"'{field}'" in err.problems[0]["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(params: Params, parser: RowParser, literal: str) -> None:
    body = json.dumps(_row(params) | {"temp": "__X__"}).replace('"__X__"', literal)
    assert math.isnan(json.loads(body)["temp"]) or math.isinf(json.loads(body)["temp"])
    err = _refused(parser, body)
    assert err.status == 422 and err.problems[0]["field"] == "temp"
    assert "finite" in err.problems[0]["message"]


def test_a_bad_row_in_a_batch_is_named_by_its_index(params: Params, parser: RowParser) -> None:
    rows = [_row(params) for _ in range(3)]
    rows[2]["origin"] = None
    err = _refused(parser, _body(rows))
    assert err.status == 422
    assert err.problems[0]["row"] == 2 and err.problems[0]["field"] == "origin"
    assert err.problems[0]["message"].startswith("row 2: 'origin'")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        ("[]", 422, "empty"),
        ('"a string"', 422, "expected a row"),
        ("[1, 2]", 422, "valid dictionary"),
    ],
)
def test_bodies_that_are_not_rows_are_refused(parser: RowParser, body: str | bytes, status: int, words: str) -> None:
    err = _refused(parser, body)
    assert err.status == status and words in str(err)


def test_a_batch_over_the_limit_is_refused_before_validation(params: Params, parser: RowParser) -> None:
    err = _refused(parser, _body([_row(params)] * (MAX_ROWS + 1)))
    assert err.status == 413 and f"at most {MAX_ROWS}" in str(err)


def test_the_serve_section_is_validated_naming_the_key(params: Params) -> None:
    assert params.serve.alias == "champion" and params.serve.shadow_alias is None
    with pytest.raises(ConfigError, match="serve.max_batch_rows"):
        params.with_overrides({"serve.max_batch_rows": 0})
    with pytest.raises(ConfigError, match="serve.shadow_alias"):
        params.with_overrides({"serve.shadow_alias": "chall enger"})
    with pytest.raises(ConfigError, match="serve.watch_seconds"):
        params.with_overrides({"serve.watch_seconds": 5})


def _slow(parser: RowParser, body: bytes) -> tuple[Any, ...]:
    """What the standard parser and the row model alone make of a body: its rows, or its refusal."""
    try:
        records, single = parser._validate(body)
    except RequestError as err:
        return ("refused", err.status, err.problems)
    return ("rows", single, Rows.from_records(records, parser.kinds))


def _fast(parser: RowParser, body: bytes) -> tuple[Any, ...]:
    try:
        rows, single = parser.parse_rows(body)
    except RequestError as err:
        return ("refused", err.status, err.problems)
    return ("rows", single, rows)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if a[0] != b[0] or a[1] != b[1]:
        return False
    if a[0] == "refused":
        return json.dumps(a[2], default=str) == json.dumps(b[2], default=str)
    ca, cb = a[2].columns, b[2].columns
    return list(ca) == list(cb) and all(
        ca[c].dtype == cb[c].dtype and np.array_equal(ca[c], cb[c], equal_nan=ca[c].dtype.kind == "f") for c in ca
    )


def _bodies(params: Params) -> list[bytes]:
    row = _row(params) | {"wind_gust": None, "temp": 40, "carrier": "Zé"}
    changes = [
        {},
        {"hour": True},
        {"hour": 7.0},
        {"hour": None},
        {"hour": 2**63},
        {"hour": 2**64},
        {"hour": -(2**63)},
        {"temp": True},
        {"temp": 2**64},
        {"temp": 1e308},
        {"temp": "__X__"},
        {"carrier": None},
        {"carrier": 9},
        {"carrier": ""},
        {"origin": {"a": 1}},
        {"dest": ["JFK"]},
        {"runway": "4L"},
    ]
    bodies = []
    for change in changes:
        changed = row | change
        bodies += [json.dumps(changed).encode(), json.dumps([row, changed, row]).encode()]
    swapped = {k: v for k, v in row.items() if k != "distance"} | {"runway": 3}  # as many fields, one wrong
    bodies += [json.dumps([row, swapped]).encode(), json.dumps([row, 1]).encode(), json.dumps([row] * 6).encode()]
    text = json.dumps(row)
    bodies += [
        text.replace('"__X__"', "x").encode(),
        json.dumps(row | {"temp": "__X__"}).replace('"__X__"', "1e400").encode(),
        json.dumps(row | {"temp": "__X__"}).replace('"__X__"', "NaN").encode(),
        json.dumps(row | {"carrier": "__X__"}).replace("__X__", "\\ud800").encode(),
        b"\xef\xbb\xbf" + text.encode(),
        b"  " + text.encode() + b"\n",
        b"null",
        b"{}",
        b"[[]]",
    ]
    return bodies


def test_the_fast_path_accepts_and_refuses_exactly_what_the_row_model_does(params: Params, parser: RowParser) -> None:
    """Every body gives the same rows, or the same status and problems, as the standard parser and the row model."""
    for body in _bodies(params):
        assert _same(_fast(parser, body), _slow(parser, body)), body


def test_plainly_valid_rows_become_typed_columns_without_the_row_model(params: Params, parser: RowParser) -> None:
    rows = [_row(params) | {"wind_gust": None, "temp": 40}, _row(params)]
    assert parser._plain_columns(parser._decoder.decode(_body(rows))) is not None, "the fast path takes plain rows"
    parsed, single = parser.parse_rows(_body(rows))
    kinds = params.dataset.schema_
    assert not single and len(parsed) == 2 and tuple(parsed.columns) == params.dataset.features.all
    for col, values in parsed.columns.items():
        assert values.dtype == {"int": np.int64, "float": np.float64, "string": object}[kinds[col]], col
    assert np.isnan(parsed.columns["wind_gust"][0]) and parsed.columns["temp"][0] == 40.0
    assert parsed.records()[0]["wind_gust"] is None
