"""The fine-tuned model and its optimizer: backbone (LoRA-adapted or fully trained) -> mean pool
-> EmbeddingHead -> cosine classifier (AAM softmax, optionally with sub-centres).

The backbone runs in eval mode (no dropout, no layerdrop: it computes what `embed` computes);
LoRA dropout is active. Randomness of initialisation and dropout comes from torch's global RNG,
which is only ever seeded inside ``torch.random.fork_rng`` so the caller's RNG is left as it was.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from asdcli.finetune.config import FinetuneConfig
from asdcli.finetune.head import CosineClassifier, EmbeddingHead, mean_pool
from asdcli.finetune.lora import (
    inject_lora,
    make_lora_config,
    set_backbone_mode,
    trainable_named_parameters,
)

_LAYER = re.compile(r"^backbone\.(?:base_model\.model\.)?encoder\.layers\.(\d+)\.")


class FinetuneModel(nn.Module):
    """Backbone -> mean pool -> EmbeddingHead -> cosine classifier.

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


@contextlib.contextmanager
def seeded_torch_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU and ``device``'s CUDA RNG) seeded with ``seed``;
    the previous RNG state is restored afterwards."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(
    backbone: nn.Module, backbone_dim: int, n_classes: int, cfg: FinetuneConfig, lora: bool | None = None
) -> FinetuneModel:
    """The seeded model: LoRA injected into ``backbone`` (in place), or with ``cfg.full_finetune``
    (or ``lora=False``) every backbone weight trainable."""
    full = cfg.full_finetune if lora is None else not lora
    with seeded_torch_rng(cfg.seed):
        if full:
            backbone.requires_grad_(True)
        else:
            backbone = inject_lora(backbone, make_lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout))
        head = EmbeddingHead(backbone_dim, backbone_dim, cfg.embedding_dim)
        classifier = CosineClassifier(cfg.embedding_dim, n_classes, cfg.subcentres)
    return FinetuneModel(backbone, head, classifier)


def layer_depth(name: str, n_layers: int) -> int:
    """Depth of a FinetuneModel parameter for layer-wise lr decay: 0 for the patch embedding and
    everything below the first encoder layer, i + 1 for encoder layer i, n_layers + 1 for the head
    and the classifier."""
    if name.startswith(("head.", "classifier.")):
        return n_layers + 1
    match = _LAYER.match(name)
    return int(match.group(1)) + 1 if match else 0


def param_groups(model: FinetuneModel, n_layers: int, decay: float) -> list[dict[str, Any]]:
    """Adam parameter groups of the trainable weights, each with ``lr_scale`` =
    decay^(n_layers + 1 - depth); one group of scale 1 when ``decay`` is 1."""
    named = trainable_named_parameters(model)
    if decay == 1.0:
        return [{"params": [p for _, p in named], "lr_scale": 1.0}]
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, p in named:
        by_depth.setdefault(layer_depth(name, n_layers), []).append(p)
    return [{"params": ps, "lr_scale": decay ** (n_layers + 1 - d)} for d, ps in sorted(by_depth.items())]


def trainable_weights_finite(model: nn.Module) -> bool:
    """True when every trainable weight is finite (no NaN or Inf)."""
    return all(bool(torch.isfinite(p).all()) for _, p in trainable_named_parameters(model))
