"""CUDA paths (deselected by default; run with `python -m pytest -m gpu` on a machine with a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asdcli.data.dataset import discover_clips
from asdcli.finetune.config import FinetuneConfig
from asdcli.finetune.loop import finetune
from asdcli.finetune.run_dir import read_run
from asdcli.frontend.embed import embed_clips
from asdcli.frontend.embedder import EmbedConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_embeddings_equal_cpu(synth_root: Path, tiny_checkpoint: Path) -> None:
    clips = discover_clips([synth_root / "fan" / "test"])
    cpu = embed_clips(clips, EmbedConfig(checkpoint=tiny_checkpoint, device="cpu", seconds=1.0))
    cuda = embed_clips(clips, EmbedConfig(checkpoint=tiny_checkpoint, device="cuda", seconds=1.0))
    # TF32 may be on for matmuls: allow its ~1e-3 relative error
    np.testing.assert_allclose(cuda.vectors, cpu.vectors, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_finetune_on_cuda(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, precision: str
) -> None:
    train = list(discover_clips([synth_root], splits={"train"}))
    cfg = FinetuneConfig(
        checkpoint=tiny_checkpoint, epochs=1, batch_size=8, seconds=1.0, device="cuda", mixed_precision=precision
    )
    run = read_run(finetune(train, cfg, tmp_path / precision))
    assert np.isfinite(run["history"][0]["train_loss"])
    emb = embed_clips(
        train[:4], EmbedConfig(checkpoint=tiny_checkpoint, adapter=tmp_path / precision, device="cuda", seconds=1.0)
    )
    assert emb.vectors.dtype == np.float32 and np.isfinite(emb.vectors).all()
