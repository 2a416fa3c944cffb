"""`asd finetune`: not implemented yet."""

from __future__ import annotations

import typer


def command() -> None:
    """Fine-tune BEATs with LoRA as a machine-type classifier (AAM softmax)."""
    typer.echo("asd finetune: not implemented yet", err=True)
    raise typer.Exit(2)
