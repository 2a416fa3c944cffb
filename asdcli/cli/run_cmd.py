"""`asd run`: finetune -> embed -> fit-bank -> score -> report in one resumable run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from asdcli.backend.recipes import RECIPE_HELP
from asdcli.cli.finetune_options import with_finetune_options
from asdcli.console import stderr_console
from asdcli.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from rich.console import Console

    from asdcli.pipeline.run import RunResult


# one root: no machine names to merge across roots
@with_finetune_options(skip=("merge_machines",), off_switch="--no-finetune")
def command(
    data: Path = typer.Argument(
        ..., help="Dataset root: DATA/<machine>/{train,test,supplemental}/ (dev or eval data)."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Official BEATs checkpoint (.pt). Default: $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt.",
    ),
    out: Path = typer.Option(
        Path("runs/run"), "--out", "-o", help="Run folder; re-running continues it and skips finished stages."
    ),
    no_finetune: bool = typer.Option(
        False,
        "--no-finetune",
        help="Skip fine-tuning: frozen BEATs, mean-pooled tokens. Of the fine-tuning options only "
        "--batch-size, --seconds, --channel, --device and --workers apply (any other is an error).",
    ),
    embedding: str | None = typer.Option(None, "--embedding", help="Fine-tuned vector: 'head' (default) or 'pooled'."),
    layers: str = typer.Option(
        "last",
        "--layers",
        help="With --no-finetune: 'last', or 1-based transformer layers (e.g. 7,10) whose token means are concatenated.",
    ),
    recipe: str = typer.Option("seed", "--recipe", help="Back-end recipe: " + RECIPE_HELP + "."),
    k: int | None = typer.Option(
        None, "--k", min=1, help="Bank score = mean of the K smallest distances (recipe's: 1)."
    ),
    score_norm: str | None = typer.Option(
        None,
        "--score-norm",
        help="none, density, domain-density or domain-zscore (as fit-bank; default: the recipe's).",
    ),
    density_k: int | None = typer.Option(None, "--density-k", min=1, help="K of the density radii (as fit-bank)."),
    density_k_target: int | None = typer.Option(
        None, "--density-k-target", min=1, help="K of the target radii (as fit-bank)."
    ),
    domain_aware: bool = typer.Option(False, "--domain-aware", hidden=True),
    plots: bool = typer.Option(
        False, "--plots", help="Also write ROC/histogram PNGs to RUN_DIR/plots/ (needs labelled test clips)."
    ),
    finetune_options: dict[str, Any] | None = None,
) -> None:
    """Run the whole challenge pipeline on a dataset into one run folder.

    Stages: finetune (LoRA) -> embed (train + test) -> fit-bank (per machine/section) -> score
    (RUN_DIR/submission, the challenge folder) -> report (when test names carry labels). Finished
    stages whose inputs and options are unchanged are skipped; after Ctrl-C, run it again to
    continue. Prints the submission folder on stdout.

    Example: asd run data/dev --checkpoint BEATs_iter3.pt --out runs/dev
    """
    from asdcli.backend.recipes import recipe_bank_config
    from asdcli.cli.bank_cmd import removed_options
    from asdcli.frontend.beats import resolve_checkpoint
    from asdcli.frontend.embedder import EmbedConfig
    from asdcli.pipeline.run import RunConfig, run_pipeline

    removed_options(domain_aware, None)
    bank = recipe_bank_config(
        recipe, k=k, score_norm=score_norm, density_k=density_k, density_k_target=density_k_target
    )
    console = stderr_console()
    ckpt = resolve_checkpoint(checkpoint)
    opts = finetune_options or {}
    finetune = FinetuneConfig(checkpoint=ckpt, **opts)  # validated even with --no-finetune: --seconds etc. are shared
    frontend = EmbedConfig(
        checkpoint=ckpt,
        device=finetune.device,
        seconds=finetune.seconds,
        channel=finetune.channel,
        num_workers=finetune.num_workers,
        layers=layers,
    )
    cfg = RunConfig.create(data_root=data, run_dir=out, embed=frontend, embedding=embedding,
                           finetune=None if no_finetune else finetune, bank=bank,
                           plots=plots)  # fmt: skip
    result = run_pipeline(cfg, console)
    show_result(result, console)


def show_result(result: RunResult, console: Console) -> None:
    """The report table (or CSV when stderr is not a terminal), the official score, the artifacts;
    the submission folder on stdout."""
    from asdcli.pipeline.run import show_report

    if result.report is not None:
        show_report(result.report, console)
        console.print(
            f"[bold]Official score: {100 * result.report.official_score:.2f}[/] "
            "(harmonic mean of AUC source, AUC target and pAUC over machines, in %)",
            highlight=False,
            soft_wrap=True,
        )
    made = [
        name
        for name in ("finetune/", "embeddings/", "banks/", "submission/", "report.csv", "plots/", "stages/")
        if (result.run_dir / name.rstrip("/")).exists()
    ]
    console.print(f"Artifacts in {result.run_dir}: {' '.join(made)}", highlight=False, soft_wrap=True, markup=False)
    if result.submission_dir is not None:
        typer.echo(str(result.submission_dir))
