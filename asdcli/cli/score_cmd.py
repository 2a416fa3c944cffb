"""`asd score`: not implemented yet."""

from __future__ import annotations

import typer


def command() -> None:
    """Score clips against a bank: anomaly scores as challenge CSV on stdout."""
    typer.echo("asd score: not implemented yet", err=True)
    raise typer.Exit(2)
