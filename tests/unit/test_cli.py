"""The command line's own handling of its arguments (the steps it runs are tested with the steps)."""

from __future__ import annotations

import pytest

from pipelines.__main__ import main


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("dataset.source={kind:", "dataset.source"),  # what the shell leaves of an unquoted {kind: files}
        ("validate.ranges={a: [1}", "validate.ranges"),
    ],
)
@pytest.mark.parametrize("command", ["run", "monitor"])
def test_set_with_a_broken_flow_mapping_is_an_error_line(
    command: str, value: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--date", "2013-07-04", "--set", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --set {key}: ") and "quote it" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
