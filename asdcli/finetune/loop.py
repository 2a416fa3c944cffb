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
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import accelerate
import numpy as np
import peft
import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from asdcli import __version__
from asdcli.console import make_progress, show_warnings
from asdcli.data.audio import AudioConfig, AudioWarning, ClipDataset, probe_clips
from asdcli.data.dataset import Clip, require_field
from asdcli.errors import ConfigError, DataError, TrainingError
from asdcli.finetune.augment import NoiseMixDataset
from asdcli.finetune.config import FinetuneConfig, StepHook
from asdcli.finetune.labels import TrainingData, build_labels, split_train_val
from asdcli.finetune.lora import LORA_TARGETS, count_parameters
from asdcli.finetune.model import (
    build_model,
    seeded_torch_rng,
    trainable_weights_finite,
)
from asdcli.finetune.resume import check_out_dir, resume_inputs, resume_key, resume_state
from asdcli.finetune.run_dir import RUN_FILE, RUN_KIND, RUN_SCHEMA, write_run_artifacts
from asdcli.finetune.state import (
    STATE_FILE,
    TrainState,
    derive_seed,
    epoch_batches,
    lr_at,
    restore_params,
    save_state,
)
from asdcli.finetune.trainer import (
    NonFiniteLoss,
    Processes,
    Trainer,
    current_processes,
    evaluate,
    make_trainer,
    set_lr,
    train_step,
)

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


@dataclass(frozen=True)
class LabelledClips:
    """Clips with their class index (N,) int64, the class names, and the train/held-out split."""

    clips: tuple[Clip, ...]
    labels: np.ndarray
    classes: list[str]
    train: np.ndarray  # indices into clips
    val: np.ndarray


@dataclass(frozen=True)
class EpochTotals:
    """What one process saw in one training epoch."""

    epoch: int  # 0-based
    loss_sum: float
    correct: int
    seen: int
    seconds: float


def label_clips(clips: Sequence[Clip], cfg: FinetuneConfig) -> LabelledClips:
    """Labels and the stratified split; DataError when there is nothing to learn from."""
    if not clips:
        raise DataError("asd finetune got no train clips; put them in DATA/<machine>/train/.")
    require_field(clips, "machine", "asd finetune")
    labels, classes = build_labels(clips, cfg.labels)
    if len(classes) < 2:
        raise DataError(
            f"Fine-tuning needs at least two classes, found only {classes}: point at a dataset "
            "with several machines or use --labels attribute."
        )
    train, val = split_train_val(labels, cfg.val_fraction, cfg.seed)
    return LabelledClips(tuple(clips), labels, classes, train, val)


def _as_training_data(
    data: TrainingData | Sequence[Clip],
    noise_clips: Sequence[Clip],
    cfg: FinetuneConfig,
) -> TrainingData:
    if not isinstance(data, TrainingData):
        if cfg.use_clean:
            raise ConfigError(
                "--use-clean needs the supplemental clips of each dataset root: use `asd finetune "
                "--use-clean`, then `asd embed --adapter RUN_DIR`."
            )
        data = TrainingData(clips=tuple(data), noise=tuple(noise_clips) if cfg.noise_mix else ())
    if cfg.noise_mix and not data.noise:
        raise DataError(
            "--noise-mix needs supplemental noise-only clips (names with `_noise_`) in "
            "<machine>/supplemental/, and none were found."
        )
    if cfg.use_clean and not data.n_clean:
        raise DataError(
            "--use-clean needs supplemental clean machine clips (names with `_machine_`) in "
            "<machine>/supplemental/, and none were found."
        )
    return data


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
    data = _as_training_data(data, noise_clips, cfg)
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
            totals = _train_epoch(trainer, clips, data.noise, cfg, epoch, progress, on_step, out_dir)
            history.append(_epoch_entry(trainer, totals, _held_out(trainer, clips, cfg)))
            if say:
                say(_format_entry(history[-1], cfg.epochs), highlight=False)
            _save_epoch(trainer, out_dir, {"key": key, "inputs": inputs}, history, cfg, epoch)
    if procs.is_main:
        record = _run_record(cfg, clips, data, loaded, trainer, history)
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


