"""`asd demo`: the whole pipeline on a synthetic dataset with a tiny random BEATs, no downloads."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asdcli.console import make_progress, stderr_console

DEFAULT_DEMO_DIR = Path("asd-demo")
DEMO_EPOCHS = 10
DEMO_LR = 1e-3  # a random tiny backbone needs a larger step than the 1e-4 default for iter3
REAL_COMMAND = "asd run data/dev --checkpoint BEATs_iter3.pt --out runs/dev"


def command(
    out: Path = typer.Option(
        DEFAULT_DEMO_DIR, "--out", "-o", help="Demo folder: data/, beats_tiny_random_seed<SEED>.pt and run/."
    ),
    make_data: Path | None = typer.Option(
        None,
        "--make-data",
        metavar="DIR",
        help="Only write a synthetic DCASE-2025-layout dataset (DIR/<machine>/{train,test,supplemental}) and exit.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic dataset, the random model and fine-tuning."),
    seconds: float = typer.Option(2.0, "--seconds", min=0.175, help="Length of each synthetic clip in seconds."),
    epochs: int = typer.Option(DEMO_EPOCHS, "--epochs", min=1, help="Fine-tuning epochs of the demo run."),
) -> None:
    """Run the whole pipeline on a synthetic dataset with a tiny random BEATs (about a minute on a laptop CPU).

    Writes OUT/data (fan, gearbox, bearing: source/target domains, normal and anomalous test
    clips), OUT/beats_tiny_random_seed<SEED>.pt (an official-format checkpoint of a randomly initialised
    2-layer BEATs) and OUT/run (finetune -> embed -> fit-bank -> score -> report, as `asd run`),
    then shows the report. Re-running reuses what is there.

    `asd demo --make-data DIR` writes only the synthetic dataset and prints its root on stdout.
    """
    from asdcli.data.audio import AudioConfig
    from asdcli.seeds import check_seed

    AudioConfig(seconds=seconds)  # in range before anything is synthesized
    check_seed(seed)
    console = stderr_console()
    if make_data is not None:
        _synthesize(make_data, seed, seconds, console)
        typer.echo(str(make_data))
        return
    from asdcli.cli.run_cmd import show_result
    from asdcli.finetune.config import FinetuneConfig
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
    from asdcli.frontend.embedder import EmbedConfig
    from asdcli.pipeline.run import RunConfig, run_pipeline

    start = time.perf_counter()
    data = out / "data"
    _synthesize(data, seed, seconds, console, reuse=True)
    checkpoint = out / f"beats_tiny_random_seed{seed}.pt"
    if not checkpoint.is_file():
        make_tiny_checkpoint(checkpoint, seed)
        console.print(
            f"Wrote a randomly initialised tiny BEATs (2 layers, 64-d) in the official format: {checkpoint}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    finetune = FinetuneConfig(checkpoint=checkpoint, epochs=epochs, lr=DEMO_LR, seed=seed)
    frontend = EmbedConfig(checkpoint=checkpoint, seconds=seconds, device="cpu")
    cfg = RunConfig.create(data_root=data, run_dir=out / "run", embed=frontend, finetune=finetune, plots=True)
    result = run_pipeline(cfg, console)
    show_result(result, console)
    console.print(
        f"\nDemo finished in {time.perf_counter() - start:.0f} s. These numbers come from a [bold]randomly initialised "
        "tiny BEATs on synthetic sounds[/]: they show the pipeline works, not how well it detects anomalies.\n"
        f"Plots: {escape(str(out / 'run' / 'plots'))}. On the real task, with BEATs_iter3.pt from the microsoft/unilm BEATs page "
        f"and the DCASE 2025 Task 2 development data:\n  {REAL_COMMAND}",
        highlight=False,
        soft_wrap=True,
    )


def _synthesize(root: Path, seed: int, seconds: float, console: Console, reuse: bool = False) -> None:
    """Write the synthetic dataset, or with ``reuse`` keep one made before with the same config
    (rewriting it would change every clip's timestamp and redo all stages)."""
    from asdcli.data.dataset import count_clips_table, discover_clips
    from asdcli.synth.dataset import SynthConfig, count_clips, dataset_is_current, make_dataset

    cfg = SynthConfig(seed=seed, seconds=seconds)
    if reuse and dataset_is_current(root, cfg):
        console.print(f"Synthetic dataset in {root} is up to date.", highlight=False, markup=False)
        return
    with make_progress(console) as progress:
        task = progress.add_task("Synthesizing", total=count_clips(cfg), rate="")
        make_dataset(root, cfg, progress=lambda n: progress.advance(task, n))
    _print_summary(count_clips_table(discover_clips([root])), console)


def _print_summary(rows: list[tuple[str, ...]], console: Console) -> None:
    from asdcli.data.dataset import COUNT_COLUMNS

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
