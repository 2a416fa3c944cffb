"""Building the front end once per job: `asd embed` options, the BEATs (or adapter) module on its device."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asdcli.data.audio import SAMPLE_RATE, AudioConfig
from asdcli.device import resolve_device
from asdcli.errors import AsdError, ConfigError
from asdcli.frontend.beats import BEATs, LoadedBeats, load_beats, resolve_checkpoint
from asdcli.frontend.quantize import check_precision, for_precision
from asdcli.frontend.spec import SPEC_KEY, FrontendSpec, cfg_sha256
from asdcli.workers import is_workers, workers_rule

EMBEDDING_CHOICES = ("head", "pooled")
POOLING = "mean"  # over all tokens of each pooled layer


@dataclass(frozen=True)
class EmbedConfig:
    """Options of `asd embed`.

    checkpoint: official BEATs checkpoint (None: $ASD_CHECKPOINT or the default cache path);
    adapter: `asd finetune` run folder; embedding: "head" or "pooled" (needs adapter, default head);
    seconds: clips are cut/zero-padded to this length (None: natural length, batch size 1);
    channel: 0-based channel to keep (None: mean of channels); num_workers: DataLoader workers;
    layers: "last" or 1-based transformer layers whose token means are concatenated ("7,10").
    precision: fp32, or int8 (CPU only: frontend.quantize).
    """

    checkpoint: Path | None
    adapter: Path | None = None
    embedding: str | None = None
    batch_size: int | None = None  # None: auto_batch_size of the device
    device: str = "auto"
    seconds: float | None = 10.0
    channel: int | None = None
    num_workers: int = 0
    layers: str = "last"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not is_workers(self.num_workers):
            raise ConfigError(f"--workers must be {workers_rule()}, got {self.num_workers!r}.")
        if self.embedding is not None and self.embedding not in EMBEDDING_CHOICES:
            raise ConfigError(f"--embedding must be one of {', '.join(EMBEDDING_CHOICES)}, got {self.embedding!r}.")
        if self.embedding is not None and self.adapter is None:
            raise ConfigError("--embedding chooses a fine-tuned model's vector and needs --adapter RUN_DIR.")
        if parse_layers(self.layers) is not None and self.adapter is not None:
            raise ConfigError(
                "--layers is for the frozen BEATs (asd run: with --no-finetune); a fine-tuned adapter's vector "
                "uses the last layer."
            )
        _ = self.audio  # checks --seconds and --channel before any work

    @property
    def audio(self) -> AudioConfig:
        return AudioConfig(sample_rate=SAMPLE_RATE, seconds=self.seconds, channel=self.channel)


class MeanPooledBackbone(nn.Module):
    """Normalized fbank (B, T, 128) -> mean over tokens of the last layer, (B, D)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, fbank: Tensor) -> Tensor:
        return self.backbone(fbank).mean(dim=1)


