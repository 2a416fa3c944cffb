"""`asd run`: finetune -> embed -> fit-bank -> score -> report in one resumable run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

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
    seconds: float = typer.Option(10.0, "--seconds", help="Cut or zero-pad every clip to this many seconds (0.175 to 60)."),
    k: int = typer.Option(1, "--k", min=1, help="Bank score = mean of the K smallest cosine distances."),
    domain_aware: bool = typer.Option(False, "--domain-aware", help="Search source and target bank vectors separately."),
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
    from asdcli.backend.bank import BankConfig
    from asdcli.frontend.beats import resolve_checkpoint
    from asdcli.frontend.embed import EmbedConfig
    from asdcli.pipeline.run import RunConfig, run_pipeline

    console = stderr_console()
    ckpt = resolve_checkpoint(checkpoint)
    frontend = EmbedConfig(checkpoint=ckpt, batch_size=batch_size, device=device, seconds=seconds,
                           num_workers=workers)  # fmt: skip
    finetune = None if no_finetune else FinetuneConfig(
        checkpoint=ckpt, epochs=epochs, labels=labels, lr=lr, batch_size=batch_size, seed=seed,
        lora_rank=lora_rank, mixed_precision=mixed_precision, specaugment=specaugment, mixup=mixup,
        noise_mix=noise_mix,
    )
    cfg = RunConfig.create(data_root=data, run_dir=out, embed=frontend, embedding=embedding, finetune=finetune,
                           bank=BankConfig(k=k, domain_aware=domain_aware), plots=plots)  # fmt: skip
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
