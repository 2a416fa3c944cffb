"""`asd finetune`: LoRA fine-tuning of BEATs as a machine-type classifier with AAM softmax.

Backbone frozen (LoRA on q/k/v only) and run in eval mode (no dropout, no layerdrop: it computes
what `embed` computes); LoRA dropout is active. Adam with linear warm-up then cosine decay.
Data-parallel through Hugging Face Accelerate; only the main process writes artifacts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import accelerate
import numpy as np
import peft
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset

from asdcli import __version__
from asdcli.finetune.run_dir import RUN_KIND, RUN_SCHEMA, RUN_FILE, write_run_artifacts
from asdcli.data.audio import AudioConfig, AudioWarning, ClipDataset, probe_clips
from asdcli.finetune.augment import NoiseMixDataset, mixup, spec_augment
from asdcli.console import make_progress, show_warnings
from asdcli.data.dataset import Clip, require_field
from asdcli.errors import ConfigError, DataError
from asdcli.frontend.features import beats_fbank
from asdcli.finetune.config import DEFAULT_RUN_DIR, LABEL_MODES, MIXED_PRECISION, FinetuneConfig, StepHook  # noqa: F401 (re-exported)
from asdcli.finetune.head import CosineClassifier, EmbeddingHead, aam_loss, mean_pool
from asdcli.finetune.lora import count_parameters, inject_lora, make_lora_config, set_backbone_mode, trainable_named_parameters
from asdcli.finetune.state import (
    STATE_FILE,
    derive_seed,
    epoch_batches,
    load_state,
    lr_at,
    restore_params,
    save_state,
    seed_everything,
)


def label_name(clip: Clip, mode: str) -> str:
    """Class name of a clip: its machine, or machine|attributes (machine alone without attributes)."""
    if mode == "attribute" and clip.attributes:
        return clip.machine + "|" + "_".join(f"{k}_{v}" if v else k for k, v in clip.attributes)
    return clip.machine


def build_labels(clips: Sequence[Clip], mode: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels (N,) int64 and the sorted class names they index."""
    names = [label_name(c, mode) for c in clips]
    classes = sorted(set(names))
    index = {n: i for i, n in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes


def split_train_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices: ``round(fraction * n)`` of each class held out, >= 1 kept."""
    rng = np.random.default_rng(derive_seed(seed, 7919))
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


class FinetuneModel(nn.Module):
    """LoRA-adapted backbone -> mean pool -> EmbeddingHead -> cosine classifier.

    ``forward(fbank (B, T, 128))`` returns (cos (B, C) fp32, embedding (B, E), pooled (B, D)).
    """

    def __init__(self, backbone: nn.Module, head: EmbeddingHead, classifier: CosineClassifier) -> None:
        super().__init__()
        self.backbone, self.head, self.classifier = backbone, head, classifier

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = mean_pool(self.backbone(fbank))
        emb = self.head(pooled)
        return self.classifier(emb), emb, pooled

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        set_backbone_mode(self.backbone, backbone_train=False)
        return self


def build_model(backbone: nn.Module, backbone_dim: int, n_classes: int, cfg: FinetuneConfig,
                lora: bool = True) -> FinetuneModel:
    """Seeded model: LoRA injected into ``backbone`` (in place) unless ``lora=False`` (then every
    backbone weight trains: full fine-tuning, used by the benchmark)."""
    seed_everything(cfg.seed)
    if lora:
        backbone = inject_lora(backbone, make_lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout))
    else:
        backbone.requires_grad_(True)
    head = EmbeddingHead(backbone_dim, backbone_dim, cfg.embedding_dim)
    return FinetuneModel(backbone, head, CosineClassifier(cfg.embedding_dim, n_classes))


def train_step(model: nn.Module, accelerator: Accelerator, optimizer: torch.optim.Optimizer, wave: torch.Tensor,
               labels: torch.Tensor, cfg: FinetuneConfig) -> tuple[float, int]:
    """One optimizer step on a batch of waves (B, N); returns (loss, correct predictions)."""
    with torch.autocast(device_type=wave.device.type, enabled=False):
        fbank = beats_fbank(wave.float())  # fp32, outside mixed precision
    partner, lam = labels, 1.0
    if cfg.specaugment:
        fbank = spec_augment(fbank)
    if cfg.mixup > 0:
        fbank, partner, lam = mixup(fbank, labels, cfg.mixup)
    with accelerator.autocast():
        cos, _, _ = model(fbank)
    loss = lam * aam_loss(cos, labels, cfg.margin, cfg.scale)
    if lam < 1.0:
        loss = loss + (1.0 - lam) * aam_loss(cos, partner, cfg.margin, cfg.scale)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), int((cos.detach().argmax(1) == labels).sum())


@torch.no_grad()
def evaluate(model: FinetuneModel, loader: DataLoader, labels: torch.Tensor, cfg: FinetuneConfig,
             accelerator: Accelerator) -> tuple[float, int, int]:
    """Sum of AAM losses, correct predictions and clips over ``loader`` (eval mode, no margin for acc)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for wave, idx in loader:
        wave, y = wave.to(accelerator.device), labels[idx].to(accelerator.device)
        fbank = beats_fbank(wave.float())
        with accelerator.autocast():
            cos, _, _ = model(fbank)
        loss_sum += float(aam_loss(cos, y, cfg.margin, cfg.scale)) * len(y)
        correct += int((cos.argmax(1) == y).sum())
        n += len(y)
    return loss_sum, correct, n


def _make_accelerator(cfg: FinetuneConfig) -> Accelerator:
    from asdcli.device import resolve_device

    device = resolve_device(cfg.device)
    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one state per process; a single process may change device or precision
        # between runs (tests, `asd run`), which accelerate refuses unless the state is reset.
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    except ValueError as e:
        raise ConfigError(f"--mixed-precision {cfg.mixed_precision} is not available on {device} ({e}).") from e


def _resume_key(cfg: FinetuneConfig, train_names: list[str], classes: list[str], sha256: str) -> str:
    """Hash of everything that must not change between a run and its resumption."""
    blob = json.dumps({"opts": cfg.key(), "train": train_names, "classes": classes, "sha256": sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _versions() -> dict[str, str]:
    return {"asdcli": __version__, "torch": torch.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    if not resume and ((out_dir / STATE_FILE).exists() or (out_dir / RUN_FILE).exists()):
        raise ConfigError(f"{out_dir} already holds a fine-tuning run; pass --resume to continue it "
                          "or choose another --out.")


def _loaders(clips: Sequence[Clip], tr: np.ndarray, va: np.ndarray, noise_clips: Sequence[Clip],
             cfg: FinetuneConfig, rank: int, world: int) -> tuple[Dataset, DataLoader]:
    audio = AudioConfig(seconds=cfg.seconds, channel=cfg.channel)
    train_ds: Dataset = ClipDataset([clips[i] for i in tr], audio)
    if cfg.noise_mix:
        if not noise_clips:
            raise DataError("--noise-mix needs supplemental noise-only clips (names with `_noise_`) in "
                            "<machine>/supplemental/, and none were found.")
        train_ds = NoiseMixDataset(train_ds, ClipDataset(list(noise_clips), audio), cfg.seed)
    mine = list(range(rank, len(va), world))
    val_batches = [mine[i:i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
    val_loader = DataLoader(ClipDataset([clips[i] for i in va], audio), batch_sampler=val_batches,
                            num_workers=cfg.num_workers)
    return train_ds, val_loader


def _run_record(cfg: FinetuneConfig, run: _Run, n_noise: int) -> dict[str, Any]:
    model, loaded, classes, labels, tr, va = run.model, run.loaded, run.classes, run.labels, run.tr, run.va
    head = model.head
    return {
        "schema_version": RUN_SCHEMA, "kind": RUN_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "cfg": loaded.cfg},
        "labels": {"mode": cfg.labels, "classes": classes,
                   "train_counts": np.bincount(labels[tr], minlength=len(classes)).tolist(),
                   "val_counts": np.bincount(labels[va], minlength=len(classes)).tolist()},
        "data": {"n_train": len(tr), "n_val": len(va), "n_noise": n_noise,
                 "machines": sorted({c.machine for c in run.clips})},
        "model": {"backbone_dim": head.in_dim, "hidden_dim": head.hidden_dim, "embedding_dim": head.embedding_dim,
                  "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                           "targets": ["q_proj", "k_proj", "v_proj"]},
                  "aam": {"margin": cfg.margin, "scale": cfg.scale},
                  "trainable_parameters": count_parameters(model, trainable_only=True),
                  "backbone_mode": "frozen, eval mode (dropout and layerdrop off); LoRA dropout on",
                  "default_embedding": "head"},
        "optimizer": {"name": "Adam", "lr": cfg.lr, "schedule": "linear warm-up then cosine to 0",
                      "warmup_fraction": cfg.warmup_fraction},
        "seed": cfg.seed, "world_size": run.accelerator.num_processes, "versions": _versions(),
        "history": run.history,
    }


def finetune(clips: Sequence[Clip], cfg: FinetuneConfig, out_dir: Path, *, noise_clips: Sequence[Clip] = (),
             resume: bool = False, console: Console | None = None, on_step: StepHook | None = None) -> Path:
    """Fine-tune BEATs with LoRA + AAM softmax on ``clips`` and write the run folder ``out_dir``.

    Parameters
    ----------
    clips : sequence of Clip
        Training clips (normally every train clip of every machine, both domains); each needs
        its machine (and, for ``labels="attribute"``, its attributes).
    cfg : FinetuneConfig
    out_dir : Path
        Run folder; gets adapter/, head.safetensors, run.json and state/.
    noise_clips : sequence of Clip
        Noise-only supplemental clips for ``cfg.noise_mix``.
    resume : bool
        Continue from ``out_dir/state`` after its last finished epoch (or start when there is
        none); a finished run is returned as it is. Without it an existing run is an error.
    console : rich Console, optional
        Where progress and per-epoch lines go (stderr); None = silent.
    on_step : callable(epoch, step), optional
        Called after every optimizer step (tests use it to simulate a crash).

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, resume)
    run = _prepare(list(clips), cfg, out_dir, noise_clips, resume)
    main = run.accelerator.is_main_process
    if run.start >= cfg.epochs and (out_dir / RUN_FILE).exists():
        if console is not None and main:
            console.print(f"{out_dir} already holds this finished run; nothing to do.")
        return out_dir
    if console is not None and main:
        console.print(f"Fine-tuning on {len(run.tr)} clips ({len(run.va)} held out), {len(run.classes)} classes, "
                      f"{count_parameters(run.model, True):,} trainable parameters, {run.accelerator.num_processes} "
                      f"process(es) on {run.accelerator.device}"
                      + (f", resuming after epoch {run.start}" if run.start else "") + ".")
    progress = make_progress(console) if console is not None and main else None
    shown = show_warnings(console, AudioWarning) if console is not None and main else contextlib.nullcontext()
    with shown, progress if progress is not None else contextlib.nullcontext():
        for epoch in range(run.start, cfg.epochs):
            entry = _train_epoch(run, cfg, epoch, progress, on_step)
            run.history.append(entry)
            if console is not None and main:
                console.print(_format_entry(entry, cfg.epochs), highlight=False)
            if main:
                scaler = run.accelerator.scaler.state_dict() if run.accelerator.scaler is not None else None
                save_state(out_dir, run.model, run.optimizer, {
                    "epochs_done": epoch + 1, "key": run.key, "history": run.history, "seed": cfg.seed,
                    "scaler": scaler, "rng": "reseeded from (seed, epoch, process) at every epoch start"})
            run.accelerator.wait_for_everyone()
    if main:
        record = _run_record(cfg, run, len(noise_clips) if cfg.noise_mix else 0)
        write_run_artifacts(out_dir, run.model.backbone, run.model.head, run.model.classifier.weight, record)
    run.accelerator.wait_for_everyone()
    return out_dir


@dataclass
class _Run:
    """Everything one training run holds between epochs."""

    accelerator: Accelerator
    model: FinetuneModel  # unwrapped
    ddp_model: nn.Module  # what accelerate.prepare returned (DDP under `accelerate launch`)
    optimizer: Any
    train_ds: Dataset
    val_loader: DataLoader
    clips: list[Clip]
    labels: np.ndarray
    classes: list[str]
    tr: np.ndarray
    va: np.ndarray
    loaded: Any
    key: str
    start: int
    history: list[dict[str, Any]]


def _prepare(clips: list[Clip], cfg: FinetuneConfig, out_dir: Path, noise_clips: Sequence[Clip],
             resume: bool) -> _Run:
    """Labels, split, checkpoint, model (+ resumed state), optimizer and data for a run."""
    from asdcli.frontend.beats import load_beats

    if not clips:
        raise DataError("asd finetune got no train clips; put them in DATA/<machine>/train/.")
    require_field(clips, "machine", "asd finetune")
    labels, classes = build_labels(clips, cfg.labels)
    if len(classes) < 2:
        raise DataError(f"Fine-tuning needs at least two classes, found only {classes}: point at a dataset "
                        "with several machines or use --labels attribute.")
    tr, va = split_train_val(labels, cfg.val_fraction, cfg.seed)
    probe_clips([*clips, *(noise_clips if cfg.noise_mix else ())], cfg.channel)  # fail before training
    loaded = load_beats(cfg.checkpoint)
    accelerator = _make_accelerator(cfg)
    key = _resume_key(cfg, [clips[i].name for i in tr], classes, loaded.sha256)
    state = load_state(out_dir) if resume else None
    if state is not None and state.record.get("key") != key:
        raise ConfigError(f"{out_dir / STATE_FILE} was made with other options, training clips or checkpoint; "
                          "re-run with the original options or choose another --out.")
    model = build_model(loaded.model, int(loaded.cfg["encoder_embed_dim"]), len(classes), cfg)
    if state is not None:
        restore_params(model, state.params, out_dir / STATE_FILE)
    ddp_model = accelerator.prepare(model)
    optimizer = torch.optim.Adam([p for _, p in trainable_named_parameters(model)], lr=cfg.lr)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
    optimizer = accelerator.prepare(optimizer)
    if state is not None and accelerator.scaler is not None and state.record.get("scaler"):
        accelerator.scaler.load_state_dict(state.record["scaler"])
    train_ds, val_loader = _loaders(clips, tr, va, noise_clips, cfg, accelerator.process_index,
                                    accelerator.num_processes)
    return _Run(accelerator, model, ddp_model, optimizer, train_ds, val_loader, clips, labels, classes, tr, va,
                loaded, key, state.epochs_done if state is not None else 0,
                list(state.record["history"]) if state is not None else [])


def _train_epoch(run: _Run, cfg: FinetuneConfig, epoch: int, progress: Progress | None,
                 on_step: StepHook | None) -> dict[str, Any]:
    """One pass over this process's batches, then the held-out evaluation; returns the history entry."""
    acc, rank, world = run.accelerator, run.accelerator.process_index, run.accelerator.num_processes
    seed_everything(derive_seed(cfg.seed, epoch, rank))
    if isinstance(run.train_ds, NoiseMixDataset):
        run.train_ds.epoch = epoch
    steps = len(epoch_batches(len(run.tr), cfg.batch_size, cfg.seed, 0, rank, world))
    batches = epoch_batches(len(run.tr), cfg.batch_size, cfg.seed, epoch, rank, world)
    loader = DataLoader(run.train_ds, batch_sampler=batches, num_workers=cfg.num_workers)
    train_y = torch.from_numpy(run.labels[run.tr])
    task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(batches), rate="") if progress else None
    t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
    run.ddp_model.train()
    for i, (wave, idx) in enumerate(loader):
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(epoch * steps + i, steps * cfg.epochs, cfg.lr, cfg.warmup_fraction)
        y = train_y[idx].to(acc.device)
        loss, ok = train_step(run.ddp_model, acc, run.optimizer, wave.to(acc.device), y, cfg)
        loss_sum, correct, seen = loss_sum + loss * len(y), correct + ok, seen + len(y)
        if progress is not None and task is not None:
            rate = seen * world / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, advance=1,
                            rate=f"loss {loss_sum / seen:.3f} acc {correct / seen:.1%} {rate:.1f} clips/s")
        if on_step is not None:
            on_step(epoch, i)
    val_y = torch.from_numpy(run.labels[run.va])
    return _epoch_summary(acc, run.model, run.val_loader, val_y, cfg, epoch, loss_sum, correct, seen, t0)


def _epoch_summary(accelerator: Accelerator, model: FinetuneModel, val_loader: DataLoader, val_y: torch.Tensor,
                   cfg: FinetuneConfig, epoch: int, loss_sum: float, correct: int, seen: int,
                   t0: float) -> dict[str, Any]:
    """Train and held-out loss/accuracy of one epoch, summed over all processes."""
    v_loss, v_correct, v_n = evaluate(model, val_loader, val_y, cfg, accelerator)
    totals = torch.tensor([loss_sum, correct, seen, v_loss, v_correct, v_n], dtype=torch.float64,
                          device=accelerator.device)
    t = accelerator.reduce(totals, reduction="sum").tolist()
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "train_loss": t[0] / max(t[2], 1), "train_accuracy": t[1] / max(t[2], 1),
        "val_loss": t[3] / t[5] if t[5] else None, "val_accuracy": t[4] / t[5] if t[5] else None,
        "seconds": round(seconds, 3), "clips_per_second": round(t[2] / max(seconds, 1e-9), 3),
    }


def _format_entry(e: dict[str, Any], epochs: int) -> str:
    val = f", held-out loss {e['val_loss']:.3f} acc {e['val_accuracy']:.1%}" if e["val_loss"] is not None else ""
    return (f"epoch {e['epoch']}/{epochs}: loss {e['train_loss']:.3f} acc {e['train_accuracy']:.1%}{val} "
            f"({e['clips_per_second']:.1f} clips/s)")
