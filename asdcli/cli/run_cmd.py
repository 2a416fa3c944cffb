"""`asd run`: finetune -> embed -> fit-bank -> score -> report in one resumable run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from asdcli.backend.recipes import RECIPE_HELP
from asdcli.console import stderr_console
from asdcli.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from rich.console import Console

    from asdcli.pipeline.run import RunResult

_F = FinetuneConfig.__dataclass_fields__


def command(
    data: Path = typer.Argument(..., help="Dataset root: DATA/<machine>/{train,test,supplemental}/ (dev or eval data)."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint",
        help="Official BEATs checkpoint (.pt). Default: $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt.",
    ),
    out: Path = typer.Option(Path("runs/run"), "--out", "-o", help="Run folder; re-running continues it and skips finished stages."),
    no_finetune: bool = typer.Option(False, "--no-finetune", help="Skip fine-tuning: frozen BEATs, mean-pooled tokens."),
    epochs: int = typer.Option(_F["epochs"].default, help="Fine-tuning passes over the train clips."),
    labels: str = typer.Option(_F["labels"].default, help="Fine-tuning classes: 'machine' or 'attribute'."),
    lr: float = typer.Option(_F["lr"].default, help="Adam peak learning rate of fine-tuning."),
    batch_size: int = typer.Option(_F["batch_size"].default, help="Clips per fine-tuning step (and per embedding batch)."),
    seed: int = typer.Option(_F["seed"].default, help="Seed of fine-tuning (initialisation, split, order)."),
    lora_rank: int = typer.Option(_F["lora_rank"].default, help="LoRA rank on q_proj/k_proj/v_proj."),
    specaugment: bool = typer.Option(False, "--specaugment", help="Fine-tuning: mask 2 time and 2 mel bands per clip."),
    mixup: float = typer.Option(_F["mixup"].default, help="Fine-tuning: mixup Beta(alpha, alpha) on fbank; 0 = off."),
    noise_mix: bool = typer.Option(False, "--noise-mix", help="Fine-tuning: mix supplemental noise-only clips in at 5-20 dB SNR."),
    embedding: str | None = typer.Option(None, "--embedding", help="Fine-tuned vector: 'head' (default) or 'pooled'."),
    seconds: float = typer.Option(10.0, "--seconds", help="Cut or zero-pad every clip to this many seconds."),
    recipe: str = typer.Option("seed", "--recipe", help="Back-end recipe: " + RECIPE_HELP + "."),
    k: int | None = typer.Option(None, "--k", min=1, help="Bank score = mean of the K smallest distances (recipe's: 1)."),
    score_norm: str | None = typer.Option(None, "--score-norm", help="none, density, domain-density or domain-zscore (as fit-bank; default: the recipe's)."),
    density_k: int | None = typer.Option(None, "--density-k", min=1, help="K of the density radii (as fit-bank)."),
    density_k_target: int | None = typer.Option(None, "--density-k-target", min=1, help="K of the target radii (as fit-bank)."),
    domain_aware: bool = typer.Option(False, "--domain-aware", hidden=True),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (cuda:N) or mps."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader processes that read audio (fine-tuning and embedding)."),
    mixed_precision: str = typer.Option(_F["mixed_precision"].default, help="Fine-tuning precision: 'no', 'bf16' or 'fp16'."),
    plots: bool = typer.Option(False, "--plots", help="Also write ROC/histogram PNGs to RUN_DIR/plots/."),
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
    from asdcli.pipeline.run import RunConfig, run_pipeline

    removed_options(domain_aware, None)
    bank = recipe_bank_config(recipe, k=k, score_norm=score_norm, density_k=density_k, density_k_target=density_k_target)
    console = stderr_console()
    ckpt = resolve_checkpoint(checkpoint)
    finetune = None if no_finetune else FinetuneConfig(
        checkpoint=ckpt, epochs=epochs, labels=labels, lr=lr, batch_size=batch_size, seed=seed,
        lora_rank=lora_rank, seconds=seconds, device=device, mixed_precision=mixed_precision,
        specaugment=specaugment, mixup=mixup, noise_mix=noise_mix, num_workers=workers,
    )
    cfg = RunConfig(data_root=data, run_dir=out, checkpoint=ckpt, finetune=finetune,
                    bank=bank, embedding=embedding, seconds=seconds,
                    device=device, batch_size=batch_size, num_workers=workers, plots=plots)  # fmt: skip
    result = run_pipeline(cfg, console)
    show_result(result, console)


def show_result(result: RunResult, console: Console) -> None:
    """The report table (or CSV when stderr is not a terminal), the official score, the artifacts;
    the submission folder on stdout."""
    from asdcli.pipeline.run import show_report

    if result.report is not None:
        show_report(result.report, console)
        console.print(f"[bold]Official score: {100 * result.report.official_score:.2f}[/] "
                      "(harmonic mean of AUC source, AUC target and pAUC over machines, in %)", highlight=False, soft_wrap=True)
    console.print(f"Artifacts in {result.run_dir}: finetune/ embeddings/ banks/ submission/ report.csv stages/",
                  highlight=False, soft_wrap=True, markup=False)
    if result.submission_dir is not None:
        typer.echo(str(result.submission_dir))
