"""Windows over a 16 kHz stream, aggregation of window scores, and runs of anomalous windows.

Windows start every ``hop`` seconds while they fit in the recording; when the last one ends
before the recording does, one more window ending at the recording's end covers the tail (every
sample is in a window, every window is full length). A recording no longer than the window is one
window, zero-padded at the end as `asd score` pads a short clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from asdcli.data.audio import MIN_SECONDS, SAMPLE_RATE
from asdcli.data.clip_length import MAX_SECONDS
from asdcli.errors import ConfigError
from asdcli.monitor.options import check_aggregate

MAX_HOP_SECONDS = 86_400.0  # a day: a sparse look at a long recording, and no overflow


@dataclass(frozen=True)
class WindowSpec:
    """Window length and hop in seconds (hop defaults to the window: no overlap)."""

    window_s: float
    hop_s: float | None = None
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if not MIN_SECONDS <= self.window_s <= MAX_SECONDS:  # NaN fails too
            raise ConfigError(f"--window must be from {MIN_SECONDS} to {MAX_SECONDS:g} s, got {self.window_s}.")
        if self.hop_s is not None and not 1 / self.sample_rate <= self.hop_s <= MAX_HOP_SECONDS:
            raise ConfigError(
                f"--hop must be from one sample (1/{self.sample_rate} s) to {MAX_HOP_SECONDS:g} s, got {self.hop_s}."
            )

    @property
    def window(self) -> int:
        """Window length in samples."""
        return round(self.window_s * self.sample_rate)

    @property
    def hop(self) -> int:
        """Hop in samples."""
        return max(1, round((self.hop_s if self.hop_s is not None else self.window_s) * self.sample_rate))


@dataclass(frozen=True)
class Window:
    """One window: start/end sample in the 16 kHz recording and its (window,) float32 samples."""

    start: int
    end: int
    wave: np.ndarray


def iter_windows(blocks: Iterable[np.ndarray], spec: WindowSpec) -> Iterator[Window]:
    """Windows of a stream of 16 kHz float32 blocks (see the module docstring for the rule).

    Holds at most one window plus one block of samples, whatever the stream's length.
    """
    w, h = spec.window, spec.hop
    pending = np.zeros(0, dtype=np.float32)
    p_start = 0  # sample index of pending[0]
    next_start = 0
    last_end = 0  # end of the last window emitted
    for block in blocks:
        pending = np.concatenate([pending, np.asarray(block, dtype=np.float32)])
        total = p_start + len(pending)
        while next_start + w <= total:
            i = next_start - p_start
            yield Window(next_start, next_start + w, pending[i : i + w].copy())
            last_end = next_start + w
            next_start += h
        keep_from = min(next_start, total - w)  # the last w samples serve the tail window
        if keep_from > p_start:
            pending = pending[keep_from - p_start :]
            p_start = keep_from
    total = p_start + len(pending)
    if last_end == 0:  # no full window: the whole recording, padded
        wave = np.zeros(w, dtype=np.float32)
        wave[:total] = pending[:w]
        yield Window(0, min(total, w), wave)
    elif last_end < total:
        yield Window(total - w, total, pending[len(pending) - w :].copy())


def check_window_length(spec: WindowSpec, bank_clip_seconds: float | None, bank_name: str) -> None:
    """ConfigError unless the windows are as long as the clips the bank was built from: a window of
    another length embeds differently, and its scores are not comparable with the bank's."""
    if bank_clip_seconds is None or abs(spec.window_s - float(bank_clip_seconds)) < 1e-6:
        return
    seconds = f"{float(bank_clip_seconds):g}"
    raise ConfigError(
        f"--window {spec.window_s:g} s differs from the {seconds} s clips the bank of {bank_name} was "
        f"built from; use --window {seconds} or build the bank from {spec.window_s:g} s windows."
    )


def aggregate(scores: np.ndarray, how: str = "max") -> float:
    """One score of a recording from its window scores (N,): ``max`` or ``mean``."""
    check_aggregate(how)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("aggregate needs at least one window score")
    return float(scores.max() if how == "max" else scores.mean())


def anomalous_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges ``[i, j)`` of consecutive 1s in ``flags`` (N,), in order."""
    flags = np.asarray(flags).astype(bool)
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def alarm_runs(flags: np.ndarray, min_windows: int) -> list[tuple[int, int]]:
    """The runs ``[i, j)`` of at least ``min_windows`` anomalous windows in ``flags`` (N,): where a
    :class:`Streak` of ``min_windows`` fed the recording alone would raise an alarm."""
    return [(i, j) for i, j in anomalous_runs(flags) if j - i >= min_windows]


def trailing_anomalous(flags: np.ndarray) -> int:
    """How many of the decisions ``flags`` (N,) are 1 in a row at the end."""
    flags = np.asarray(flags).astype(bool)
    normal = np.flatnonzero(~flags)
    return int(flags.size if normal.size == 0 else flags.size - 1 - normal[-1])


class Streak:
    """Counts anomalous decisions (of files, or of windows) in a row; an alarm once
    ``min_consecutive`` are reached, and on every further one of the same run."""

    def __init__(self, min_consecutive: int = 1) -> None:
        if min_consecutive < 1:
            raise ConfigError(f"--min-consecutive must be at least 1, got {min_consecutive}.")
        self.min_consecutive = min_consecutive
        self.count = 0

    def update(self, anomalous: bool) -> bool:
        """Add one decision; whether it raises (or keeps up) an alarm."""
        self.count = self.count + 1 if anomalous else 0
        return self.count >= self.min_consecutive

    def feed(self, flags: np.ndarray) -> int:
        """Add a file's window decisions (N,) in time order, the run going on from the previous
        file's last windows; returns the longest run reached in this file (0: none anomalous)."""
        peak = 0
        for flag in np.asarray(flags).astype(bool):
            self.update(bool(flag))
            peak = max(peak, self.count)
        return peak

    def carry(self, windows: int, trailing: int) -> None:
        """Resume past a logged file of ``windows`` windows whose last ``trailing`` were anomalous."""
        self.count = self.count + windows if trailing >= windows else trailing
