"""One optimizer step and one evaluation pass, on one process or data-parallel.

Processes come from Accelerate's public ``PartialState`` (it reads what `accelerate launch` or
`torchrun` set and starts the process group); the model is wrapped in torch's own
DistributedDataParallel when there are several, mixed precision is ``torch.autocast`` with a
``GradScaler`` for fp16. Nothing here keeps state between runs, so one process may train several
times with other devices or precisions (tests, `asd run`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from asdcli.errors import ConfigError
from asdcli.finetune.augment import mixup, spec_augment
from asdcli.finetune.config import FinetuneConfig
from asdcli.finetune.head import aam_loss
from asdcli.finetune.model import FinetuneModel, param_groups
from asdcli.frontend.features import beats_fbank

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(Exception):
    """A training step's loss was NaN or Inf on at least one process (caught by the loop)."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def wait(self) -> None:
        if self.world > 1:
            dist.barrier()


def current_processes(device_option: str) -> Processes:
    """The processes of this launch; under several, each CUDA process takes its local GPU."""
    from accelerate import PartialState

    from asdcli.device import resolve_device

    device = resolve_device(device_option)
    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes > 1 and device.type == "cuda":
        device = torch.device("cuda", state.local_process_index)
    return Processes(rank=state.process_index, world=state.num_processes, device=device)


def check_precision(mode: str, device: torch.device) -> None:
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError(f"--mixed-precision fp16 needs a CUDA GPU, not {device}; use bf16 or no.")
    if mode == "bf16" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--mixed-precision bf16 is not available on {device}; use no.")


@dataclass(frozen=True)
class Trainer:
    """The objects one run trains with, built once."""

    model: FinetuneModel  # unwrapped
    forward: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    procs: Processes
    precision: str  # "no", "bf16" or "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.procs.device.type, dtype=dtype, enabled=dtype is not None)


def make_trainer(model: FinetuneModel, cfg: FinetuneConfig, procs: Processes, n_layers: int) -> Trainer:
    """Move ``model`` to the device, wrap it for data parallelism and build Adam over its
    trainable weights (groups for layer-wise lr decay)."""
    check_precision(cfg.mixed_precision, procs.device)
    model.to(procs.device)
    forward: nn.Module = model
    if procs.world > 1:
        ids = [procs.device.index] if procs.device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.Adam(param_groups(model, n_layers, cfg.layer_decay), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
    return Trainer(model, forward, optimizer, scaler, procs, cfg.mixed_precision)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _all_finite(loss: torch.Tensor, procs: Processes) -> bool:
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if procs.world > 1:  # every process must stop together, or the others wait in backward forever
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def train_step(
    trainer: Trainer,
    wave: torch.Tensor,
    labels: torch.Tensor,
    cfg: FinetuneConfig,
    generator: torch.Generator | None = None,
) -> tuple[float, int]:
    """One optimizer step on a batch of waves (B, N); returns (loss, correct predictions).

    ``generator`` (CPU) draws the SpecAugment masks and the mixup pairs. Raises NonFiniteLoss,
    before any weight changes, when the loss is NaN or Inf on any process.
    """
    with torch.autocast(device_type=wave.device.type, enabled=False):
        fbank = beats_fbank(wave.float())  # fp32, outside mixed precision
    partner, lam = labels, 1.0
    if cfg.specaugment:
        fbank = spec_augment(fbank, generator)
    if cfg.mixup > 0:
        fbank, partner, lam = mixup(fbank, labels, cfg.mixup, generator)
    with trainer.autocast():
        cos, _, _ = trainer.forward(fbank)
    loss = lam * aam_loss(cos, labels, cfg.margin, cfg.scale)
    if lam < 1.0:
        loss = loss + (1.0 - lam) * aam_loss(cos, partner, cfg.margin, cfg.scale)
    if not _all_finite(loss, trainer.procs):
        raise NonFiniteLoss(float(loss.detach()))
    if trainer.scaler is not None:
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    else:
        loss.backward()
        trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), int((cos.detach().argmax(1) == labels).sum())


@torch.no_grad()
def evaluate(trainer: Trainer, loader: DataLoader, labels: torch.Tensor, cfg: FinetuneConfig) -> tuple[float, int, int]:
    """Sum of AAM losses, correct predictions and clips over ``loader`` (eval mode, no margin for acc)."""
    trainer.model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for wave, idx in loader:
        wave, y = wave.to(trainer.procs.device), labels[idx].to(trainer.procs.device)
        fbank = beats_fbank(wave.float())
        with trainer.autocast():
            cos, _, _ = trainer.model(fbank)
        loss_sum += float(aam_loss(cos, y, cfg.margin, cfg.scale)) * len(y)
        correct += int((cos.argmax(1) == y).sum())
        n += len(y)
    return loss_sum, correct, n
