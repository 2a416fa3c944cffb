"""Classifier head for fine-tuning: mean pooling -> two dense layers -> embedding -> AAM softmax.

The embedding (output of the second dense layer) is what `asd embed --adapter` returns by default.
The additive angular margin (AAM, ArcFace) softmax scores class c by s*cos(theta_c) and the target
class by s*cos(theta_y + m), with theta the angle between the embedding and the class weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MARGIN = 0.2
DEFAULT_SCALE = 30.0
# Keeps sqrt(1 - cos^2) away from 0, where its gradient is infinite (cos = +-1 exactly).
_SIN_EPS = 1e-7


def mean_pool(tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the token axis: (B, L, D) -> (B, D)."""
    return tokens.mean(dim=1)


class EmbeddingHead(nn.Module):
    """Pooled backbone features (B, D) -> embedding (B, E) through two dense layers.

    Linear(D, H) -> GELU -> Linear(H, E). The embedding is not normalised here: the AAM classifier
    and the cosine-distance back-end both normalise it themselves.
    """

    def __init__(self, in_dim: int, hidden_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.in_dim, self.hidden_dim, self.embedding_dim = in_dim, hidden_dim, embedding_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, embedding_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(pooled)))


class CosineClassifier(nn.Module):
    """Cosine similarity between embeddings (B, E) and each class -> (B, C), fp32.

    With ``subcentres`` K > 1 (sub-centre ArcFace) each class has K weight vectors, rows
    ``c*K .. c*K + K-1`` of ``weight`` (C*K, E), and its cosine is the largest of its K; the AAM
    margin then acts on that one. K = 1 is the plain cosine classifier. Computed in fp32 even
    under autocast, so the margin and the scale act on accurate cosines.
    """

    def __init__(self, embedding_dim: int, n_classes: int, subcentres: int = 1) -> None:
        super().__init__()
        self.n_classes, self.subcentres = n_classes, subcentres
        self.weight = nn.Parameter(torch.empty(n_classes * subcentres, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        device_type = emb.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            e = F.normalize(emb.float(), dim=-1)
            w = F.normalize(self.weight.float(), dim=-1)
            cos = (e @ w.T).clamp(-1.0, 1.0)  # (B, C*K)
            if self.subcentres == 1:
                return cos
            return cos.view(-1, self.n_classes, self.subcentres).amax(dim=-1)  # (B, C)


def aam_logits(
    cos: torch.Tensor, labels: torch.Tensor, margin: float = DEFAULT_MARGIN, scale: float = DEFAULT_SCALE
) -> torch.Tensor:
    """AAM-softmax logits from cosines.

    Parameters
    ----------
    cos : Tensor (B, C) float
        Cosine between each embedding and each class weight, in [-1, 1].
    labels : Tensor (B,) int64
        Target class of each row.
    margin, scale : float
        Additive angular margin m (radians) and scale s.

    Returns
    -------
    Tensor (B, C) float32
        ``s*cos(theta)`` for non-target classes, ``s*cos(theta + m)`` for the target class, with
        cos(theta + m) = cos*cos(m) - sin*sin(m). Where theta + m would pass pi (the function would
        stop decreasing), the target logit uses ``cos - m*sin(m)`` instead (the usual ArcFace
        fallback), so the loss keeps pushing the angle down. Finite gradients for every input.
    """
    cos = cos.float().clamp(-1.0, 1.0)
    target_cos = cos.gather(1, labels.view(-1, 1))  # (B, 1)
    sin = torch.sqrt((1.0 - target_cos * target_cos).clamp_min(_SIN_EPS))
    with_margin = target_cos * math.cos(margin) - sin * math.sin(margin)
    fallback = target_cos - margin * math.sin(margin)
    with_margin = torch.where(target_cos > math.cos(math.pi - margin), with_margin, fallback)
    logits = cos.scatter(1, labels.view(-1, 1), with_margin)
    return logits * scale


def aam_loss(
    cos: torch.Tensor, labels: torch.Tensor, margin: float = DEFAULT_MARGIN, scale: float = DEFAULT_SCALE
) -> torch.Tensor:
    """Mean cross-entropy of the AAM-softmax logits: cos (B, C), labels (B,) -> scalar."""
    return F.cross_entropy(aam_logits(cos, labels, margin, scale), labels)
