"""`asd finetune`: fine-tuning BEATs as a machine-type classifier with AAM softmax, epoch by epoch.

LoRA on q/k/v (backbone frozen) or, with --full-finetune, every backbone weight; Adam with linear
warm-up then cosine decay. Data-parallel under `accelerate launch`/`torchrun`; only the main
process writes artifacts. After every epoch the resume state is saved, so an interrupted run
continues after its last finished epoch and ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from asdcli.console import make_progress, show_warnings
from asdcli.data.audio import AudioWarning, probe_clips
from asdcli.data.names import Clip
from asdcli.finetune.config import FinetuneConfig, StepHook
from asdcli.finetune.epoch import epoch_entry, evaluate_held_out, format_entry, save_epoch, train_epoch
from asdcli.finetune.labels import (
    LabelledClips,
    TrainingData,
    as_training_data,
    build_labels,
    label_clips,
    split_train_val,
)
from asdcli.finetune.lora import count_parameters
from asdcli.finetune.model import build_model
from asdcli.finetune.resume import check_out_dir, resume_inputs, resume_key, resume_state
from asdcli.finetune.run_dir import RUN_FILE, write_run_artifacts
from asdcli.finetune.run_record import run_record
from asdcli.finetune.state import STATE_FILE, TrainState, lr_at, restore_params
from asdcli.finetune.trainer import Processes, Trainer, current_processes, make_trainer, train_step

if TYPE_CHECKING:
    from asdcli.frontend.beats.checkpoint import LoadedBeats

# what tests and callers import from here besides finetune()
__all__ = [
    "FinetuneConfig",
    "LabelledClips",
    "TrainingData",
    "build_labels",
    "build_model",
    "finetune",
    "label_clips",
    "lr_at",
    "resume_key",
    "split_train_val",
    "train_step",
]


def finetune(
    data: TrainingData | Sequence[Clip],
    cfg: FinetuneConfig,
    out_dir: Path,
    *,
    noise_clips: Sequence[Clip] = (),
    resume: bool = False,
    console: Console | None = None,
    on_step: StepHook | None = None,
    loaded: LoadedBeats | None = None,
) -> Path:
    """Fine-tune BEATs with AAM softmax and write the run folder ``out_dir``.

    Parameters
    ----------
    data : TrainingData or sequence of Clip
        What to train on (see :func:`asdcli.finetune.labels.training_data`), or plain train
        clips; each needs its machine (and, for attribute labels, its attributes).
    cfg : FinetuneConfig
    out_dir : Path
        Run folder; gets adapter/ (or backbone.safetensors), head.safetensors, run.json, state/.
    noise_clips : sequence of Clip
        With plain clips: the noise-only supplemental clips for ``cfg.noise_mix``.
    resume : bool
        Continue from ``out_dir/state`` after its last finished epoch (or start when there is
        none); a finished run is returned as it is. Without it an existing run is an error.
    console : rich Console, optional
        Where progress and per-epoch lines go (stderr); None = silent.
    on_step : callable(epoch, step), optional
        Called after every optimizer step (tests use it to simulate a crash).
    loaded : LoadedBeats, optional
        ``cfg.checkpoint`` already loaded by the caller (a job loads it once); it is left
        unchanged (training works on a copy). None: loaded here.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from asdcli.frontend.beats import load_beats

    out_dir = Path(out_dir)
    check_out_dir(out_dir, resume)
    data = as_training_data(data, noise_clips, cfg)
    clips = label_clips(data.clips, cfg)
    probe_clips([*clips.clips, *data.noise], cfg.channel)  # fail before training
    if loaded is None:
        loaded = load_beats(cfg.checkpoint)
    else:  # LoRA is injected in place: keep the caller's model as it was
        loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    procs = current_processes(cfg.device)
    train_names = [clips.clips[i].name for i in clips.train]
    key = resume_key(cfg, train_names, clips.classes, loaded.sha256)
    inputs = resume_inputs(cfg, train_names, clips.classes, loaded.sha256)
    state = resume_state(out_dir, key, inputs) if resume else None
    start = state.epochs_done if state is not None else 0
    history = list(state.record["history"]) if state is not None else []
    shown_console = console if console is not None and procs.is_main else None
    say = shown_console.print if shown_console is not None else None
    if start >= cfg.epochs and (out_dir / RUN_FILE).exists():
        if say:
            say(f"{out_dir} already holds this finished run; nothing to do.")
        return out_dir
    trainer = _build_trainer(loaded, len(clips.classes), cfg, procs, state, out_dir)
    if say:
        say(
            f"Fine-tuning on {len(clips.train)} clips ({len(clips.val)} held out), {len(clips.classes)} classes, "
            f"{count_parameters(trainer.model, True):,} trainable parameters, {procs.world} process(es) on "
            f"{procs.device}" + (f", resuming after epoch {start}" if start else "") + "."
        )
    progress = make_progress(shown_console) if shown_console is not None else None
    shown = show_warnings(shown_console, AudioWarning) if shown_console is not None else contextlib.nullcontext()
    with shown, progress if progress is not None else contextlib.nullcontext():
        for epoch in range(start, cfg.epochs):
            totals = train_epoch(trainer, clips, data.noise, cfg, epoch, progress, on_step, out_dir)
            history.append(epoch_entry(trainer, totals, evaluate_held_out(trainer, clips, cfg)))
            if say:
                say(format_entry(history[-1], cfg.epochs), highlight=False)
            save_epoch(trainer, out_dir, {"key": key, "inputs": inputs}, history, cfg, epoch)
    if procs.is_main:
        record = run_record(cfg, clips, data, loaded, trainer, history)
        write_run_artifacts(out_dir, trainer.model.backbone, trainer.model.head, trainer.model.classifier, record)
    procs.wait()
    return out_dir


def _build_trainer(
    loaded: LoadedBeats, n_classes: int, cfg: FinetuneConfig, procs: Processes, state: TrainState | None, out_dir: Path
) -> Trainer:
    model = build_model(loaded.model, loaded.model.cfg.encoder_embed_dim, n_classes, cfg)
    if state is not None:
        restore_params(model, state.params, out_dir / STATE_FILE)
    trainer = make_trainer(model, cfg, procs, loaded.model.cfg.encoder_layers)
    if state is not None:
        trainer.optimizer.load_state_dict(state.optimizer)
        if trainer.scaler is not None and state.record.get("scaler"):
            trainer.scaler.load_state_dict(state.record["scaler"])
    return trainer
