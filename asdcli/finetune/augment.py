"""Training-time augmentations: SpecAugment masks, mixup, and noise-only clips mixed in at an SNR.

All randomness comes from explicit generators: the training loop makes one ``torch.Generator``
per (seed, epoch, process) for SpecAugment and mixup, and the noise mix draws from a numpy
generator of (seed, epoch, clip index), so a resumed run repeats the same augmentations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

SPEC_TIME_MASKS = 2
SPEC_TIME_WIDTH = 0.1  # at most this fraction of the frames per mask
SPEC_FREQ_MASKS = 2
SPEC_FREQ_WIDTH = 16  # at most this many of the 128 mel bins per mask
NOISE_MIX_PROB = 0.5
NOISE_SNR_DB = (5.0, 20.0)


def spec_augment(fbank: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask random time and mel bands of each clip with that clip's mean (out of place).

    Parameters
    ----------
    fbank : Tensor (B, T, F) float32
        Normalised fbank.

    Returns
    -------
    Tensor (B, T, F), the same dtype.
    """
    b, t, f = fbank.shape
    keep = torch.ones(b, t, f, dtype=torch.bool, device=fbank.device)
    for axis, n_masks, width in (
        (1, SPEC_TIME_MASKS, max(1, int(t * SPEC_TIME_WIDTH))),
        (2, SPEC_FREQ_MASKS, SPEC_FREQ_WIDTH),
    ):
        size = t if axis == 1 else f
        for _ in range(n_masks):
            w = torch.randint(0, width + 1, (b,), generator=generator)
            start = (torch.rand(b, generator=generator) * (size - w + 1)).long()
            pos = torch.arange(size)
            band = ((pos[None, :] >= start[:, None]) & (pos[None, :] < (start + w)[:, None])).to(fbank.device)
            keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
    fill = fbank.mean(dim=(1, 2), keepdim=True)
    return torch.where(keep, fbank, fill)


def mixup(
    fbank: torch.Tensor, labels: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each clip with another of the batch: lam*x + (1-lam)*x[perm], lam ~ Beta(alpha, alpha).

    ``generator`` (CPU) gives the permutation and the seed of the Beta draw (torch's Beta sampler
    takes no generator). Returns the mixed fbank (B, T, F), the partner labels (B,) and lam
    (>= 0.5, so ``labels`` stays the dominant class). The loss is
    lam*CE(labels) + (1-lam)*CE(partner labels).
    """
    beta_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(beta_seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(fbank.shape[0], generator=generator).to(fbank.device)
    return lam * fbank + (1.0 - lam) * fbank[perm], labels.to(fbank.device)[perm], lam


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` (N,) to ``wave`` (N,) scaled to the given SNR in dB; float32, clipped to [-1, 1]."""
    p_sig = float(np.mean(wave.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_noise <= 0.0 or p_sig <= 0.0:
        return wave.astype(np.float32)
    gain = math.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
    return np.clip(wave + gain * noise, -1.0, 1.0).astype(np.float32)


class NoiseMixDataset(Dataset):
    """Wraps a ClipDataset: with probability NOISE_MIX_PROB a clip gets a random noise-only clip
    added at an SNR drawn uniformly from NOISE_SNR_DB. The draw depends only on (seed, epoch, index),
    so it is the same whatever worker loads the clip and after a resume. One per epoch."""

    def __init__(self, base: Dataset, noise: Dataset, seed: int, epoch: int) -> None:
        self.base, self.noise, self.seed, self.epoch = base, noise, seed, epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        wave, index = self.base[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if rng.random() >= NOISE_MIX_PROB:
            return wave, index
        noise, _ = self.noise[int(rng.integers(len(self.noise)))]  # type: ignore[arg-type]
        mixed = mix_at_snr(np.asarray(wave), np.asarray(noise), float(rng.uniform(*NOISE_SNR_DB)))
        return torch.from_numpy(mixed), index
