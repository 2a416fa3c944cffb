"""How one synthetic clip sounds: the machine models, their anomaly kinds, the backgrounds, render_clip.

Each machine type is a small physical model driven by an operating attribute (shaft speed, motor
voltage and load, valve pattern) whose values differ between the source and the target domain;
the background noise differs too (source: pink noise, high SNR; target: brown noise, mains hum,
lower SNR). Anomalies of several kinds are mixed in at a random severity in [0.3, 1]:

- fan: imbalance (shaft-rate modulation and rumble), bearing-defect impulses, blade-rub squeal
- gearbox: broken tooth (once-per-revolution impacts), wear (mesh sidebands + noise), bearing defect
- bearing: outer-race and inner-race impulse trains, friction squeal (lubrication loss)
- valve: leak hiss, sticking (late, weak clicks), chatter (bouncing clicks)
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

if TYPE_CHECKING:
    from asdcli.synth.dataset import SynthConfig

Attrs = tuple[tuple[str, str], ...]
_COARSE = 160  # samples between points of slow random curves


# ---------------------------------------------------------------- signal building blocks


@dataclass(frozen=True)
class _Ctx:
    """One clip's time base and shaft rotation: t, f_shaft (Hz) and phase (rad), each (N,)."""

    sr: int
    t: np.ndarray
    f_shaft: np.ndarray
    phase: np.ndarray


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / _rms(x)


