"""Audio loading: rates, channels, bit depths, pad/cut, and every error case."""

from __future__ import annotations

import math
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import firwin

from asdcli.data.audio import (
    MAX_SECONDS,
    MIN_SECONDS,
    AudioConfig,
    AudioWarning,
    ClipDataset,
    fit_length,
    input_frames_for,
    load_clip,
    resample,
)
from asdcli.errors import AudioError, ConfigError


def _tone(rate: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


def _write(path: Path, data: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def _peak_hz(wave: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spec.argmax()])


@pytest.mark.parametrize("rate", [16000, 44100, 48000, 8000, 104755])
def test_resampling_keeps_the_tone(tmp_path: Path, rate: int) -> None:
    path = _write(tmp_path / "a.wav", _tone(rate, 1.0, 1000.0), rate)
    wave = load_clip(path, AudioConfig(seconds=None))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    assert abs(_peak_hz(wave) - 1000.0) < 5
    assert 0.45 < np.abs(wave[1000:-1000]).max() < 0.55  # amplitude survives the filter


def test_resample_reduces_by_gcd() -> None:
    x = np.random.default_rng(0).standard_normal(44100)
    assert len(resample(x, 44100, 16000)) == 16000
    assert resample(x.astype(np.float32), 16000, 16000).dtype == np.float32


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_bit_depths(tmp_path: Path, subtype: str) -> None:
    path = _write(tmp_path / "a.wav", _tone(16000, 0.5), 16000, subtype)
    wave = load_clip(path, AudioConfig(seconds=None))
    np.testing.assert_allclose(wave, _tone(16000, 0.5), atol=0.01)


def test_multichannel_mean_and_channel_choice(tmp_path: Path) -> None:
    data = _tone(16000, 0.5, channels=2)  # channel 1 is twice channel 0
    path = _write(tmp_path / "st.wav", data, 16000, "FLOAT")
    mean = load_clip(path, AudioConfig(seconds=None))
    np.testing.assert_allclose(mean, data.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(load_clip(path, AudioConfig(seconds=None, channel=1)), data[:, 1], atol=1e-6)
    with pytest.raises(AudioError, match=r"st\.wav has 2 channel\(s\).*--channel 2"):
        load_clip(path, AudioConfig(channel=2))


def test_pad_and_cut(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.wav", _tone(16000, 1.0), 16000)
    padded = load_clip(path, AudioConfig(seconds=2.0))
    assert padded.shape == (32000,) and not padded[16000:].any() and padded[:16000].any()
    cut = load_clip(path, AudioConfig(seconds=0.5))
    np.testing.assert_array_equal(cut, padded[:8000])
    assert load_clip(path).shape == (160000,)  # default 10 s


def test_flac(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.flac", _tone(22050, 0.5), 22050)
    assert load_clip(path, AudioConfig(seconds=None)).shape == (8000,)


def test_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav is empty \(0 bytes\)"):
        load_clip(empty)
    text = tmp_path / "text.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"Cannot read .*text\.wav as audio"):
        load_clip(text)
    header = _write(tmp_path / "header.wav", np.zeros(0), 16000)
    with pytest.raises(AudioError, match=r"header\.wav has no samples"):
        load_clip(header)
    truncated = tmp_path / "trunc.wav"
    truncated.write_bytes(_write(tmp_path / "ok.wav", _tone(16000, 1.0), 16000).read_bytes()[:30])
    with pytest.raises(AudioError, match=r"trunc\.wav"):
        load_clip(truncated)
    with pytest.raises(AudioError, match="does not exist"):
        load_clip(tmp_path / "missing.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    data = _tone(16000, 0.5)
    data[100] = bad
    path = _write(tmp_path / "nan.wav", data, 16000, "FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav contains NaN or Inf"):
        load_clip(path)


def test_too_short(tmp_path: Path) -> None:
    ok = _write(tmp_path / "ok.wav", _tone(16000, MIN_SECONDS), 16000)
    assert load_clip(ok, AudioConfig(seconds=None)).shape == (2800,)
    short = _write(tmp_path / "short.wav", _tone(44100, 0.17), 44100)
    with pytest.raises(AudioError, match=r"short\.wav is 0\.170 s long, shorter than the 0\.175 s"):
        load_clip(short)


def test_all_zero_warns_but_loads(tmp_path: Path) -> None:
    path = _write(tmp_path / "silent.wav", np.zeros(16000), 16000)
    with pytest.warns(AudioWarning, match=r"silent\.wav is all zeros"):
        wave = load_clip(path, AudioConfig(seconds=1.0))
    assert wave.shape == (16000,) and not wave.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioWarning)
        with pytest.raises(AudioWarning):
            load_clip(path)


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        AudioConfig(seconds=0.1)
    with pytest.raises(ConfigError):
        AudioConfig(channel=-1)
    with pytest.raises(ConfigError):
        AudioConfig(sample_rate=0)


def test_clip_dataset_with_workers(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"{i}.wav", _tone(16000, 0.3 + 0.1 * i, 200.0 * (i + 1)), 16000) for i in range(4)]
    ds = ClipDataset(paths, AudioConfig(seconds=0.5))
    assert len(ds) == 4 and pickle.loads(pickle.dumps(ds)).paths == ds.paths
    wave, idx = ds[2]
    assert isinstance(wave, torch.Tensor) and wave.shape == (8000,) and idx == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(2, 8000), (2, 8000)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(batches[1][0][0], wave)


def test_probe_clip_checks_the_header_like_load_clip(tmp_path: Path) -> None:
    from asdcli.data.audio import probe_clip, probe_clips

    good = _write(tmp_path / "good.wav", np.zeros((8000, 2)), 16000)
    probe_clip(good)
    probe_clip(good, channel=1)
    cases = {
        "short": (_write(tmp_path / "short.wav", np.zeros(1600), 16000), None, "shorter than the 0.175 s"),
        "channel": (good, 2, "--channel 2 does not exist"),
    }
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio")
    cases["empty"] = (tmp_path / "empty.wav", None, "is empty (0 bytes)")
    cases["text"] = (tmp_path / "text.wav", None, "as audio")
    for path, channel, message in cases.values():
        with pytest.raises(AudioError, match=re.escape(message)):
            probe_clip(path, channel)
        with pytest.raises(AudioError, match=re.escape(message)):  # the same sentence as loading it
            load_clip(path, AudioConfig(channel=channel))
    with pytest.raises(AudioError, match="short.wav"):
        probe_clips([good, tmp_path / "short.wav"])


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 1e9, 600.0, 60.001, 0.0, -1.0])
def test_clip_length_is_bounded_before_anything_is_allocated(seconds: float) -> None:
    with pytest.raises(ConfigError, match="--seconds must be a clip length from 0.175 to 60 s"):
        AudioConfig(seconds=seconds)
    assert AudioConfig(seconds=MAX_SECONDS).num_samples == 960_000


def _filter_error_bound(x: np.ndarray, orig_rate: int, new_rate: int) -> float:
    """What may differ between two float64 evaluations of the polyphase filter (summation order)
    after the cast to float32: n_taps * eps64 * ||h||_1 * max|x| plus one float32 rounding."""
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    if up == down:  # no filter: the samples are copied
        return 0.0
    half_len = 10 * max(up, down)
    h = firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0)) * up
    peak = float(np.abs(x).max())
    return len(h) * np.finfo(np.float64).eps * float(np.abs(h).sum()) * peak + np.finfo(np.float32).eps * 2 * peak


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 104755, 8000, 16000])
def test_reading_only_the_needed_frames_equals_resampling_the_whole_file(
    tmp_path: Path, rate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 60 * rate  # one minute of stereo: a 30-minute file would ask for the same frames
    x = (0.3 * np.random.default_rng(rate).standard_normal((total, 2))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), x, rate, subtype="FLOAT")
    requested: list[int] = []
    real_read = sf.SoundFile.read

    def counting_read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        data = real_read(self, *args, **kwargs)
        requested.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    wave = load_clip(path, AudioConfig(seconds=10.0))
    assert requested == [input_frames_for(160_000, rate, 16000)] and requested[0] < total / 5
    whole = fit_length(resample(x.mean(axis=1), rate, 16000), 160_000)
    assert wave.shape == whole.shape == (160_000,)
    np.testing.assert_allclose(wave, whole, rtol=0, atol=_filter_error_bound(x.mean(axis=1), rate, 16000))


def test_natural_length_longer_than_the_front_end_takes_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.wav", _tone(8000, MAX_SECONDS + 1, 440.0), 8000)
    with pytest.raises(AudioError, match=f"{re.escape(str(path))} is 61.0 s long, more than the 60 s"):
        load_clip(path, AudioConfig(seconds=None))


def test_float_samples_far_outside_full_scale_are_an_error_naming_the_file(tmp_path: Path) -> None:
    loud = tmp_path / "loud.wav"
    sf.write(loud, (_tone(16000, 1.0) * 1e20).astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"loud\.wav holds samples up to \S+e\+19, far outside \[-1, 1\]"):
        load_clip(loud)
    hot = tmp_path / "hot.wav"  # a float file a little past full scale is fine
    sf.write(hot, (_tone(16000, 1.0) * 3.0).astype(np.float32), 16000, subtype="FLOAT")
    assert np.abs(load_clip(hot, AudioConfig(seconds=None))).max() > 1.0
