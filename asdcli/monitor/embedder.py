"""The front end as a resource built once per job: waves (B, N) -> embeddings (B, D).

Built from an :class:`~asdcli.frontend.embed.EmbedConfig` with the same pieces `asd embed` uses
(``load_beats``, ``build_embedder``, ``beats_fbank``), so a window embeds exactly as a clip of that
length would; ``meta`` holds the front-end fields `asd embed` records, for the bank checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from asdcli.backend.bank import Bank
from asdcli.data.audio import SAMPLE_RATE
from asdcli.errors import ConfigError

if TYPE_CHECKING:
    from asdcli.frontend.embed import EmbedConfig


@dataclass(frozen=True)
class Embedder:
    """A loaded embedding module on its device, and the meta of the embeddings it makes."""

    module: nn.Module
    device: torch.device
    meta: dict[str, Any]

    def embed(self, waves: np.ndarray) -> np.ndarray:
        """(B, N) float32 16 kHz waves in [-1, 1] -> (B, D) float32 embeddings."""
        from asdcli.frontend.features import beats_fbank

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
            return self.module(beats_fbank(batch)).float().cpu().numpy()


def load_embedder(cfg: EmbedConfig) -> Embedder:
    """Load BEATs (and the adapter) of ``cfg`` (an EmbedConfig) once, in eval mode on its device."""
    from asdcli.device import resolve_device
    from asdcli.frontend.beats import load_beats, resolve_checkpoint
    from asdcli.frontend.embed import FRONTEND, POOLING, build_embedder

    loaded = load_beats(resolve_checkpoint(cfg.checkpoint))
    module, meta = build_embedder(loaded, cfg)
    device = resolve_device(cfg.device)
    meta.update(checkpoint_sha256=loaded.sha256, checkpoint_path=str(loaded.path), backbone_cfg=loaded.cfg,
                pooling=POOLING, frontend=FRONTEND, clip_seconds=cfg.seconds, sample_rate=SAMPLE_RATE,
                channel=cfg.channel)  # fmt: skip
    return Embedder(module.to(device).eval(), device, meta)


def _meta_path(meta: dict[str, Any], key: str) -> Path | None:
    value = meta.get(key)
    return Path(value) if value else None


def bank_embed_config(bank: Bank, checkpoint: Path | None = None, adapter: Path | None = None,
                      device: str = "auto", batch_size: int = 8) -> EmbedConfig:  # fmt: skip
    """The EmbedConfig that embeds clips as the bank's training clips were (checkpoint, adapter,
    embedding kind, clip length and channel from its meta); ``checkpoint``/``adapter`` override,
    and a different front end is then caught by the meta check before scoring."""
    from asdcli.frontend.embed import EMBEDDING_CHOICES, EmbedConfig

    meta = bank.embedding_meta
    ckpt = checkpoint or _meta_path(meta, "checkpoint_path")
    if ckpt is None:
        raise ConfigError(f"The bank of {bank.name} does not record its checkpoint; pass --checkpoint.")
    adapter = adapter or _meta_path(meta, "adapter_path")
    kind = meta.get("embedding") if adapter is not None and meta.get("embedding") in EMBEDDING_CHOICES else None
    return EmbedConfig(checkpoint=ckpt, adapter=adapter, embedding=kind, batch_size=batch_size, device=device,
                       seconds=meta.get("clip_seconds", 10.0), channel=meta.get("channel"))  # fmt: skip
