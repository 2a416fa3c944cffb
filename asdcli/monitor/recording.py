"""Scoring and embedding long recordings window by window, streaming through the file.

Memory holds one read block, one window of context and one batch of windows, whatever the
recording's length; windows go through BEATs ``batch_size`` at a time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdcli.backend.bank import Bank
from asdcli.backend.score import score_vectors
from asdcli.frontend.spec import check_same_frontend
from asdcli.monitor.embedder import Embedder
from asdcli.monitor.stream import BLOCK_SECONDS, RecordingInfo, recording_info, stream_16k
from asdcli.monitor.windows import WindowSpec, iter_windows

if TYPE_CHECKING:
    from rich.console import Console

Position = Callable[[float], None]  # called with the seconds of the recording done so far


@dataclass(frozen=True)
class WindowBatch:
    """Up to ``batch_size`` windows: start/end in seconds (B,) and their embeddings (B, D)."""

    start_s: np.ndarray
    end_s: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class RecordingScores:
    """Window scores of one recording: ``start_s``, ``end_s``, ``scores`` (N,), in time order."""

    path: Path
    start_s: np.ndarray
    end_s: np.ndarray
    scores: np.ndarray
    threshold: float

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def decisions(self) -> np.ndarray:
        """(N,) int8: 1 where the window's score is above the bank's threshold."""
        return (self.scores > self.threshold).astype(np.int8)


def embed_windows(info: RecordingInfo, embedder: Embedder, spec: WindowSpec, batch_size: int | None = None,
                  channel: int | None = None, position: Position | None = None,
                  block_seconds: float = BLOCK_SECONDS) -> Iterator[WindowBatch]:  # fmt: skip
    """Embed the recording's windows, ``batch_size`` (default: the embedder's) at a time, reading
    ``block_seconds`` at a time."""
    batch_size = batch_size or embedder.batch_size
    sr = spec.sample_rate
    starts: list[int] = []
    ends: list[int] = []
    waves: list[np.ndarray] = []

    def flush() -> WindowBatch:
        vectors = embedder.embed(np.stack(waves))
        batch = WindowBatch(np.asarray(starts) / sr, np.asarray(ends) / sr, vectors)
        if position is not None:
            position(ends[-1] / sr)
        starts.clear()
        ends.clear()
        waves.clear()
        return batch

    for window in iter_windows(stream_16k(info, channel, block_seconds), spec):
        starts.append(window.start)
        ends.append(window.end)
        waves.append(window.wave)
        if len(waves) == batch_size:
            yield flush()
    if waves:
        yield flush()


def score_recording(path: Path | str, bank: Bank, embedder: Embedder, spec: WindowSpec, batch_size: int | None = None,
                    position: Position | None = None, block_seconds: float = BLOCK_SECONDS) -> RecordingScores:  # fmt: skip
    """Window scores of one recording against ``bank`` (its front end must be the embedder's)."""
    check_same_frontend(bank.embedding_meta, embedder.meta, f"The bank of {bank.name}", "the embedder")
    info = recording_info(path, embedder.channel)
    starts, ends, scores = [], [], []
    for batch in embed_windows(info, embedder, spec, batch_size, embedder.channel, position, block_seconds):
        starts.append(batch.start_s)
        ends.append(batch.end_s)
        scores.append(score_vectors(bank, batch.vectors))
    return RecordingScores(Path(path), np.concatenate(starts), np.concatenate(ends),
                           np.concatenate(scores).astype(np.float32), bank.threshold)  # fmt: skip


def clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) of a position in a recording."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@contextlib.contextmanager
def position_bar(console: Console | None, info: RecordingInfo) -> Iterator[Position]:
    """A bar over the recording's length showing ``position / length``, times real time and ETA;
    yields the callback that moves it. Silent without a console or off a terminal."""
    if console is None:
        yield lambda seconds: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[where]}"),
               TextColumn("{task.fields[speed]}"), TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
    start = time.perf_counter()
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=False) as bar:
        task = bar.add_task(info.path.name, total=max(info.seconds, 1e-9), where="", speed="")

        def move(seconds: float) -> None:
            took = time.perf_counter() - start
            speed = f"{seconds / took:.0f}x real time" if took > 0 else ""
            bar.update(task, completed=seconds, where=f"{clock(seconds)} / {clock(info.seconds)}", speed=speed)

        yield move
