"""Augmentations of `asd finetune`: SpecAugment, mixup, noise mixing at an SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asdcli.finetune.augment import NoiseMixDataset, mix_at_snr, mixup, spec_augment


def test_spec_augment_masks_bands_with_the_clip_mean() -> None:
    fbank = torch.randn(4, 100, 128, generator=torch.Generator().manual_seed(0))
    out = spec_augment(fbank, torch.Generator().manual_seed(1))
    assert out.shape == fbank.shape and not torch.equal(out, fbank)
    changed = out != fbank
    means = fbank.mean(dim=(1, 2))
    for b in range(4):
        assert torch.allclose(out[b][changed[b]], means[b].expand(int(changed[b].sum())))
        assert changed[b].float().mean() < 0.5  # at most 2x10% of frames and 2x16 of 128 bins


def test_mixup_mixes_pairs_and_keeps_the_dominant_label() -> None:
    x, y = torch.randn(6, 10, 128, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    mixed, partner, lam = mixup(x, y, alpha=0.4, generator=torch.Generator().manual_seed(1))
    assert 0.5 <= lam <= 1.0
    perm = partner  # labels are the indices here
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])


def test_mix_at_snr_hits_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    noise = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    mixed = mix_at_snr(wave, noise, 10.0)
    added = mixed.astype(np.float64) - wave
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(added**2))
    assert snr == pytest.approx(10.0, abs=0.01)
    assert np.array_equal(mix_at_snr(wave, np.zeros_like(noise), 5.0), wave)


class _Const(torch.utils.data.Dataset):
    def __init__(self, n: int, value: float) -> None:
        self.n, self.value = n, value

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1600,), self.value) * torch.sin(torch.arange(1600.0) + i), i


def test_noise_mix_is_a_function_of_seed_epoch_and_index() -> None:
    ds = NoiseMixDataset(_Const(20, 0.1), _Const(3, 0.5), seed=1, epoch=0)
    first = [ds[i][0] for i in range(20)]
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))
    clean = _Const(20, 0.1)
    n_mixed = sum(not torch.equal(first[i], clean[i][0]) for i in range(20))
    assert 3 <= n_mixed <= 17  # about half
    later = NoiseMixDataset(_Const(20, 0.1), _Const(3, 0.5), seed=1, epoch=1)
    assert any(not torch.equal(first[i], later[i][0]) for i in range(20))


def test_augmentations_draw_only_from_their_generator() -> None:
    """Same generator seed, same masks and mixup; torch's global RNG is neither used nor moved."""
    fbank, y = torch.randn(6, 50, 128, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    global_state = torch.get_rng_state()
    a = spec_augment(fbank, torch.Generator().manual_seed(3))
    b = spec_augment(fbank, torch.Generator().manual_seed(3))
    ma, pa, la = mixup(fbank, y, 0.4, torch.Generator().manual_seed(3))
    mb, pb, lb = mixup(fbank, y, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(a, b) and torch.equal(ma, mb) and torch.equal(pa, pb) and la == lb
    assert not torch.equal(a, spec_augment(fbank, torch.Generator().manual_seed(4)))
