"""Kaldi fbank parity: torchaudio golden outputs, the BEATs fixture, and pinned values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from asdcli.features import FBANK_MEAN, FBANK_STD, beats_fbank, kaldi_fbank, num_frames

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


def test_golden_fp64_matches_torchaudio_to_1e9(golden):
    signals, stored, stride = golden
    for name, x in signals.items():
        ours = kaldi_fbank(torch.from_numpy(x)[None] * 32768.0)[0, ::stride].numpy()
        ref = stored[f"{name}/f64"]
        assert ours.shape == ref.shape, name
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9, err_msg=name)


def test_golden_fp32_within_spec_tolerance(golden):
    signals, stored, stride = golden
    for name, x in signals.items():
        ours = kaldi_fbank(torch.from_numpy(x).float()[None] * 32768.0)[0, ::stride].numpy()
        assert ours.dtype == np.float32
        # vs torchaudio's own fp32 output (a pure tone's fp32 side lobes differ from fp64 more)
        diff = np.abs(ours.astype(np.float64) - stored[f"{name}/f32"])
        assert diff.mean() < 1e-5 and diff.max() < 1e-2, (name, diff.mean(), diff.max())


def test_batched_equals_per_clip_and_handles_lengths(golden):
    signals, _, _ = golden
    waves = torch.stack([torch.from_numpy(signals[k]).float() for k in ("noise_10s", "clipped_10s")])
    batch = beats_fbank(waves)
    assert batch.shape == (2, 998, 128) and batch.dtype == torch.float32
    for i in range(2):
        assert torch.equal(batch[i], beats_fbank(waves[i : i + 1])[0])
    assert kaldi_fbank(torch.from_numpy(signals["chirp_odd"])).shape == (num_frames(16437), 128)
    assert num_frames(160000) == 998 and num_frames(96000) == 598


def test_fixture_fbank_norm():
    with np.load(DATA / "beats_tiny_fbank_trim.npz") as z:
        wave, ref = z["wave"], z["fbank_norm"]
    ours = beats_fbank(torch.from_numpy(wave)).numpy()
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref) * 2 * FBANK_STD  # back to log-mel units
    assert diff.mean() < 1e-5 and diff.max() < 1e-2


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
