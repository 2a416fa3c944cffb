"""`asd demo`: try the tool without downloads. `--make-data DIR` writes a synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from asdcli.console import make_progress, stderr_console
from asdcli.dataset import COUNT_COLUMNS, count_clips_table, discover_clips
from asdcli.synth import SynthConfig, count_clips, make_dataset


def command(
    make_data: Optional[Path] = typer.Option(
        None, "--make-data", metavar="DIR",
        help="Write a synthetic DCASE-2025-layout dataset (DIR/<machine>/{train,test,supplemental}) and exit.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the synthetic dataset (same seed = same files)."),
    seconds: float = typer.Option(2.0, "--seconds", min=0.175, help="Length of each synthetic clip in seconds."),
) -> None:
    """Run the whole pipeline on a synthetic dataset with a tiny random model.

    `asd demo --make-data data/demo` writes only the synthetic dataset (fan, gearbox, bearing:
    source/target domains, normal and anomalous test clips) and prints its root on stdout.
    """
    if make_data is None:
        typer.echo("asd demo: the full demo is not implemented yet; try `asd demo --make-data DIR`.", err=True)
        raise typer.Exit(2)
    cfg = SynthConfig(seed=seed, seconds=seconds)
    console = stderr_console()
    with make_progress(console) as progress:
        task = progress.add_task("Synthesizing", total=count_clips(cfg), rate="")
        make_dataset(make_data, cfg, progress=lambda n: progress.advance(task, n))
    _print_summary(count_clips_table(discover_clips([make_data])))
    typer.echo(str(make_data))


def _print_summary(rows: list[tuple[str, ...]]) -> None:
    console = stderr_console()
    if not console.is_terminal:  # plain CSV when stderr is piped or captured
        columns = [i for i, name in enumerate(COUNT_COLUMNS) if i == 0 or any(r[i] != "0" for r in rows)]
        for r in [COUNT_COLUMNS, *rows]:
            typer.echo(",".join(r[i] for i in columns), err=True)
        return
    table = Table(title="Synthetic dataset (clips)")
    for name in COUNT_COLUMNS:
        table.add_column(name, justify="left" if name == "machine" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
