"""`asd report`: not implemented yet."""

from __future__ import annotations

import typer


def command() -> None:
    """Compute the official DCASE metrics (AUC per domain, pAUC, official score)."""
    typer.echo("asd report: not implemented yet", err=True)
    raise typer.Exit(2)