def _train_set(clips: LabelledClips, noise: Sequence[Clip], cfg: FinetuneConfig, epoch: int) -> Dataset:
    audio = AudioConfig(seconds=cfg.seconds, channel=cfg.channel)
    train: Dataset = ClipDataset([clips.clips[i] for i in clips.train], audio)
    if cfg.noise_mix:
        return NoiseMixDataset(train, ClipDataset(list(noise), audio), cfg.seed, epoch)
    return train


def _train_epoch(
    trainer: Trainer,
    clips: LabelledClips,
    noise: Sequence[Clip],
    cfg: FinetuneConfig,
    epoch: int,
    progress: Progress | None,
    on_step: StepHook | None,
    out_dir: Path,
) -> EpochTotals:
    """One pass over this process's batches of epoch ``epoch``."""
    procs = trainer.procs
    steps = len(epoch_batches(len(clips.train), cfg.batch_size, cfg.seed, 0, procs.rank, procs.world))
    batches = epoch_batches(len(clips.train), cfg.batch_size, cfg.seed, epoch, procs.rank, procs.world)
    loader = DataLoader(_train_set(clips, noise, cfg, epoch), batch_sampler=batches, num_workers=cfg.num_workers)
    train_y = torch.from_numpy(clips.labels[clips.train])
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, procs.rank))
    task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(batches), rate="") if progress else None
    t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
    trainer.forward.train()
    # LoRA dropout (and DataLoader worker seeds) draw from torch's global RNG: seeded per epoch
    with seeded_torch_rng(derive_seed(cfg.seed, epoch, procs.rank, 1), procs.device):
        for i, (wave, idx) in enumerate(loader):
            set_lr(trainer.optimizer, lr_at(epoch * steps + i, steps * cfg.epochs, cfg.lr, cfg.warmup_fraction))
            y = train_y[idx].to(procs.device)
            try:
                loss, ok = train_step(trainer, wave.to(procs.device), y, cfg, generator)
            except NonFiniteLoss as e:
                raise _diverged(
                    f"the loss became {e.args[0]} at epoch {epoch + 1}, step {i + 1}", epoch, out_dir
                ) from None
            loss_sum, correct, seen = loss_sum + loss * len(y), correct + ok, seen + len(y)
            if progress is not None and task is not None:
                rate = seen * procs.world / max(time.perf_counter() - t0, 1e-9)
                progress.update(
                    task, advance=1, rate=f"loss {loss_sum / seen:.3f} acc {correct / seen:.1%} {rate:.1f} clips/s"
                )
            if on_step is not None:
                on_step(epoch, i)
    return EpochTotals(epoch, loss_sum, correct, seen, time.perf_counter() - t0)


def _diverged(what: str, epoch: int, out_dir: Path) -> TrainingError:
    kept = (
        f"{out_dir / STATE_FILE} keeps the state after epoch {epoch} (--resume continues from it)"
        if epoch
        else "no epoch had finished, so no state was kept"
    )
    return TrainingError(
        f"Fine-tuning stopped: {what}; {kept}. Lower --lr (or --scale, --mixup) and start again with another --out."
    )


def _held_out(trainer: Trainer, clips: LabelledClips, cfg: FinetuneConfig) -> tuple[float, int, int]:
    """Loss sum, correct predictions and count on this process's share of the held-out clips."""
    mine = clips.val[trainer.procs.rank :: trainer.procs.world]
    audio = AudioConfig(seconds=cfg.seconds, channel=cfg.channel)
    loader = DataLoader(
        ClipDataset([clips.clips[i] for i in mine], audio), batch_size=cfg.batch_size, num_workers=cfg.num_workers
    )
    return evaluate(trainer, loader, torch.from_numpy(clips.labels[mine]), cfg)


def _epoch_entry(trainer: Trainer, totals: EpochTotals, held_out: tuple[float, int, int]) -> dict[str, Any]:
    """Train and held-out loss/accuracy of one epoch, summed over all processes."""
    loss, correct, seen, v_loss, v_correct, v_n = trainer.procs.sum(
        [totals.loss_sum, totals.correct, totals.seen, *held_out]
    )
    return {
        "epoch": totals.epoch + 1,
        "train_loss": loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "val_loss": v_loss / v_n if v_n else None,
        "val_accuracy": v_correct / v_n if v_n else None,
        "seconds": round(totals.seconds, 3),
        "clips_per_second": round(seen / max(totals.seconds, 1e-9), 3),
    }


