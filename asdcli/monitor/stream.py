"""Reading a recording of any length in blocks: mono float32 at 16 kHz, resampled block by block.

:class:`StreamResampler` gives the same samples as resampling the whole file at once with
``scipy.signal.resample_poly`` (what :func:`asdcli.data.audio.resample` does): output sample ``n``
is ``sum_m x[m] h[n*down + half_len - m*up]``, so it depends only on the inputs within
``half_len / up`` samples of ``n*down/up``. Each block is resampled together with that context
and a start aligned to a multiple of ``down`` (so the polyphase phase is the whole file's); only
outputs whose inputs have all arrived are emitted. Memory: one block plus the filter context.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import firwin, resample_poly

from asdcli.data.audio import SAMPLE_RATE, check_samples, probe_clip, soundfile_name
from asdcli.errors import AudioError

BLOCK_SECONDS = 4.0  # input read per step: memory is a few of these whatever the file's length
KAISER = ("kaiser", 5.0)  # resample_poly's default window, as asdcli.data.audio.resample uses


class StreamResampler:
    """Polyphase resampling of a signal that arrives in blocks (float32 out, float64 inside).

    ``push(block)`` returns the output samples that are now final; ``finish()`` returns the rest.
    The concatenation equals ``resample_poly(whole.astype(float64), up, down).astype(float32)``.
    """

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        g = math.gcd(orig_rate, new_rate)
        self.up, self.down = new_rate // g, orig_rate // g
        self.half_len = 10 * max(self.up, self.down)  # resample_poly's filter half length
        self.taps = (
            None if self.passthrough else firwin(2 * self.half_len + 1, 1.0 / max(self.up, self.down), window=KAISER)
        )
        self.buf = np.zeros(0, dtype=np.float64)
        self.buf_start = 0  # input index of buf[0], a multiple of down
        self.received = 0  # inputs pushed so far
        self.next_out = 0  # index of the next output sample to emit

    @property
    def passthrough(self) -> bool:
        return self.up == self.down == 1

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add (N,) input samples; the (M,) float32 outputs that no later input can change."""
        if self.passthrough:
            return np.asarray(block, dtype=np.float32)
        self.buf = np.concatenate([self.buf, np.asarray(block, dtype=np.float64)])
        self.received += len(block)
        # output n needs inputs up to (n*down + half_len) / up: all of them must have arrived
        stop = max(self.next_out, -(-(self.received * self.up - self.half_len) // self.down))
        return self._emit(stop)

    def finish(self) -> np.ndarray:
        """The remaining outputs (the input ends with zeros, as for the whole file)."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        return self._emit(-(-self.received * self.up // self.down))

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self.next_out:
            return np.zeros(0, dtype=np.float32)
        y = resample_poly(self.buf, self.up, self.down, window=self.taps)
        offset = self.buf_start * self.up // self.down
        out = y[self.next_out - offset : stop - offset].astype(np.float32)
        self.next_out = stop
        # keep the inputs the next output still needs, from a multiple of down
        first_needed = max(0, -(-(stop * self.down - self.half_len) // self.up))
        new_start = max(self.buf_start, first_needed // self.down * self.down)
        self.buf = self.buf[new_start - self.buf_start :]
        self.buf_start = new_start
        return out


@dataclass(frozen=True)
class RecordingInfo:
    """What the header says: input rate, frames, channels, and the length in seconds."""

    path: Path
    sample_rate: int
    frames: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def recording_info(path: Path | str, channel: int | None = None) -> RecordingInfo:
    """Header of ``path`` after the checks ``load_clip`` makes (AudioError when unusable)."""
    path = Path(path)
    probe_clip(path, channel)
    info = sf.info(soundfile_name(path))
    return RecordingInfo(path, int(info.samplerate), int(info.frames), int(info.channels))


def _mono(data: np.ndarray, channel: int | None) -> np.ndarray:
    if channel is not None:
        return data[:, channel]
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def read_blocks(info: RecordingInfo, channel: int | None = None,
                block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:  # fmt: skip
    """Mono float32 blocks of the file at its own rate (mean of channels, or ``channel``)."""
    frames = max(1, round(block_seconds * info.sample_rate))
    try:
        with sf.SoundFile(soundfile_name(info.path)) as f:
            while True:
                data = f.read(frames, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    return
                check_samples(data, info.path)
                yield _mono(data, channel)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"Cannot read {info.path} as audio ({e}); re-copy it or remove it.") from e


def stream_16k(info: RecordingInfo, channel: int | None = None,
               block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:  # fmt: skip
    """The recording as float32 blocks at 16 kHz, resampled block-wise (equal to whole-file)."""
    resampler = StreamResampler(info.sample_rate, SAMPLE_RATE)
    for block in read_blocks(info, channel, block_seconds):
        out = resampler.push(block)
        if out.size:
            yield out
    tail = resampler.finish()
    if tail.size:
        yield tail
