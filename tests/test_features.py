"""Kaldi fbank parity: torchaudio golden outputs, the BEATs fixture, and pinned values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from asdcli.frontend.features import FBANK_MEAN, FBANK_STD, beats_fbank, kaldi_fbank, num_frames

DATA = Path(__file__).parent / "data"
FLOOR = float(np.log(np.float32(np.finfo(np.float32).eps)))  # -15.9424


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_fbank_golden", DATA / "make_fbank_golden.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden():
    mod = _golden_module()
    with np.load(DATA / "fbank_golden.npz") as z:
        stored = {k: z[k] for k in z.files}
    return mod.make_signals(), stored, int(stored["frame_stride"])


# Where the comparison is meaningful. A rounding error of an FFT is relative to the energy of the
# whole frame, not to one bin: a pure tone's far side lobes sit at float noise level, and their
# log differs between FFT code paths (MKL on AVX-512, pocketfft, ...) by whole units while carrying
# no information. So we compare (1) the mel powers with an absolute error relative to the frame's
# total mel power, in every bin, and (2) the log-mel values tightly where a bin holds at least
# MEANINGFUL of its frame's power: there a power error of tol * E is a log error <= tol / MEANINGFUL.
MEANINGFUL = 1e-3
# Bounds on |P_ours - P_exact| / E: the 512-point FFT's rounding grows like eps * log2(512) times a
# small constant; 2**12 * eps64 and 2**7 * eps32 leave a wide margin over that on every CPU.
FRAME_TOL = {np.float64: 2.0**12 * np.finfo(np.float64).eps, np.float32: 2.0**7 * np.finfo(np.float32).eps}


def _assert_fbank_close(ours: np.ndarray, exact: np.ndarray, tol: float, name: str) -> None:
    """``ours`` and ``exact`` are (T, 128) log-mel; fail if they differ where the power is meaningful."""
    power, power_exact = np.exp(ours.astype(np.float64)), np.exp(exact.astype(np.float64))
    frame = power_exact.sum(axis=1, keepdims=True)  # (T, 1) total mel power of each frame
    rel = np.abs(power - power_exact) / frame
    assert rel.max() <= tol, (name, "power error / frame power", rel.max(), tol)
    meaningful = power_exact >= MEANINGFUL * frame
    log_err = np.abs(ours.astype(np.float64) - exact)[meaningful]
    assert log_err.size == 0 or log_err.max() <= tol / MEANINGFUL, (name, "log-mel error", log_err.max())
    if tol >= FRAME_TOL[np.float32]:  # the spec's fp32 mean bound (a float32's half-ulp at 16 is 1e-6)
        assert log_err.size == 0 or log_err.mean() < 1e-5, (name, "mean log-mel error", log_err.mean())


def _log_mel(normalized: np.ndarray) -> np.ndarray:
    """Undo the BEATs normalization: the natural-log mel energies the bounds above are about."""
    return normalized.astype(np.float64) * 2 * FBANK_STD + FBANK_MEAN


def test_golden_fp64_matches_torchaudio(golden):
    signals, stored, stride = golden
    for name, x in signals.items():
        ours = kaldi_fbank(torch.from_numpy(x)[None] * 32768.0)[0, ::stride].numpy()
        ref = stored[f"{name}/f64"]
        assert ours.shape == ref.shape and ours.dtype == np.float64, name
        _assert_fbank_close(ours, ref, FRAME_TOL[np.float64], name)  # log error <= 1e-9 where meaningful


def test_golden_fp32_within_spec_tolerance(golden):
    signals, stored, stride = golden
    for name, x in signals.items():
        ours = kaldi_fbank(torch.from_numpy(x).float()[None] * 32768.0)[0, ::stride].numpy()
        assert ours.dtype == np.float32
        # Against the exact (fp64) answer: a golden fp32 output holds the rounding of the CPU it was
        # made on. torchaudio's own fp32 output meets the same bound, so the bound is fair.
        _assert_fbank_close(ours, stored[f"{name}/f64"], FRAME_TOL[np.float32], name)
        _assert_fbank_close(stored[f"{name}/f32"], stored[f"{name}/f64"], FRAME_TOL[np.float32], name)


def test_comparison_catches_a_wrong_fbank(golden):
    signals, stored, stride = golden
    x = signals["noise_10s"]
    ours = kaldi_fbank(torch.from_numpy(x)[None] * 32768.0)[0, ::stride].numpy()
    with pytest.raises(AssertionError):
        _assert_fbank_close(ours + 1e-3, stored["noise_10s/f64"], FRAME_TOL[np.float32], "shifted")
    shifted_bin = ours.copy()
    shifted_bin[:, 60] += 0.05  # one mel bin 5 % off
    with pytest.raises(AssertionError):
        _assert_fbank_close(shifted_bin, stored["noise_10s/f64"], FRAME_TOL[np.float32], "one bin")


def test_batched_equals_per_clip_and_handles_lengths(golden):
    signals, _, _ = golden
    waves = torch.stack([torch.from_numpy(signals[k]).float() for k in ("noise_10s", "clipped_10s")])
    batch = beats_fbank(waves)
    assert batch.shape == (2, 998, 128) and batch.dtype == torch.float32
    for i in range(2):
        alone = beats_fbank(waves[i : i + 1])[0]
        # Not bit-equal on every CPU: the batch size changes the FFT's and the mel GEMM's blocking
        # (MKL on AVX-512), so only rounding may differ. Each side is within FRAME_TOL of the exact
        # fbank, so the two are within twice that; a clip mixed with its batch-mate is far outside.
        _assert_fbank_close(_log_mel(batch[i].numpy()), _log_mel(alone.numpy()), 2 * FRAME_TOL[np.float32], f"{i}")
    assert kaldi_fbank(torch.from_numpy(signals["chirp_odd"])).shape == (num_frames(16437), 128)
    assert num_frames(160000) == 998 and num_frames(96000) == 598


def test_fixture_fbank_norm():
    with np.load(DATA / "beats_tiny_fbank_trim.npz") as z:
        wave, ref = z["wave"], z["fbank_norm"]
    ours = beats_fbank(torch.from_numpy(wave)).numpy()
    assert ours.shape == ref.shape
    for clip in range(len(ours)):  # the official fp32 output holds its own CPU's rounding: twice the bound
        _assert_fbank_close(_log_mel(ours[clip]), _log_mel(ref[clip]), 2 * FRAME_TOL[np.float32], f"clip {clip}")


def test_pinned_values(golden):
    signals, _, _ = golden
    fb = kaldi_fbank(torch.from_numpy(signals["noise_10s"]).float()[None] * 32768.0)[0]
    # Mel bin 3 contains no FFT bin: always the floor. Bins 1 and 2 both hold FFT bin k = 2 only.
    assert torch.all(fb[:, 3] == torch.tensor(FLOOR)) and abs(FLOOR - -15.9424) < 1e-4
    ratio = fb[:, 2] - fb[:, 1]  # same power, different single weights -> constant log ratio
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-4)
    silence = beats_fbank(torch.zeros(1, 16000))
    assert torch.allclose(silence, torch.tensor((FLOOR - FBANK_MEAN) / (2 * FBANK_STD)))
    assert abs(silence[0, 0, 0].item() - -2.3917) < 1e-4
    assert (FBANK_MEAN, 2 * FBANK_STD) == (15.41663, 13.11164)


def test_fp32_under_autocast_and_short_input():
    x = torch.randn(2, 4000) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = beats_fbank(x)
    assert out.dtype == torch.float32 and torch.equal(out, beats_fbank(x))
    assert beats_fbank(x.double()).dtype == torch.float64
    with pytest.raises(ValueError):
        kaldi_fbank(torch.zeros(1, 399))
