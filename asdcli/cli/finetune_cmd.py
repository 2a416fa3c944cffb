"""`asd finetune`: LoRA fine-tuning of BEATs as a machine-type classifier (AAM softmax)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from asdcli.console import stderr_console
from asdcli.errors import DataError
from asdcli.finetune.config import DEFAULT_RUN_DIR, FinetuneConfig

_D = FinetuneConfig.__dataclass_fields__


def _default(name: str):  # type: ignore[no-untyped-def]
    return _D[name].default


def command(
    data: list[Path] = typer.Argument(..., help="Dataset root(s) (DATA/<machine>/train/...), machine or train folders."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint",
        help="Official BEATs checkpoint (.pt). Default: $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt.",
    ),
    out: Path = typer.Option(DEFAULT_RUN_DIR, "--out", "-o", help="Run folder for the adapter, head, run.json and resume state."),
    epochs: int = typer.Option(_default("epochs"), help="Passes over the training clips."),
    batch_size: int = typer.Option(_default("batch_size"), help="Clips per step and process."),
    lr: float = typer.Option(_default("lr"), help="Adam peak learning rate (5% linear warm-up, then cosine to 0)."),
    seed: int = typer.Option(_default("seed"), help="Seed of initialisation, split, order and augmentation."),
    seconds: float = typer.Option(_default("seconds"), help="Clip length in seconds (pad or cut)."),
    val_fraction: float = typer.Option(_default("val_fraction"), help="Share of each class held out for accuracy."),
    labels: str = typer.Option(_default("labels"), help="Classes: 'machine' or 'attribute' (machine + attributes)."),
    lora_rank: int = typer.Option(_default("lora_rank"), help="LoRA rank on q_proj/k_proj/v_proj of every layer."),
    lora_alpha: float = typer.Option(_default("lora_alpha"), help="LoRA alpha (scaling alpha/rank)."),
    lora_dropout: float = typer.Option(_default("lora_dropout"), help="Dropout on the LoRA input."),
    embedding_dim: int = typer.Option(_default("embedding_dim"), help="Size of the head embedding."),
    specaugment: bool = typer.Option(False, "--specaugment", help="Mask 2 time and 2 mel bands per clip."),
    mixup: float = typer.Option(_default("mixup"), help="Mixup Beta(alpha, alpha) on fbank; 0 = off (try 0.4)."),
    noise_mix: bool = typer.Option(False, "--noise-mix", help="Mix supplemental noise-only clips in at 5-20 dB SNR."),
    mixed_precision: str = typer.Option(_default("mixed_precision"), help="'no', 'bf16' or 'fp16' (fbank stays fp32)."),
    device: str = typer.Option(_default("device"), help="auto, cpu, cuda or mps (under accelerate launch each process uses its own GPU)."),
    num_workers: int = typer.Option(_default("num_workers"), help="DataLoader worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out after its last finished epoch."),
) -> None:
    """Fine-tune BEATs with LoRA as a machine-type classifier (AAM softmax) on the train clips.

    Trains on every train clip (source and target) of every machine found and writes RUN_DIR with
    adapter/ (peft format), head.safetensors and run.json for `asd embed --adapter RUN_DIR`.
    Data-parallel on several GPUs: `accelerate launch -m asdcli finetune DATA ...`.
    """
    from accelerate import PartialState

    from asdcli.data.dataset import discover_clips
    from asdcli.finetune.loop import finetune
    from asdcli.frontend.beats import resolve_checkpoint

    cfg = FinetuneConfig(
        checkpoint=resolve_checkpoint(checkpoint), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        seconds=seconds, val_fraction=val_fraction, labels=labels, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, embedding_dim=embedding_dim, specaugment=specaugment, mixup=mixup,
        noise_mix=noise_mix, mixed_precision=mixed_precision, device=device, num_workers=num_workers,
    )
    clips = discover_clips(data)
    train = [c for c in clips if c.split == "train"]
    if not train:
        found = ", ".join(f"{n} {split}" for split, n in sorted(Counter(c.split or "unsplit" for c in clips).items()))
        raise DataError(f"{', '.join(map(str, data))} holds no train clips (only {found}); "
                        "asd finetune trains on DATA/<machine>/train/*.wav.")
    noise = [c for c in clips if c.kind == "noise"]
    run_dir = finetune(train, cfg, out, noise_clips=noise, resume=resume, console=stderr_console())
    if PartialState().is_main_process:  # one line on stdout even under `accelerate launch`
        typer.echo(str(run_dir))
