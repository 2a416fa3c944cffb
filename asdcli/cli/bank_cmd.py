"""`asd fit-bank`: not implemented yet."""

from __future__ import annotations

import typer


def command() -> None:
    """Build a KNN bank (mean/std + normalized vectors) from training embeddings."""
    typer.echo("asd fit-bank: not implemented yet", err=True)
    raise typer.Exit(2)
