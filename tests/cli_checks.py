"""The CLI checks the bad-input and adversarial tests share: run `asd` in-process, one error line."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from asdcli.cli.main import app

runner = CliRunner()


def asd(*args: object, input: str | None = None) -> Result:
    """``asd ARGS...`` through typer's runner (arguments stringified), stdout and stderr apart."""
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_error(result: Result, *needles: str) -> str:
    """Exit 1, nothing on stdout, exactly one `Error: ...` line on stderr holding every needle."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Error" not in result.output
