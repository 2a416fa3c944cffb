"""Scores for a person at a terminal: a Rich table with the bank's threshold and a verdict."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from asdcli.backend.score import format_score


def score_table(filenames: Sequence[str], scores: np.ndarray, decisions: np.ndarray, threshold: float) -> Table:
    """One row per clip: file, score, threshold, verdict (``ANOMALY`` in red or ``ok``)."""
    table = Table(title=f"{len(filenames)} clip(s), {int(np.sum(decisions))} above the threshold")
    table.add_column("filename")
    table.add_column("score", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("verdict")
    for name, score, flag in zip(filenames, scores, decisions):
        verdict = "[bold red]ANOMALY[/]" if flag else "[green]ok[/]"
        table.add_row(str(name), format_score(score), format_score(threshold), verdict)
    return table


def print_score_table(filenames: Sequence[str], scores: np.ndarray, decisions: np.ndarray, threshold: float,
                      console: Console | None = None) -> None:  # fmt: skip
    """Print :func:`score_table` on ``console`` (default: stdout)."""
    (console or Console()).print(score_table(filenames, scores, decisions, threshold))
