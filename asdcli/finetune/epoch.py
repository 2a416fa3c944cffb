"""One fine-tuning epoch: its training pass, held-out evaluation, history entry and the state saved after it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from asdcli.data.audio import AudioConfig, ClipDataset
from asdcli.data.names import Clip
from asdcli.errors import TrainingError
from asdcli.finetune.augment import NoiseMixDataset
from asdcli.finetune.config import FinetuneConfig, StepHook
from asdcli.finetune.labels import LabelledClips
from asdcli.finetune.model import seeded_torch_rng, trainable_weights_finite
from asdcli.finetune.state import STATE_FILE, derive_seed, epoch_batches, lr_at, save_state
from asdcli.finetune.trainer import NonFiniteLoss, Trainer, evaluate, set_lr, train_step


@dataclass(frozen=True)
class EpochTotals:
    """What one process saw in one training epoch."""

    epoch: int  # 0-based
    loss_sum: float
    correct: int
    seen: int
    seconds: float


def _train_set(clips: LabelledClips, noise: Sequence[Clip], cfg: FinetuneConfig, epoch: int) -> Dataset:
    audio = AudioConfig(seconds=cfg.seconds, channel=cfg.channel)
    train: Dataset = ClipDataset([clips.clips[i] for i in clips.train], audio)
    if cfg.noise_mix:
        return NoiseMixDataset(train, ClipDataset(list(noise), audio), cfg.seed, epoch)
    return train


def train_epoch(
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


def evaluate_held_out(trainer: Trainer, clips: LabelledClips, cfg: FinetuneConfig) -> tuple[float, int, int]:
    """Loss sum, correct predictions and count on this process's share of the held-out clips."""
    mine = clips.val[trainer.procs.rank :: trainer.procs.world]
    audio = AudioConfig(seconds=cfg.seconds, channel=cfg.channel)
    loader = DataLoader(
        ClipDataset([clips.clips[i] for i in mine], audio), batch_size=cfg.batch_size, num_workers=cfg.num_workers
    )
    return evaluate(trainer, loader, torch.from_numpy(clips.labels[mine]), cfg)


def epoch_entry(trainer: Trainer, totals: EpochTotals, held_out: tuple[float, int, int]) -> dict[str, Any]:
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


def save_epoch(
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


def format_entry(e: dict[str, Any], epochs: int) -> str:
    val = f", held-out loss {e['val_loss']:.3f} acc {e['val_accuracy']:.1%}" if e["val_loss"] is not None else ""
    return (
        f"epoch {e['epoch']}/{epochs}: loss {e['train_loss']:.3f} acc {e['train_accuracy']:.1%}{val} "
        f"({e['clips_per_second']:.1f} clips/s)"
    )
