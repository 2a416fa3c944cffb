"""The front end for windows: the job's :class:`~asdcli.frontend.embed.Embedder` (built once, the
same one `asd embed` uses) applied to batches of waves, and the EmbedConfig that reproduces a bank's
front end from the record it stores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from asdcli.backend.bank import Bank
from asdcli.errors import ConfigError
from asdcli.frontend.spec import spec_of

if TYPE_CHECKING:
    from asdcli.frontend.embed import EmbedConfig
    from asdcli.frontend.embed import Embedder as FrontendEmbedder


@dataclasses.dataclass(frozen=True)
class Embedder:
    """A built front end, applied to (B, N) waves rather than to clips."""

    frontend: FrontendEmbedder

    @property
    def meta(self) -> dict[str, Any]:
        return self.frontend.meta

    @property
    def channel(self) -> int | None:
        return self.frontend.spec.channel

    def embed(self, waves: np.ndarray) -> np.ndarray:
        """(B, N) float32 16 kHz waves in [-1, 1] -> (B, D) float32 embeddings."""
        from asdcli.frontend.features import beats_fbank

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.frontend.device)
            return self.frontend.module(beats_fbank(batch)).float().cpu().numpy()


def load_embedder(cfg: EmbedConfig) -> Embedder:
    """Build the front end of ``cfg`` once (checkpoint loaded and hashed once), in eval mode on its device."""
    from asdcli.frontend.embed import build_embedder

    return Embedder(build_embedder(cfg))


def bank_clip_seconds(bank: Bank) -> float | None:
    """The clip length in seconds the bank's training clips were cut to (None: natural length)."""
    spec = spec_of(bank.embedding_meta, f"The bank of {bank.name}") or {}
    seconds = spec.get("clip_seconds")
    return None if seconds is None else float(seconds)


def _meta_path(meta: dict[str, Any], key: str) -> Path | None:
    value = meta.get(key)
    return Path(value) if value else None


def bank_embed_config(bank: Bank, checkpoint: Path | None = None, adapter: Path | None = None,
                      device: str = "auto", batch_size: int = 8) -> EmbedConfig:  # fmt: skip
    """The EmbedConfig that embeds clips as the bank's training clips were (checkpoint, adapter,
    embedding kind, layers, clip length and channel from its front-end record); ``checkpoint``/
    ``adapter`` override, and a different front end is then caught by the front-end check."""
    from asdcli.frontend.embed import EMBEDDING_CHOICES, EmbedConfig

    meta = bank.embedding_meta
    spec = spec_of(meta, f"The bank of {bank.name}")
    if spec is None:
        raise ConfigError(f"The bank of {bank.name} does not record its front end; rebuild it with this asdcli.")
    ckpt = checkpoint or _meta_path(meta, "checkpoint_path")
    if ckpt is None:
        raise ConfigError(f"The bank of {bank.name} does not record its checkpoint; pass --checkpoint.")
    adapter = adapter or _meta_path(meta, "adapter_path")
    kind = meta.get("embedding") if adapter is not None and meta.get("embedding") in EMBEDDING_CHOICES else None
    return EmbedConfig(checkpoint=ckpt, adapter=adapter, embedding=kind, batch_size=batch_size, device=device,
                       seconds=spec.get("clip_seconds", 10.0), channel=spec.get("channel"),
                       layers=str(spec.get("layers", "last")))  # fmt: skip
