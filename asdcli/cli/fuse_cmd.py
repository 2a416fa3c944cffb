"""`asd fuse`: label-free fusion of several systems into one challenge folder."""

from __future__ import annotations

from pathlib import Path

import typer

from asdcli.console import stderr_console
from asdcli.errors import ConfigError


def command(
    systems: list[str] = typer.Argument(
        ..., help="Systems to fuse: `asd run` folders (with banks/ and submission/) or SUBMISSION_DIR:BANKS_DIR."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Write the fused challenge folder here (new, or holding only submission files)."
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="Comma-separated weight per system, e.g. 2,1 (default: equal)."
    ),
    threshold_quantile: float = typer.Option(
        0.9,
        "--threshold-quantile",
        help="Decision threshold = this quantile of a gamma fit to the fused leave-one-out scores.",
    ),
) -> None:
    """Fuse systems without labels: per machine/section, standardize each system's test scores with
    its own bank's leave-one-out mean and std, average them, and decide with a gamma threshold
    fitted on the fused leave-one-out scores of the train clips.

    Example: asd fuse runs/frozen runs/ft --out runs/fused/submission
    """
    from asdcli.backend.fuse import fuse

    paths = fuse(systems, out, _weights(weights), threshold_quantile)
    stderr_console().print(
        f"Fused {len(systems)} systems into {len(paths)} files in {out}", markup=False, highlight=False, soft_wrap=True
    )
    typer.echo(str(out))


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"--weights must be comma-separated numbers, e.g. 2,1; got {text!r}.") from e
