"""Audio loading: any file soundfile reads -> float32 mono at 16 kHz, padded or cut to length.

Conversion rules, in order:

1. Read with soundfile as float32 in [-1, 1] (any rate, channel count and bit depth:
   8-bit unsigned, 16/24/32-bit PCM, float WAV, FLAC, ...), only the frames that the first
   ``cfg.seconds`` need (plus the few input samples the resampling filter reaches ahead), so a
   30-minute recording is not decoded to use its first 10 s. The result equals resampling the
   whole file and cutting it.
2. Reject unusable files with :class:`~asdcli.errors.AudioError` naming the file: unreadable or
   not audio, 0 bytes, no samples, NaN/Inf samples (in the part read), shorter than
   :data:`MIN_SECONDS` (the shortest input BEATs accepts), or, at natural length, longer than
   :data:`MAX_SECONDS`.
3. Mono: the mean of all channels, or channel ``cfg.channel`` (0-based) when set.
4. Resample other rates to ``cfg.sample_rate`` with ``scipy.signal.resample_poly``
   (polyphase, up/down reduced by their gcd).
5. Pad with zeros at the end or cut the end to ``cfg.seconds`` (``None`` keeps the length).

An all-zero clip is loaded but emits an :class:`AudioWarning` (a ``UserWarning``), so a
whole run is not lost to one silent file; filter with ``warnings.simplefilter("error",
AudioWarning)`` to make it fatal.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from asdcli.data.clip_length import CLIP_SECONDS, MAX_SECONDS, MIN_SECONDS, SAMPLE_RATE, check_clip_seconds
from asdcli.data.names import Clip
from asdcli.errors import AudioError, ConfigError


class AudioWarning(UserWarning):
    """A clip is usable but suspicious (e.g. all zeros)."""


MAX_ABS_SAMPLE = 1e3  # 60 dB above full scale: float WAVs may go a little past 1, not this far


@dataclass(frozen=True)
class AudioConfig:
    """How clips are turned into model input.

    sample_rate: output rate in Hz; seconds: pad/cut length (None = natural length);
    channel: 0-based channel to keep instead of the mean of all channels.
    """

    sample_rate: int = SAMPLE_RATE
    seconds: float | None = CLIP_SECONDS
    channel: int | None = None

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {self.sample_rate}.")
        check_clip_seconds(self.seconds)
        if self.channel is not None and self.channel < 0:
            raise ConfigError(f"--channel counts from 0, got {self.channel}.")

    @property
    def num_samples(self) -> int | None:
        """Output length in samples, or None for natural length."""
        return None if self.seconds is None else round(self.seconds * self.sample_rate)


def _check_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise AudioError(f"{path} does not exist; check the path.") from e
    except OSError as e:
        raise AudioError(f"Cannot access {path}: {e.strerror}.") from e
    if size == 0:
        raise AudioError(f"{path} is empty (0 bytes); re-copy or delete it.")


def _unreadable(path: Path, e: Exception) -> AudioError:
    return AudioError(f"Cannot read {path} as audio ({e}); re-copy it or remove it from the data folder.")


def _header_only(path: Path) -> AudioError:
    return AudioError(f"{path} has no samples (header only); re-copy or delete it.")


def _too_short(path: Path, seconds: float) -> AudioError:
    return AudioError(
        f"{path} is {seconds:.3f} s long, shorter than the {MIN_SECONDS} s BEATs needs; remove it from the data folder."
    )


def _no_channel(path: Path, channels: int, channel: int) -> AudioError:
    return AudioError(
        f"{path} has {channels} channel(s), so --channel {channel} does not exist; "
        f"use 0..{channels - 1} or leave it unset to average the channels."
    )


def check_samples(data: np.ndarray, path: Path) -> None:
    """AudioError for NaN or Inf samples, or samples far outside [-1, 1] (a float file that was never
    normalized): the fbank of either is not finite, which would then look like a model fault."""
    if not np.isfinite(data).all():
        raise AudioError(f"{path} contains NaN or Inf samples; re-export it as PCM WAV.")
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"{path} holds samples up to {peak:.3g}, far outside [-1, 1] (a float file that was never "
            "normalized?); normalize it to [-1, 1] or re-export it as PCM WAV."
        )


def soundfile_name(path: Path) -> str | bytes:
    """The name soundfile opens: bytes on POSIX, so a file name that is not UTF-8 opens too."""
    return os.fsencode(path) if os.name == "posix" else str(path)


def _info(path: Path) -> Any:
    """The header of ``path``, or AudioError for anything unreadable."""
    _check_size(path)
    try:
        return sf.info(soundfile_name(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        raise _unreadable(path, e) from e


def _open(path: Path) -> sf.SoundFile:
    """``path`` opened for reading (its header read once), or AudioError for anything unreadable."""
    _check_size(path)
    try:
        return sf.SoundFile(soundfile_name(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        raise _unreadable(path, e) from e


def _read(audio: sf.SoundFile, path: Path, frames: int) -> np.ndarray:
    """The first ``frames`` frames (frames, channels) of an open file as float32, or AudioError."""
    try:
        data = audio.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        raise _unreadable(path, e) from e
    if data.shape[0] == 0:
        raise _header_only(path)
    return data


def _poly_factors(orig_rate: int, new_rate: int) -> tuple[int, int]:
    g = math.gcd(orig_rate, new_rate)
    return new_rate // g, orig_rate // g


def input_frames_for(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """How many input frames at ``orig_rate`` determine the first ``num_samples`` output samples of
    :func:`resample` to ``new_rate``.

    ``resample_poly`` (default Kaiser window) filters with ``2 * half_len + 1`` taps in the
    upsampled domain, ``half_len = 10 * max(up, down)``, centred by ``n_pre_pad <= down`` zeros: output
    ``n`` reads upsampled inputs up to ``(n + (half_len + n_pre_pad) // down) * down``, that is input
    frames up to that over ``up``; two more frames of slack.
    """
    if orig_rate == new_rate:
        return num_samples
    up, down = _poly_factors(orig_rate, new_rate)
    half_len = 10 * max(up, down)
    return ((num_samples - 1) * down + half_len + down) // up + 2


def probe_clip(path: Path | str, channel: int | None = None) -> float:
    """Check what the file header tells (exists, not empty, audio, has samples, long enough,
    has ``channel``) without reading the samples; raises the AudioError ``load_clip`` would.
    Returns the clip's duration in seconds.

    Cheap (well under a millisecond per file), so a stage can check every clip before hours of
    work; NaN/Inf samples are only found when the clip is loaded.
    """
    path = Path(path)
    info = _info(path)
    if info.frames == 0:
        raise _header_only(path)
    if info.frames / info.samplerate < MIN_SECONDS:
        raise _too_short(path, info.frames / info.samplerate)
    if channel is not None and channel >= info.channels:
        raise _no_channel(path, info.channels, channel)
    return float(info.frames / info.samplerate)


def probe_clips(clips: Sequence[Clip | Path | str], channel: int | None = None) -> list[float]:
    """:func:`probe_clip` for every clip, in order (the first bad one raises); their durations in seconds."""
    return [probe_clip(clip.path if isinstance(clip, Clip) else clip, channel) for clip in clips]


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling of a 1-D float signal (float32 out).

    Parameters
    ----------
    wave : np.ndarray
        (N,) float.
    orig_rate, new_rate : int
        Rates in Hz; up/down factors are reduced by their gcd (44100 -> 16000 is 160/441).
    """
    if orig_rate == new_rate:
        return wave.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # 0.8 s to import: only when a clip needs resampling

    up, down = _poly_factors(orig_rate, new_rate)
    return resample_poly(wave.astype(np.float64), up, down).astype(np.float32)


def fit_length(wave: np.ndarray, num_samples: int | None) -> np.ndarray:
    """Pad with zeros at the end or cut the end so that ``len(wave) == num_samples``."""
    if num_samples is None or len(wave) == num_samples:
        return wave
    if len(wave) > num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - len(wave)))


