"""Every command explains itself (`--help`) through Typer's CliRunner and is in the README."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from asdcli import __version__
from asdcli.cli.main import app

runner = CliRunner()
COMMANDS = ["finetune", "embed", "fit-bank", "score", "report", "run", "demo", "export"]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_root_help_lists_the_stages() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert len(result.output.strip().splitlines()) > 3


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_is_in_the_readme(name: str) -> None:
    assert f"asd {name}" in README.read_text(encoding="utf-8")
