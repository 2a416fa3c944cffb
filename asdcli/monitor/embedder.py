"""The front end for windows: the job's :class:`~asdcli.frontend.embedder.Embedder` (built once, the
same one `asd embed` uses) applied to batches of waves; ``asdcli.backend.score.bank_embed_config``
gives the EmbedConfig of a bank's own front end.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from asdcli.backend.bank import Bank
from asdcli.frontend.spec import spec_of, window_record

if TYPE_CHECKING:
    from asdcli.frontend.embedder import EmbedConfig
    from asdcli.frontend.embedder import Embedder as FrontendEmbedder


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

    @property
    def batch_size(self) -> int:
        return self.frontend.batch_size

    def embed(self, waves: np.ndarray) -> np.ndarray:
        """(B, N) float32 16 kHz waves in [-1, 1] -> (B, D) float32 embeddings."""
        from asdcli.frontend.features import beats_fbank

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.frontend.device)
            return self.frontend.module(beats_fbank(batch)).float().cpu().numpy()


def load_embedder(cfg: EmbedConfig) -> Embedder:
    """Build the front end of ``cfg`` once (checkpoint loaded and hashed once), in eval mode on its device."""
    from asdcli.frontend.embedder import build_embedder

    return Embedder(build_embedder(cfg))


def bank_clip_seconds(bank: Bank) -> float | None:
    """The clip length in seconds the bank's training clips were cut to (None: natural length)."""
    spec = spec_of(bank.embedding_meta, f"The bank of {bank.name}") or {}
    seconds = spec.get("clip_seconds")
    return None if seconds is None else float(seconds)


def bank_windows(bank: Bank) -> tuple[float, float] | None:
    """The (window_s, hop_s) of the windows the bank was fitted on (None: whole clips)."""
    return window_record(bank.embedding_meta, f"The bank of {bank.name}")
