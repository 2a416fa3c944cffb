"""Block-wise reading and resampling, windows, aggregation and streaks (no model involved)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdcli.data.audio import AudioConfig, load_clip
from asdcli.errors import AudioError, ConfigError
from asdcli.monitor.stream import StreamResampler, recording_info, stream_16k
from asdcli.monitor.windows import Streak, WindowSpec, aggregate, anomalous_runs, iter_windows, trailing_anomalous

SR = 16000


def _noise_file(path: Path, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> Path:
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, (round(seconds * rate), channels))
    sf.write(str(path), wave, rate, subtype="PCM_24")
    return path


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 16000])
@pytest.mark.parametrize("block_seconds", [0.01, 0.37, 1.0, 100.0])
def test_blockwise_resampling_equals_whole_file(tmp_path: Path, rate: int, block_seconds: float) -> None:
    # Each output sample is the same sum of the same float64 products whichever block it falls
    # in, so the float32 result is bit-identical to load_clip's whole-file resample_poly.
    path = _noise_file(tmp_path / "x.wav", 2.3, rate, channels=2)
    whole = load_clip(path, AudioConfig(seconds=None))
    streamed = np.concatenate(list(stream_16k(recording_info(path), block_seconds=block_seconds)))
    assert streamed.shape == whole.shape
    np.testing.assert_array_equal(streamed, whole)


def test_resampler_pushes_of_any_size() -> None:
    from asdcli.data.audio import resample

    x = np.random.default_rng(1).standard_normal(44100 + 13).astype(np.float32)
    r = StreamResampler(44100, SR)
    sizes = np.random.default_rng(2).integers(0, 3000, 200)
    cuts = np.minimum(np.cumsum(sizes), len(x))
    parts = [r.push(b) for b in np.split(x, cuts)] + [r.finish()]
    np.testing.assert_array_equal(np.concatenate(parts), resample(x, 44100, SR))


def test_channel_choice_and_bad_files(tmp_path: Path) -> None:
    path = _noise_file(tmp_path / "st.wav", 0.5, SR, channels=2)
    first = np.concatenate(list(stream_16k(recording_info(path, 1), channel=1)))
    np.testing.assert_array_equal(first, load_clip(path, AudioConfig(seconds=None, channel=1)))
    with pytest.raises(AudioError, match="channel"):
        recording_info(path, 5)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        recording_info(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="Cannot read"):
        recording_info(tmp_path / "junk.wav")


def _windows(n: int, window_s: float, hop_s: float | None, block: int = 997) -> list[tuple[int, int, np.ndarray]]:
    x = np.arange(n, dtype=np.float32)
    blocks = [x[i : i + block] for i in range(0, n, block)]
    return [(w.start, w.end, w.wave) for w in iter_windows(blocks, WindowSpec(window_s, hop_s))]


def test_windows_tile_the_recording_and_cover_the_tail() -> None:
    got = _windows(10 * SR + 123, 2.0, 1.0)
    starts = [s for s, _, _ in got]
    assert starts[:9] == [k * SR for k in range(9)]
    assert got[-1][1] == 10 * SR + 123 and got[-1][0] == 10 * SR + 123 - 2 * SR  # tail window ends at the end
    for s, e, wave in got:
        np.testing.assert_array_equal(wave, np.arange(s, e, dtype=np.float32))


def test_window_hop_longer_than_window_and_exact_fit() -> None:
    got = _windows(6 * SR, 1.0, 2.5)
    assert [(s, e) for s, e, _ in got] == [(0, SR), (int(2.5 * SR), int(3.5 * SR)), (5 * SR, 6 * SR)]
    exact = _windows(4 * SR, 2.0, None)
    assert [(s, e) for s, e, _ in exact] == [(0, 2 * SR), (2 * SR, 4 * SR)]


def test_short_recording_is_one_zero_padded_window() -> None:
    [(s, e, wave)] = _windows(SR // 2, 1.0, None)
    assert (s, e) == (0, SR // 2) and wave.shape == (SR,)
    assert not wave[SR // 2 :].any()


def test_stream_memory_is_bounded_by_blocks_not_length(tmp_path: Path) -> None:
    # 3 minutes at 44.1 kHz: 32 MB as float32 at 44.1 kHz and 11.5 MB at 16 kHz; reading,
    # resampling and windowing it may hold a few blocks and windows, never the file.
    path = _noise_file(tmp_path / "long.wav", 180.0, 44100)
    info = recording_info(path)
    tracemalloc.start()
    try:
        n = 0
        for _w in iter_windows(stream_16k(info, block_seconds=2.0), WindowSpec(2.0, 1.0)):
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 179
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB while streaming a 3 min file"


def test_aggregate_runs_and_streak() -> None:
    s = np.array([0.1, 0.5, 0.3])
    assert aggregate(s, "max") == pytest.approx(0.5) and aggregate(s, "mean") == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="--aggregate"):
        aggregate(s, "median")
    assert anomalous_runs(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])) == [(0, 2), (4, 5), (6, 9)]
    assert anomalous_runs(np.zeros(4)) == []
    streak = Streak(3)
    assert [streak.update(b) for b in (1, 1, 0, 1, 1, 1, 1, 0)] == [
        False,
        False,
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    with pytest.raises(ConfigError, match="--min-consecutive"):
        Streak(0)


def test_window_streaks_run_across_files_and_resume_from_counts() -> None:
    files = [np.array(f) for f in ([0, 1, 1], [1, 0, 0], [0, 1, 1, 1, 1], [1], [0])]
    assert [trailing_anomalous(f) for f in files] == [2, 0, 4, 1, 0]
    live = Streak(3)
    assert [live.feed(f) for f in files] == [2, 3, 4, 5, 0]  # 2 carried into the next file make 3
    resumed = Streak(3)  # a restart after each file: the log's counts give the same run
    counts = []
    for f in files:
        counts.append(resumed.count)
        resumed.carry(len(f), trailing_anomalous(f))
    assert counts == [0, 2, 0, 4, 5] and resumed.count == 0
    with pytest.raises(ConfigError, match="--window"):
        WindowSpec(0.01)
    with pytest.raises(ConfigError, match="--hop"):
        WindowSpec(1.0, 0.0)
