"""Synthetic long recordings for the monitoring tests: normal machine sound, then (optionally) an
anomaly of the synthetic generator from a known time on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from asdcli.synth.dataset import SynthConfig
from asdcli.synth.sounds import MACHINES, render_clip

SR = 16000
ANOMALY_GAIN = 8.0  # the generator's anomalies are subtle for a random tiny BEATs: make them plain


def piece(seconds: float, key: tuple[int, ...], anomalous: bool, machine: str, domain: str, setting: int) -> np.ndarray:
    """One stretch of the generator's sound; anomalous: one of its anomaly kinds, ANOMALY_GAIN x stronger."""
    cfg = SynthConfig(machines=(machine,), seconds=seconds)
    options = MACHINES[machine].source if domain == "source" else MACHINES[machine].target
    attrs = options[setting % len(options)]
    normal = render_clip(cfg, machine, attrs, domain, key=key)
    if not anomalous:
        return normal
    bad = render_clip(cfg, machine, attrs, domain, anomaly=True, key=key)
    return np.clip(normal + ANOMALY_GAIN * (bad - normal), -1, 1)


def long_recording(
    seconds: float,
    key: tuple[int, ...],
    anomaly_from: float | None = None,
    machine: str = "fan",
    domain: str = "source",
    piece_s: float = 1.0,
) -> np.ndarray:
    """(round(seconds * 16000),) float64: the machine running (``piece_s`` stretches of its normal
    sound, operating settings cycling as they vary in the field), and from ``anomaly_from``
    seconds on (a multiple of ``piece_s``) anomalous stretches."""
    n = round(seconds / piece_s)
    parts = [
        piece(piece_s, (*key, j), anomaly_from is not None and j * piece_s >= anomaly_from, machine, domain, j)
        for j in range(n)
    ]
    return np.concatenate(parts)


def write_wav(path: Path, wave: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, rate, subtype=subtype)
    return path