def _to_mono(data: np.ndarray, path: Path, channel: int | None) -> np.ndarray:
    if channel is None:
        return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if channel >= data.shape[1]:
        raise _no_channel(path, data.shape[1], channel)
    return data[:, channel]


def load_clip(path: Path | str, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Load one clip as model input.

    Parameters
    ----------
    path : Path
        Any file soundfile reads.
    cfg : AudioConfig
        Output rate, length and channel rule.

    Returns
    -------
    np.ndarray
        (N,) float32, N = ``cfg.num_samples`` (or the resampled natural length).

    Raises
    ------
    AudioError
        Unreadable, empty, non-finite, too short, or ``cfg.channel`` out of range.
    """
    path = Path(path)
    with _open(path) as audio:
        rate, total = int(audio.samplerate), audio.frames
        if total == 0:
            raise _header_only(path)
        if total / rate < MIN_SECONDS:
            raise _too_short(path, total / rate)
        if cfg.num_samples is None and total / rate > MAX_SECONDS:
            raise AudioError(
                f"{path} is {total / rate:.1f} s long, more than the {MAX_SECONDS:g} s the front end "
                "takes at once; pass --seconds to use its beginning."
            )
        wanted = total if cfg.num_samples is None else input_frames_for(cfg.num_samples, rate, cfg.sample_rate)
        data = _read(audio, path, min(wanted, total))
    check_samples(data, path)
    wave = resample(_to_mono(data, path, cfg.channel), rate, cfg.sample_rate)
    if not wave.any():
        warnings.warn(
            f"{path} is all zeros (silence); its embedding carries no information.", AudioWarning, stacklevel=2
        )
    return fit_length(wave, cfg.num_samples)


class ClipDataset(torch.utils.data.Dataset):
    """Clips as a torch Dataset of ``(wave, index)``: wave (N,) float32 tensor, index into ``paths``.

    Holds only paths and the config, so it pickles cheaply into DataLoader workers. With
    ``cfg.seconds`` set, every item has the same length and default collation stacks them.
    """

    def __init__(self, clips: Sequence[Clip | Path | str], cfg: AudioConfig = AudioConfig()) -> None:
        self.paths: tuple[Path, ...] = tuple(c.path if isinstance(c, Clip) else Path(c) for c in clips)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(load_clip(self.paths[i], self.cfg)), i