def _save_epoch(
    trainer: Trainer,
    out_dir: Path,
    key: dict[str, Any],
    history: list[dict[str, Any]],
    cfg: FinetuneConfig,
    epoch: int,
) -> None:
    """The resume state after ``epoch`` (main process), unless a weight went non-finite."""
    if not trainable_weights_finite(trainer.model):
        raise _diverged(f"a weight became NaN or Inf during epoch {epoch + 1}", epoch, out_dir)
    if trainer.procs.is_main:
        scaler = trainer.scaler.state_dict() if trainer.scaler is not None else None
        save_state(
            out_dir,
            trainer.model,
            trainer.optimizer,
            {
                "epochs_done": epoch + 1,
                **key,  # the resume key and its inputs
                "history": history,
                "seed": cfg.seed,
                "scaler": scaler,
                "rng": "augmentation and dropout generators seeded from (seed, epoch, process) at every epoch start",
            },
        )
    trainer.procs.wait()


def _versions() -> dict[str, str]:
    return {
        "asdcli": __version__,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def _model_record(cfg: FinetuneConfig, trainer: Trainer) -> dict[str, Any]:
    head = trainer.model.head
    backbone = (
        {
            "kind": "full",
            "layer_decay": cfg.layer_decay,
            "backbone_mode": "every weight trained, eval mode (dropout and layerdrop off)",
        }
        if cfg.full_finetune
        else {
            "kind": "lora",
            "lora": {
                "rank": cfg.lora_rank,
                "alpha": cfg.lora_alpha,
                "dropout": cfg.lora_dropout,
                "targets": list(LORA_TARGETS),
            },
            "backbone_mode": "frozen, eval mode (dropout and layerdrop off); LoRA dropout on",
        }
    )
    return {
        "backbone_dim": head.in_dim,
        "hidden_dim": head.hidden_dim,
        "embedding_dim": head.embedding_dim,
        **backbone,
        "aam": {"margin": cfg.margin, "scale": cfg.scale, "subcentres": cfg.subcentres},
        "trainable_parameters": count_parameters(trainer.model, trainable_only=True),
        "default_embedding": "head",
    }


def _run_record(
    cfg: FinetuneConfig,
    clips: LabelledClips,
    data: TrainingData,
    loaded: Any,
    trainer: Trainer,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    n = len(clips.classes)
    return {
        "schema_version": RUN_SCHEMA,
        "kind": RUN_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "cfg": loaded.cfg},
        "labels": {
            "mode": cfg.labels,
            "classes": clips.classes,
            "train_counts": np.bincount(clips.labels[clips.train], minlength=n).tolist(),
            "val_counts": np.bincount(clips.labels[clips.val], minlength=n).tolist(),
        },
        "data": {
            "n_train": len(clips.train),
            "n_val": len(clips.val),
            "n_noise": len(data.noise),
            "n_clean": data.n_clean,
            "machines": sorted({c.machine for c in clips.clips}),
            "roots": [dict(r) for r in data.roots],
        },
        "model": _model_record(cfg, trainer),
        "optimizer": {
            "name": "Adam",
            "lr": cfg.lr,
            "schedule": "linear warm-up then cosine to 0",
            "warmup_fraction": cfg.warmup_fraction,
        },
        "seed": cfg.seed,
        "world_size": trainer.procs.world,
        "versions": _versions(),
        "history": history,
    }


def _format_entry(e: dict[str, Any], epochs: int) -> str:
    val = f", held-out loss {e['val_loss']:.3f} acc {e['val_accuracy']:.1%}" if e["val_loss"] is not None else ""
    return (
        f"epoch {e['epoch']}/{epochs}: loss {e['train_loss']:.3f} acc {e['train_accuracy']:.1%}{val} "
        f"({e['clips_per_second']:.1f} clips/s)"
    )
