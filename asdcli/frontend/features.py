"""BEATs input features: a batched, Kaldi-compatible log-mel filterbank in plain torch.

Equals ``torchaudio.compliance.kaldi.fbank(x * 2**15, num_mel_bins=128, sample_frequency=16000,
frame_length=25, frame_shift=10)`` (dither 0, every other option at its default) for each row of a
batch, followed by the BEATs normalization ``(fbank - 15.41663) / (2 * 6.55582)``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

SAMPLE_RATE = 16000
INT16_SCALE = 32768.0  # BEATs scales [-1, 1] audio to the int16 range before the fbank
NUM_MEL_BINS = 128
WINDOW_SIZE = 400  # 25 ms at 16 kHz
HOP_SIZE = 160  # 10 ms at 16 kHz
FFT_SIZE = 512  # next power of two above the window
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
HIGH_FREQ = SAMPLE_RATE / 2
# Kaldi floors energies at float32 machine epsilon whatever the compute dtype: ln(eps) = -15.9424.
LOG_FLOOR_EPS = float(torch.finfo(torch.float32).eps)

# BEATs normalization: (fbank - mean) / (2 * std). The divisor is twice the std on purpose.
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582


def num_frames(num_samples: int) -> int:
    """Frames of a clip of ``num_samples`` samples (snip_edges: no padding at the ends)."""
    return 1 + (num_samples - WINDOW_SIZE) // HOP_SIZE


def _mel_scale(freq: Tensor) -> Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


@functools.lru_cache(maxsize=16)
def _constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Povey window (400,) and mel filterbank transposed with its Nyquist column, (257, 128).

    The bank is built in float32 in Kaldi/torchaudio's order of operations, then cast, so the
    fp64 path matches torchaudio's fp64 output bit for bit in the filter weights.
    """
    window = torch.hann_window(WINDOW_SIZE, periodic=False, dtype=dtype, device=device).pow(0.85)
    mel_low = 1127.0 * math.log(1.0 + LOW_FREQ / 700.0)
    mel_high = 1127.0 * math.log(1.0 + HIGH_FREQ / 700.0)
    delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    b = torch.arange(NUM_MEL_BINS).unsqueeze(1)
    left = mel_low + b * delta  # (128, 1) float32
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _mel_scale((SAMPLE_RATE / FFT_SIZE) * torch.arange(FFT_SIZE / 2)).unsqueeze(0)  # (1, 256)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (128, 256)
    banks = torch.nn.functional.pad(banks, (0, 1))  # Nyquist bin gets no weight -> (128, 257)
    return window, banks.to(device=device, dtype=dtype).T.contiguous()


def kaldi_fbank(wave: Tensor) -> Tensor:
    """Kaldi log-mel filterbank of a batch of 16 kHz waveforms already at int16 scale.

    Parameters
    ----------
    wave : Tensor
        (B, N) or (N,) float waveforms in the int16 range (i.e. already multiplied by 2**15),
        N >= 400. float64 input is computed in float64, anything else in float32.

    Returns
    -------
    Tensor
        (B, T, 128) (or (T, 128) for 1-D input) natural-log mel energies floored at ln(eps),
        T = 1 + (N - 400) // 160. Computed with autocast disabled.
    """
    squeeze = wave.dim() == 1
    x = wave.unsqueeze(0) if squeeze else wave
    if x.dim() != 2 or x.shape[-1] < WINDOW_SIZE:
        raise ValueError(f"kaldi_fbank needs (B, N) audio with N >= {WINDOW_SIZE} samples, got {tuple(wave.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        window, banks = _constants(x.device, dtype)
        frames = x.unfold(-1, WINDOW_SIZE, HOP_SIZE)  # (B, T, 400) view
        frames = frames - frames.mean(dim=-1, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate the first sample
        frames = (frames - PREEMPHASIS * prev) * window
        power = torch.fft.rfft(frames, n=FFT_SIZE).abs().pow(2.0)  # (B, T, 257)
        fbank = torch.matmul(power, banks).clamp_min(LOG_FLOOR_EPS).log()  # (B, T, 128)
    return fbank.squeeze(0) if squeeze else fbank


def normalize_fbank(fbank: Tensor) -> Tensor:
    """BEATs normalization of a log-mel fbank: (f - 15.41663) / (2 * 6.55582)."""
    return (fbank - FBANK_MEAN) / (2.0 * FBANK_STD)


def beats_fbank(wave: Tensor) -> Tensor:
    """Normalized BEATs input features of a batch of 16 kHz waveforms in [-1, 1].

    Parameters
    ----------
    wave : Tensor
        (B, N) float waveforms in [-1, 1] at 16 kHz (N >= 400), on any device.

    Returns
    -------
    Tensor
        (B, T, 128) float32 (float64 for float64 input), T = 1 + (N - 400) // 160
        (998 for a 10 s clip).
    """
    dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=wave.device.type, enabled=False):
        return normalize_fbank(kaldi_fbank(wave.to(dtype) * INT16_SCALE))
