"""Every command explains itself (`--help`) through Typer's CliRunner and is in the README."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asdcli import __version__
from asdcli.cli.main import app

runner = CliRunner()
COMMANDS = [
    "finetune",
    "embed",
    "fit-bank",
    "score",
    "report",
    "run",
    "demo",
    "package",
    "watch",
    "enrol",
    "fuse",
    "export",
]
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


# ---------------------------------------------------------------- usage errors: one line, exit 2


@pytest.mark.parametrize(
    ("args", "error", "command"),
    [
        (["frobnicate"], "Error: No such command 'frobnicate'.", "asd"),
        (["report", "--bnak"], "Error: No such option: --bnak (Possible options: --banks, --name).", "asd report"),
        (
            ["report", "-f", "xml", "x"],
            "Error: Invalid value for '--format' / '-f': 'xml' is not one of 'table', 'csv', 'json', 'official'.",
            "asd report",
        ),
        (
            ["package", "run", "--team", "Doe ACME", "-o", "pkg"],
            "Error: Invalid value for '--team': must be "
            "<Surname>_<INSTITUTE> (letters, digits, '-'), e.g. Doe_ACME; got 'Doe ACME'.",
            "asd package",
        ),
        (
            ["score", "-f", "xml"],
            "Error: Invalid value for '--format' / '-f': 'xml' is not one of 'csv', 'jsonl'.",
            "asd score",
        ),
        (
            ["finetune", "--labels", "colour", "data"],
            "Error: Invalid value for '--labels': 'colour' is not one of 'machine', 'attribute', 'attribute+domain'.",
            "asd finetune",
        ),
        (["run"], "Error: Missing argument 'DATA'.", "asd run"),
        (
            ["report"],
            "Error: Pass one or more submission folders (or - for stdin), or --ground-truth-out DIR.",
            "asd report",
        ),
        (["report", "a", "b", "-n", "x"], "Error: Give --name once per submission (2), got 1.", "asd report"),
        (
            ["report", "a", "--banks", "b", "--banks", "c"],
            "Error: Give --banks once per submission (1), got 2.",
            "asd report",
        ),
        (
            ["embed", "x", "-o", "y.npz", "--batch-size", "many"],
            "Error: Invalid value for '--batch-size': expected a valid integer, unable to parse string as an integer.",
            "asd embed",
        ),
    ],
)
def test_usage_error_is_one_line_and_a_hint(args: list[str], error: str, command: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [error, f"Try '{command} --help' for help."]


def test_no_arguments_shows_the_help() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and result.output.startswith("Usage: asd [OPTIONS] COMMAND [ARGS]...")


# ---------------------------------------------------------------- help: one placeholder style, plain text


def _help(name: str) -> str:
    result = runner.invoke(app, [name, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_plain_text_with_one_placeholder_style(name: str) -> None:
    text = _help(name)
    assert not any(
        mark in text for mark in ("╭", "│", "…", "<bool>", "<path>", "<str>", "<int", "list[", "{"[:0] + "<list")
    )
    assert all(len(line) <= 80 for line in text.splitlines())
    usage = text.splitlines()[0]
    assert re.fullmatch(r"Usage: asd [a-z-]+ \[OPTIONS\]( \[?[A-Z_]+\]?(\.\.\.)?)*", usage), usage
    for line in text.splitlines():
        m = re.match(r"\s+(-\w, )?(--[a-z-]+)( (\S+))?\s{2,}", line)
        if m and m.group(4):  # a placeholder: upper-case words or [a|b] choices
            assert re.fullmatch(r"[A-Z_]+|\[[a-z0-9|]+\]", m.group(4)), line


def test_flags_are_shown_as_flags() -> None:
    text = _help("score")
    assert re.search(r"^  --all {2,}With --embeddings", text, re.MULTILINE)
    assert re.search(r"^  --header {2,}Start the CSV", text, re.MULTILINE)
    assert re.search(r"^  CLIPS\.\.\. {2,}Clips to embed", text, re.MULTILINE)


def test_choice_lists_match_the_library() -> None:
    from asdcli.backend.score import SCORE_FORMATS
    from asdcli.cli.usage import TEXT_CHOICES
    from asdcli.finetune.config import LABEL_MODES, MIXED_PRECISION
    from asdcli.frontend.embedder import EMBEDDING_CHOICES

    assert TEXT_CHOICES == {
        "--labels": LABEL_MODES,
        "--mixed-precision": MIXED_PRECISION,
        "--embedding": EMBEDDING_CHOICES,
        "score --format": SCORE_FORMATS,
    }


def test_demo_help_names_the_checkpoint_it_writes() -> None:
    from asdcli.cli import demo_cmd

    text = " ".join(_help("demo").split())
    assert "beats_tiny_random_seed<SEED>.pt" in text and "beats_tiny_random.pt" not in text
    assert 'f"beats_tiny_random_seed{seed}.pt"' in Path(demo_cmd.__file__).read_text(encoding="utf-8")


def test_report_help_golden_usage_and_examples() -> None:
    text = _help("report")
    assert text.splitlines()[0] == "Usage: asd report [OPTIONS] [SUBMISSION]..."
    examples = text[text.index("  Examples:") : text.index("Arguments:")].rstrip("\n").splitlines()
    assert examples == [
        "  Examples:",
        "    asd report runs/a/submission --data data/dev",
        "    asd report runs/*/submission --data data/dev --html report.html",
        "    asd report runA/ runB/ --ground-truth GT --format csv > results.csv",
        "    asd score ... | asd report - --machine fan --data data/dev",
        "    asd report --ground-truth-out GT --data data/dev",
    ]
    assert "  -f, --format [table|csv|json|official]\n" in text
    assert "  --banks DIR " in text and "  --html FILE " in text and "  -n, --name TEXT " in text


def test_help_survives_a_narrow_pipe() -> None:
    result = runner.invoke(app, ["report", "--help"], terminal_width=60)
    assert "".join(result.output.split()).count("(anomaly_score_<machine>_section_<SS>_test.csv") == 1
    assert "…" not in result.output  # wrapped, never cut
