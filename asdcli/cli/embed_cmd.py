"""`asd embed`: not implemented yet."""

from __future__ import annotations

import typer


def command() -> None:
    """Embed clips with BEATs (optionally a fine-tuned adapter) into an .npz file."""
    typer.echo("asd embed: not implemented yet", err=True)
    raise typer.Exit(2)