def _drift(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A slow random curve in [-1, 1] (speed drift, level wander), computed on a coarse grid."""
    f = rng.uniform(0.05, 0.6, 3)[:, None]
    ph = rng.uniform(0, 2 * np.pi, 3)[:, None]
    coarse = t[::_COARSE] if t.size > _COARSE else t[:1]
    curve = np.sin(2 * np.pi * f * coarse + ph).mean(axis=0)
    return np.interp(t, coarse, curve)


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(spec.size, dtype=float)
    k[0] = 1.0
    return _unit(np.fft.irfft(spec / k ** (exponent / 2), n))


@functools.lru_cache(maxsize=64)
def _bandpass(lo: float, hi: float, sr: int) -> np.ndarray:
    return butter(4, [lo, min(hi, 0.45 * sr)], btype="band", fs=sr, output="sos")


def _band(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    return _unit(sosfilt(_bandpass(lo, hi, sr), rng.standard_normal(n)))


def _resonate(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    """Two-pole resonator: each impulse in ``x`` rings at ``freq`` and decays with ``bandwidth``."""
    r = np.exp(-np.pi * bandwidth / sr)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * min(freq, 0.45 * sr) / sr), r * r], x)


def _impulses(rng: np.random.Generator, ctx: _Ctx, rate: np.ndarray | float, jitter: float = 0.2) -> np.ndarray:
    """Impulses each time the cumulated cycle count of ``rate`` (Hz, scalar or (N,)) passes an integer."""
    cycles = np.cumsum(np.broadcast_to(rate, ctx.t.shape)) / ctx.sr + rng.uniform()
    idx = np.flatnonzero(np.diff(np.floor(cycles)) > 0) + 1
    x = np.zeros_like(ctx.t)
    x[idx] = rng.uniform(1 - jitter, 1, idx.size)
    return x


def _harmonics(phase: np.ndarray, amps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """sum_k amps[k-1] * sin(k * phase + random phase_k), (N,)."""
    k = np.arange(1, amps.size + 1)[:, None]
    return (amps[:, None] * np.sin(k * phase + rng.uniform(0, 2 * np.pi, (amps.size, 1)))).sum(axis=0)


def _squeal(rng: np.random.Generator, ctx: _Ctx) -> np.ndarray:
    """Friction squeal: a 2.5-5 kHz tone with vibrato, in random bursts."""
    f0 = rng.uniform(2500, 5000) * (1 + 0.01 * np.sin(2 * np.pi * 6 * ctx.t))
    tone = np.sin(2 * np.pi * np.cumsum(f0) / ctx.sr) + 0.3 * np.sin(4 * np.pi * np.cumsum(f0) / ctx.sr)
    gate = (_drift(rng, ctx.t * 8) > rng.uniform(-0.3, 0.2)).astype(float)
    return tone * np.convolve(gate, np.hanning(ctx.sr // 50) / (ctx.sr // 100), mode="same")


def _bearing_defect(rng: np.random.Generator, ctx: _Ctx, order: float = 3.58) -> np.ndarray:
    """Outer-race defect: impacts at the ball-pass frequency ringing a 3 kHz structural resonance."""
    return _resonate(_impulses(rng, ctx, order * ctx.f_shaft), rng.uniform(2700, 3500), 250, ctx.sr)


# ---------------------------------------------------------------- machine models


def _fan(rng: np.random.Generator, ctx: _Ctx, attrs: dict[str, str]) -> np.ndarray:
    blades = 7
    harm = _harmonics(blades * ctx.phase, np.array([1.0, 0.5, 0.3, 0.15]), rng)
    flow = _band(rng, ctx.t.size, ctx.sr, 80, 5000) * (1 + 0.3 * np.sin(blades * ctx.phase))
    if attrs.get("loc") == "B":  # farther microphone: more flow noise, a room mode at 700 Hz
        return _unit(0.5 * _unit(harm) + _unit(flow) + 0.4 * _unit(_resonate(flow, 700, 80, ctx.sr)))
    return _unit(_unit(harm) + 0.6 * flow)


def _gearbox(rng: np.random.Generator, ctx: _Ctx, attrs: dict[str, str]) -> np.ndarray:
    load = float(attrs.get("wt", "150")) / 150
    mesh = _harmonics(27 * ctx.phase, np.array([1.0, 0.45, 0.2]) * load**0.5, rng)
    mesh *= 1 + (0.1 + 0.1 * load) * np.sin(ctx.phase + rng.uniform(0, 2 * np.pi))
    return _unit(_unit(mesh) + 0.3 * _colored(rng, ctx.t.size, 1.0) + 0.2 * np.sin(2 * ctx.phase))


def _bearing(rng: np.random.Generator, ctx: _Ctx, attrs: dict[str, str]) -> np.ndarray:
    speed = float(attrs["vel"]) / 18  # rolling noise grows and brightens with speed
    rolling = _band(rng, ctx.t.size, ctx.sr, 700 * speed, 6000) * (1 + 0.2 * np.sin(0.4 * ctx.phase))
    shaft = _harmonics(ctx.phase, np.array([0.6, 1.0, 0.4, 0.2]), rng)
    ring = _resonate(rng.standard_normal(ctx.t.size), 2800, 150, ctx.sr)
    return _unit(_unit(shaft) + 0.5 * speed**2 * rolling + 0.4 * _unit(ring))


def _valve_gate(ctx: _Ctx, attrs: dict[str, str], offset: float) -> np.ndarray:
    period = {"00": 0.5, "01": 0.35, "02": 0.25}[attrs.get("pat", "00")]
    return (((ctx.t + offset) % period) < 0.4 * period).astype(float)


def _valve_clicks(rng: np.random.Generator, ctx: _Ctx, gate: np.ndarray, delay: float = 0.0) -> np.ndarray:
    edges = np.diff(gate, prepend=gate[0])
    x = np.zeros_like(ctx.t)
    idx = np.flatnonzero(edges) + int(delay * ctx.sr)
    idx = idx[idx < x.size]
    x[idx] = np.where(edges[np.flatnonzero(edges)][: idx.size] > 0, 1.0, 0.7)
    return _resonate(x, 1500, 120, ctx.sr) + _resonate(x, 2400, 200, ctx.sr)


def _valve(rng: np.random.Generator, ctx: _Ctx, attrs: dict[str, str]) -> np.ndarray:
    gate = _valve_gate(ctx, attrs, rng.uniform(0, 1))
    ramp = np.convolve(gate, np.ones(ctx.sr // 100) / (ctx.sr // 100), mode="same")
    flow = _band(rng, ctx.t.size, ctx.sr, 300, 3000) * ramp * float(attrs.get("v", "1"))
    return _unit(3 * _unit(_valve_clicks(rng, ctx, gate)) + 0.3 * flow + 0.02 * _colored(rng, ctx.t.size, 1))


Anomaly = Callable[[np.random.Generator, _Ctx, np.ndarray, float], np.ndarray]


def _added(component: np.ndarray, wave: np.ndarray, severity: float) -> np.ndarray:
    """``wave`` plus ``component`` at -14 dB (severity 0.3) to -2 dB (severity 1) relative level."""
    return wave + 10 ** ((-19 + 17 * severity) / 20) * _rms(wave) * _unit(component)


def _imbalance(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    rumble = _harmonics(ctx.phase, np.array([1.0, 0.6, 0.4, 0.3, 0.2]), rng)
    return _added(rumble, wave * (1 + 0.7 * sev * np.sin(ctx.phase)), sev)


def _broken_tooth(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    return _added(_resonate(_impulses(rng, ctx, ctx.f_shaft, 0.05), 1800, 300, ctx.sr), wave, sev)


def _wear(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    rough = _band(rng, ctx.t.size, ctx.sr, 500, 7000) * (1 + np.sin(27 * ctx.phase))
    return _added(rough, wave * (1 + 0.5 * sev * np.sin(3 * ctx.phase)), sev)


def _inner_race(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    hits = _impulses(rng, ctx, 5.42 * ctx.f_shaft) * (1 + np.cos(ctx.phase))
    return _added(_resonate(hits, rng.uniform(3800, 4500), 300, ctx.sr), wave, sev)


def _leak(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    return _added(_band(rng, ctx.t.size, ctx.sr, 3000, 7500), wave, sev * 0.8)


def _stick(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    late = _valve_clicks(rng, ctx, _valve_gate(ctx, {"pat": "01"}, rng.uniform()), rng.uniform(0.01, 0.05))
    return _added(_resonate(late, 900, 60, ctx.sr) + 0.3 * _squeal(rng, ctx), 0.7 * wave, sev)


def _chatter(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    return _added(_resonate(_impulses(rng, ctx, rng.uniform(25, 45), 0.6), 2000, 150, ctx.sr), wave, sev)


def _squeal_anomaly(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    return _added(_squeal(rng, ctx), wave, sev)


def _bearing_anomaly(rng: np.random.Generator, ctx: _Ctx, wave: np.ndarray, sev: float) -> np.ndarray:
    return _added(_bearing_defect(rng, ctx), wave, sev)


@dataclass(frozen=True)
class _Machine:
    render: Callable[[np.random.Generator, _Ctx, dict[str, str]], np.ndarray]
    speed: Callable[[dict[str, str]], float]  # shaft rotation in Hz for these attributes
    source: tuple[Attrs, ...]
    target: tuple[Attrs, ...]
    anomalies: tuple[Anomaly, ...]


MACHINES: dict[str, _Machine] = {
    "fan": _Machine(
        _fan,
        lambda a: float(a["vel"]),
        ((("vel", "20"), ("loc", "A")), (("vel", "24"), ("loc", "A")), (("vel", "28"), ("loc", "A"))),
        ((("vel", "34"), ("loc", "B")),),
        (_imbalance, _bearing_anomaly, _squeal_anomaly),
    ),
    "gearbox": _Machine(
        _gearbox,
        lambda a: 12 * float(a["volt"]),
        ((("volt", "1.0"), ("wt", "100")), (("volt", "1.3"), ("wt", "150")), (("volt", "1.6"), ("wt", "100"))),
        ((("volt", "2.2"), ("wt", "250")),),
        (_broken_tooth, _wear, _bearing_anomaly),
    ),
    "bearing": _Machine(
        _bearing,
        lambda a: float(a["vel"]),
        ((("vel", "15"),), (("vel", "18"),), (("vel", "21"),)),
        ((("vel", "27"),),),
        (_bearing_anomaly, _inner_race, _squeal_anomaly),
    ),
    "valve": _Machine(
        _valve,
        lambda a: 10.0,
        ((("pat", "00"), ("v", "1")), (("pat", "01"), ("v", "1"))),
        ((("pat", "02"), ("v", "2")),),
        (_leak, _stick, _chatter),
    ),
}


# ---------------------------------------------------------------- one clip


def _background(rng: np.random.Generator, ctx: _Ctx, domain: str) -> np.ndarray:
    if domain == "source":
        return _colored(rng, ctx.t.size, 1.0)
    hum = _harmonics(2 * np.pi * 50 * ctx.t, np.array([1.0, 0.5, 0.3, 0.2, 0.1]), rng)
    return _unit(_colored(rng, ctx.t.size, 2.0) + 0.5 * _colored(rng, ctx.t.size, 1.0) + 0.4 * _unit(hum))


def render_clip(
    cfg: SynthConfig,
    machine: str,
    attrs: Attrs,
    domain: str,
    *,
    anomaly: bool = False,
    background: bool = True,
    machine_sound: bool = True,
    key: tuple[int, ...] = (),
) -> np.ndarray:
    """One clip as float64 (N,) in [-1, 1]; a pure function of ``(cfg.seed, machine, key)`` and the rest.

    ``domain`` picks the background (source: pink noise at 15-20 dB SNR; target: brown noise and
    mains hum at 7-12 dB SNR). ``anomaly`` mixes in one of the machine's anomaly kinds.
    """
    rng = np.random.default_rng([cfg.seed, zlib.crc32(machine.encode()), *key])
    model = MACHINES[machine]
    t = np.arange(round(cfg.seconds * cfg.sample_rate)) / cfg.sample_rate
    a = dict(attrs)
    f_shaft = model.speed(a) * (1 + 0.02 * rng.uniform(-1, 1)) * (1 + 0.015 * _drift(rng, t))
    ctx = _Ctx(cfg.sample_rate, t, f_shaft, 2 * np.pi * np.cumsum(f_shaft) / cfg.sample_rate)
    wave = model.render(rng, ctx, a)
    if anomaly:
        kind = model.anomalies[rng.integers(len(model.anomalies))]
        wave = kind(rng, ctx, wave, rng.uniform(0.3, 1.0))
    wave = 0.1 * wave if machine_sound else np.zeros_like(t)
    if background:
        snr_db = rng.uniform(15, 20) if domain == "source" else rng.uniform(7, 12)
        wave = wave + 0.1 * 10 ** (-snr_db / 20) * _background(rng, ctx, domain)
    wave *= 10 ** (rng.uniform(-2, 2) / 20)
    peak = np.abs(wave).max()
    return wave * (0.9 / peak) if peak > 0.9 else wave
