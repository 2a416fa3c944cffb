"""`asd finetune`: fine-tuning of BEATs as a machine-type classifier (AAM softmax)."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from asdcli.cli.finetune_options import with_finetune_options
from asdcli.console import stderr_console
from asdcli.errors import DataError
from asdcli.finetune.config import DEFAULT_RUN_DIR, FinetuneConfig


@with_finetune_options()
def command(
    data: list[Path] = typer.Argument(
        ..., help="Dataset root(s) (DATA/<machine>/train/...), machine or train folders."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Official BEATs checkpoint (.pt). Default: $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt.",
    ),
    out: Path = typer.Option(
        DEFAULT_RUN_DIR, "--out", "-o", help="Run folder for the adapter, head, run.json and resume state."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out after its last finished epoch."),
    finetune_options: dict[str, Any] | None = None,
) -> None:
    """Fine-tune BEATs (LoRA, or every weight with --full-finetune) as a machine-type classifier
    (AAM softmax) on the train clips of one or more dataset roots.

    Trains on every train clip (source and target) of every machine found and writes RUN_DIR with
    adapter/ (peft format) or backbone.safetensors, head.safetensors and run.json for
    `asd embed --adapter RUN_DIR`. A machine name found under several roots is one class per root
    (ROOT/machine) unless --merge-machines.
    Data-parallel on several GPUs: `accelerate launch -m asdcli finetune DATA ...`.
    """
    from asdcli.data.dataset import discover_clips
    from asdcli.finetune.labels import training_data
    from asdcli.finetune.loop import finetune
    from asdcli.finetune.trainer import current_processes
    from asdcli.frontend.beats import resolve_checkpoint
    from asdcli.pipeline.lock import folder_lock

    cfg = FinetuneConfig(checkpoint=resolve_checkpoint(checkpoint), **(finetune_options or {}))
    sources = []
    for root in data:
        clips = discover_clips([root])
        if not any(c.split == "train" for c in clips):
            found = ", ".join(
                f"{n} {split}" for split, n in sorted(Counter(c.split or "unsplit" for c in clips).items())
            )
            raise DataError(
                f"{root} holds no train clips (only {found}); asd finetune trains on DATA/<machine>/train/*.wav."
            )
        sources.append((root, clips))
    train = training_data(sources, use_clean=cfg.use_clean, noise_mix=cfg.noise_mix, merge_machines=cfg.merge_machines)
    console = stderr_console()
    # One fine-tuning per --out: two would write adapter, head and state over each other. The main
    # process locks; the process state is made as training makes it (CPU or not), before training.
    main_process = current_processes(cfg.device).rank == 0
    with (
        folder_lock(out, "asd finetune", lambda text: console.print(f"Warning: {text}", markup=False))
        if main_process
        else contextlib.nullcontext()
    ):
        run_dir = finetune(train, cfg, out, resume=resume, console=console)
    if main_process:  # one line on stdout even under `accelerate launch`
        typer.echo(str(run_dir))