class MeanPooledLayers(nn.Module):
    """Normalized fbank (B, T, 128) -> token means of the 1-based ``layers``, concatenated in the
    order given, (B, D * len(layers)); one pass that stops after the deepest listed layer."""

    def __init__(self, backbone: BEATs, layers: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.layers = backbone, tuple(layers)

    def forward(self, fbank: Tensor) -> Tensor:
        return torch.cat([x.mean(dim=1) for x in self.backbone.layer_features(fbank, self.layers)], dim=1)


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``"last"`` -> None; ``"7,10"`` -> (7, 10); anything else is a ConfigError."""
    if text.strip().lower() == "last":
        return None
    try:
        layers = tuple(int(t) for t in text.split(","))
    except ValueError:
        layers = ()
    if not layers or min(layers) < 1 or len(set(layers)) != len(layers):
        raise ConfigError(f"--layers must be 'last' or distinct layer numbers from 1 such as 7,10; got {text!r}.")
    return layers


@dataclass(frozen=True)
class Embedder:
    """A front end built once for a job: the fbank -> (B, D) module on its device, what it is
    (``spec``), and the descriptive meta written with every embedding it makes."""

    module: nn.Module
    device: torch.device
    spec: FrontendSpec
    meta: dict[str, Any]
    audio: AudioConfig
    batch_size: int = 8
    num_workers: int = 0

    @property
    def dim(self) -> int:
        return int(self.meta["embedding_dim"])


def _frozen_module(loaded: LoadedBeats, layers_text: str) -> tuple[nn.Module, str, int]:
    """The frozen module, the canonical layers text and the dimension."""
    layers = parse_layers(layers_text)
    n = len(loaded.model.encoder.layers)
    if layers is not None and max(layers) > n:
        raise ConfigError(f"--layers {layers_text}: {loaded.path} has {n} transformer layers (1..{n}).")
    if layers is None or (layers == (n,) and not loaded.model.cfg.layer_norm_first):
        return MeanPooledBackbone(loaded.model), "last", loaded.model.embed_dim
    return MeanPooledLayers(loaded.model, layers), ",".join(map(str, layers)), loaded.model.embed_dim * len(layers)


def checkpoint_for(cfg: EmbedConfig) -> Path:
    """--checkpoint; with only --adapter, the checkpoint its run.json records; else the default."""
    if cfg.checkpoint is None and cfg.adapter is not None:
        from asdcli.finetune.run_dir import recorded_checkpoint

        return recorded_checkpoint(Path(cfg.adapter))
    return resolve_checkpoint(cfg.checkpoint)


def auto_batch_size(device: torch.device, width: int = 768) -> int:
    """Clips per forward pass when --batch-size is not given: 2 on a CPU for a BEATs-size model
    (``width`` = encoder dimension >= 512), where bigger batches are slower (iter3 on 2 cores: batch 8
    takes 1.26x as long per clip as batch 2, its attention and gating tensors outgrow the caches);
    8 for a small model on a CPU (per-call overhead dominates: the demo's 64-d model embeds 3x
    faster at 8 than at 2) and on an accelerator."""
    return 2 if device.type == "cpu" and width >= 512 else 8


def front_end_files(
    checkpoint: str | Path | None, adapter: str | Path | None, onnx: str | Path | None = None
) -> list[Path]:
    """The files a front end is read from: the checkpoint (given, recorded by the adapter run, or
    the default), every file of the adapter run folder, an ONNX model. An output must never be one
    of them (see :func:`asdcli.artifacts.check_not_input`)."""
    files = [Path(p) for p in (checkpoint, onnx) if p is not None]
    if checkpoint is None and onnx is None:
        with contextlib.suppress(AsdError):  # a missing one fails later, with its own message
            files.append(
                checkpoint_for(EmbedConfig(checkpoint=None, adapter=Path(adapter) if adapter is not None else None))
            )
    if adapter is not None and Path(adapter).is_dir():
        files += [p for p in sorted(Path(adapter).rglob("*")) if p.is_file()]
    return files


def build_embedder(cfg: EmbedConfig, loaded: LoadedBeats | None = None) -> Embedder:
    """Load the checkpoint (hashed once), the adapter if any, and place the module on its device.

    ``loaded``: the checkpoint of ``cfg`` already loaded by the job (it must be that file)."""
    from asdcli.processes import process_state

    if loaded is None:
        loaded = load_beats(checkpoint_for(cfg))
    elif cfg.checkpoint is not None and Path(cfg.checkpoint).resolve() != loaded.path.resolve():
        raise ConfigError(f"The loaded checkpoint {loaded.path} is not --checkpoint {cfg.checkpoint}.")
    if cfg.adapter is None:
        module, layers, dim = _frozen_module(loaded, cfg.layers)
        meta: dict[str, Any] = {"adapter_id": None, "adapter_path": None, "embedding": "backbone", "embedding_dim": dim}
    else:
        from asdcli.finetune.run_dir import load_adapter_embedder  # fine-tune stack only when asked for

        module, adapter_meta = load_adapter_embedder(Path(cfg.adapter), loaded, cfg.embedding)
        meta, layers = dict(adapter_meta), "last"
    spec = FrontendSpec(
        checkpoint_sha256=loaded.sha256, backbone_cfg_sha256=cfg_sha256(loaded.cfg),
        adapter_sha256=meta["adapter_id"], embedding=str(meta["embedding"]), layers=layers, pooling=POOLING,
        clip_seconds=cfg.seconds, channel=cfg.channel, sample_rate=SAMPLE_RATE, precision=cfg.precision,
    )  # fmt: skip
    meta.update(
        {SPEC_KEY: spec.to_dict(), "checkpoint_path": os.fsdecode(loaded.path.resolve()), "backbone_cfg": loaded.cfg}
    )
    device = resolve_device(cfg.device)
    if device.type == "cuda" and process_state().num_processes > 1:
        from accelerate import PartialState  # launched: each process has its own GPU

        device = PartialState().device
    module = for_precision(module.to(device).eval(), cfg.precision, device)  # int8: quantized once per job
    width = int(loaded.model.cfg.encoder_embed_dim)
    batch_size = cfg.batch_size if cfg.batch_size is not None else auto_batch_size(device, width)
    return Embedder(module, device, spec, meta, cfg.audio, batch_size, cfg.num_workers)
