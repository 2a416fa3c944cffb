"""Head and AAM softmax: shapes, a hand computation of the margin logits, safe gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asdcli.finetune.head import CosineClassifier, EmbeddingHead, aam_logits, aam_loss, mean_pool


def test_aam_logits_match_hand_computation() -> None:
    cos = torch.tensor([[0.8, 0.1, -0.3], [0.2, 0.5, 0.9]])
    labels = torch.tensor([0, 2])
    m, s = 0.2, 30.0
    logits = aam_logits(cos, labels, margin=m, scale=s)
    expected = [
        [s * math.cos(math.acos(0.8) + m), s * 0.1, s * -0.3],
        [s * 0.2, s * 0.5, s * math.cos(math.acos(0.9) + m)],
    ]
    torch.testing.assert_close(logits, torch.tensor(expected), rtol=0, atol=1e-4)
    # cross-entropy of those logits, computed by hand
    row0 = expected[0]
    ce0 = -row0[0] + math.log(sum(math.exp(v) for v in row0))
    row1 = expected[1]
    ce1 = -row1[2] + math.log(sum(math.exp(v) for v in row1))
    assert float(aam_loss(cos, labels, m, s)) == pytest.approx((ce0 + ce1) / 2, abs=1e-4)


def test_margin_zero_is_plain_scaled_cosine_softmax() -> None:
    cos = torch.rand(5, 4) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(aam_logits(cos, labels, margin=0.0, scale=10.0), 10.0 * cos)


def test_margin_makes_the_target_harder() -> None:
    cos = torch.rand(16, 3) * 2 - 1
    labels = torch.randint(0, 3, (16,))
    with_margin = aam_logits(cos, labels, 0.2, 1.0).gather(1, labels[:, None])
    assert torch.all(with_margin < cos.gather(1, labels[:, None]))


def test_target_logit_keeps_decreasing_past_pi() -> None:
    # theta + m > pi: the fallback keeps the target logit monotonic in cos
    cos = torch.linspace(-1.0, 1.0, 401)[:, None].repeat(1, 2)
    logits = aam_logits(cos, torch.zeros(401, dtype=torch.long), 0.2, 1.0)[:, 0]
    assert torch.all(logits[1:] >= logits[:-1])


def test_gradients_finite_at_cos_plus_minus_one() -> None:
    cos = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    loss = aam_loss(cos, torch.tensor([0, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all()


def test_head_and_classifier_shapes() -> None:
    tokens = torch.randn(3, 48, 64)
    head = EmbeddingHead(64, 64, 16)
    emb = head(mean_pool(tokens))
    assert emb.shape == (3, 16)
    clf = CosineClassifier(16, 5)
    cos = clf(emb)
    assert cos.shape == (3, 5) and cos.dtype == torch.float32
    expected = F.normalize(emb, dim=-1) @ F.normalize(clf.weight, dim=-1).T
    torch.testing.assert_close(cos, expected)


def test_classifier_stays_fp32_under_autocast() -> None:
    clf = CosineClassifier(8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos = clf(torch.randn(2, 8).bfloat16())
    assert cos.dtype == torch.float32
