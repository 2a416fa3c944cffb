"""Synthetic machine sounds in the DCASE 2025 layout, so the tool can be tried without downloads.

Each machine type is a small physical model driven by an operating attribute (shaft speed, motor
voltage and load, valve pattern) whose values differ between the source and the target domain;
the background noise differs too (source: pink noise, high SNR; target: brown noise, mains hum,
lower SNR). Anomalies of several kinds are mixed in at a random severity in [0.3, 1]:

- fan: imbalance (shaft-rate modulation and rumble), bearing-defect impulses, blade-rub squeal
- gearbox: broken tooth (once-per-revolution impacts), wear (mesh sidebands + noise), bearing defect
- bearing: outer-race and inner-race impulse trains, friction squeal (lubrication loss)
- valve: leak hiss, sticking (late, weak clicks), chatter (bouncing clicks)

Everything is a pure function of ``(seed, machine, clip role, clip number)``: the same config
writes byte-identical 16-bit PCM WAV files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, sosfilt

from asdcli.artifacts import write_json_atomic
from asdcli.errors import ConfigError, DataError
from asdcli.seeds import check_seed

Attrs = tuple[tuple[str, str], ...]
MARKER = "asd-synth.json"
GENERATOR = "asdcli.synth.sounds"
_COARSE = 160  # samples between points of slow random curves


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; counts are per machine (test: per domain x label cell, supplemental:
    per kind). Machines listed in ``hidden_attributes`` get ``noAttribute`` names."""

    seed: int = 0
    machines: tuple[str, ...] = ("fan", "gearbox", "bearing")
    seconds: float = 2.0
    sample_rate: int = 16000
    n_train_source: int = 40
    n_train_target: int = 4
    n_test_per_cell: int = 10
    n_supplemental: int = 2
    hidden_attributes: tuple[str, ...] = ("bearing",)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        unknown = sorted(set(self.machines) - set(MACHINES))
        if unknown or not self.machines:
            raise ConfigError(
                f"Unknown synthetic machine(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(MACHINES)}."
            )
        if not 0.175 <= self.seconds <= 60:
            raise ConfigError(f"--seconds must be between 0.175 and 60, got {self.seconds}.")
        counts = (self.n_train_source, self.n_train_target, self.n_test_per_cell, self.n_supplemental)
        if min(counts) < 0 or self.n_train_source < 1 or self.sample_rate < 8000:
            raise ConfigError("Synthetic counts must be >= 0 (>= 1 source train clip) and the rate >= 8000 Hz.")


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


# ---------------------------------------------------------------- clips and files


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


def _attr_text(cfg: SynthConfig, machine: str, attrs: Attrs) -> str:
    if machine in cfg.hidden_attributes:
        return "noAttribute"
    return "_".join(f"{k}_{v}" for k, v in attrs)


def _plan(cfg: SynthConfig, machine: str) -> list[tuple[str, dict]]:
    """(relative path, render_clip keyword arguments) of every clip of one machine."""
    model = MACHINES[machine]
    plan: list[tuple[str, dict]] = []
    for d, (domain, options) in enumerate((("source", model.source), ("target", model.target))):
        n_train = cfg.n_train_source if domain == "source" else cfg.n_train_target
        for i in range(n_train):
            attrs = options[i % len(options)]
            name = f"section_00_{domain}_train_normal_{i:04d}_{_attr_text(cfg, machine, attrs)}.wav"
            plan.append((f"train/{name}", dict(attrs=attrs, domain=domain, key=(0, d, i))))
        for lab, label in enumerate(("normal", "anomaly")):
            for i in range(cfg.n_test_per_cell):
                attrs = options[i % len(options)]
                name = f"section_00_{domain}_test_{label}_{i:04d}_{_attr_text(cfg, machine, attrs)}.wav"
                plan.append((f"test/{name}", dict(attrs=attrs, domain=domain, anomaly=bool(lab), key=(1, d, lab, i))))
    for i in range(cfg.n_supplemental):
        attrs = model.source[i % len(model.source)]
        plan.append(
            (
                f"supplemental/section_00_machine_{i:04d}_{_attr_text(cfg, machine, attrs)}.wav",
                dict(attrs=attrs, domain="source", background=False, key=(2, 0, i)),
            )
        )
        plan.append(
            (
                f"supplemental/section_00_noise_{i:04d}_.wav",
                dict(attrs=attrs, domain="target", machine_sound=False, key=(2, 1, i)),
            )
        )
    return plan


def _wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _write_clip(path: Path, data: bytes) -> None:
    # temp + rename like artifacts.atomic_write, without its fsync: clips can be regenerated and
    # an fsync per clip would double the generation time.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"Cannot write {path}: {e.strerror}; choose a writable folder.") from e


def _written_before(root: Path) -> dict[str, set[str]]:
    """``{relative path: SHA-256s}`` of the clips an earlier make_dataset wrote under ``root`` (its
    marker's record; a clip being rewritten when a run stopped may have either of two contents);
    {} for a new or empty folder. DataError for a folder it did not make or a damaged record."""
    if root.is_file():
        raise DataError(f"{root} is a file; give a folder for the synthetic dataset.")
    marker = root / MARKER
    if not marker.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise DataError(f"{root} is not empty and holds no {MARKER}; give a new or empty folder.")
        return {}
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{marker} is not readable JSON; give a new or empty folder.") from e
    files = record.get("files") if isinstance(record, dict) and record.get("generator") == GENERATOR else None
    if not isinstance(files, dict):
        raise DataError(
            f"{marker} is not the record of a dataset asd demo wrote (or one from before this version); "
            "give a new or empty folder."
        )
    ours: dict[str, set[str]] = {}
    for rel, digests in files.items():
        digests = [digests] if isinstance(digests, str) else digests
        if not _clip_path(rel) or not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise DataError(
                f"{marker} lists {rel!r}, which is not a clip path <machine>/<split>/<name>.wav of it; "
                "the record is damaged: give a new or empty folder."
            )
        ours[rel] = set(digests)
    return ours


def _clip_path(rel: object) -> bool:
    """Whether ``rel`` is a path make_dataset writes: ``<machine>/<split>/<name>.wav``, relative, no ``..``."""
    if not isinstance(rel, str) or "\\" in rel:
        return False
    parts = rel.split("/")
    return len(parts) == 3 and all(p not in ("", ".", "..") for p in parts) and parts[2].endswith(".wav")


def _check_only_ours(root: Path, ours: dict[str, set[str]]) -> None:
    """DataError naming the clips under ``root`` that make_dataset did not write or that changed
    since: they would be overwritten, removed or mixed into the synthetic dataset."""
    foreign = [p for p in sorted(root.glob("*/*/*.wav")) if not _is_ours(root, p.relative_to(root).as_posix(), ours)]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise DataError(
            f"{foreign[0]}{more} in {root} was not written by asd demo (or changed since); move it out, "
            "or give a new or empty folder: nothing asdcli did not write is removed or overwritten."
        )


def _is_ours(root: Path, rel: str, ours: dict[str, set[str]]) -> bool:
    path = root / rel
    return path.is_file() and not path.is_symlink() and _sha256(path) in ours.get(rel, set())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_marker(root: Path, cfg: SynthConfig | None, files: dict[str, set[str]]) -> None:
    """The record: ``config`` None while clips are being written (the dataset is not complete)."""
    record = {"generator": GENERATOR, "config": None if cfg is None else asdict(cfg),
              "files": {rel: sorted(d) for rel, d in sorted(files.items())}}  # fmt: skip
    write_json_atomic(root / MARKER, record)


def dataset_is_current(root: Path | str, cfg: SynthConfig) -> bool:
    """Whether ``root`` holds the dataset make_dataset writes for ``cfg``, every clip unchanged."""
    root = Path(root)
    try:
        record = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("config") != json.loads(json.dumps(asdict(cfg))):
        return False
    files = record.get("files")
    if not isinstance(files, dict) or len(files) != count_clips(cfg) or not all(map(_clip_path, files)):
        return False
    return all(
        isinstance(d, list) and len(d) == 1 and (root / rel).is_file() and _sha256(root / rel) == d[0]
        for rel, d in files.items()
    )


def make_dataset(
    root: Path | str,
    cfg: SynthConfig = SynthConfig(),
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write a synthetic DCASE-2025-layout dataset under ``root``.

    Writes ``root/<machine>/{train,test,supplemental}/*.wav`` (16-bit PCM, ``cfg.sample_rate``)
    with official names, and ``root/asd-synth.json`` (the config and the SHA-256 of every clip).
    Re-running on the same folder replaces the dataset (clips of an earlier config are removed);
    each file is written atomically. A clip it did not write, or one changed since, is an error
    before anything is written: nothing else is overwritten or removed. The record is updated
    before each clip is written, so a run stopped half way can be run again.

    Returns
    -------
    list of Path
        The written clips, sorted.

    Raises
    ------
    DataError
        ``root`` is a file, a non-empty folder that this function did not make, or one holding
        clips it did not write.
    """
    root = Path(root)
    ours = _written_before(root)
    _check_only_ours(root, ours)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, set[str]] = {}
    for machine in cfg.machines:
        for rel, kwargs in _plan(cfg, machine):
            path = root / machine / rel
            key = path.relative_to(root).as_posix()
            data = _wav_bytes(render_clip(cfg, machine, **kwargs), cfg.sample_rate)
            written[key] = {hashlib.sha256(data).hexdigest()}
            ours[key] = ours.get(key, set()) | written[key]  # either content is ours if this run stops now
            _write_marker(root, None, ours)
            _write_clip(path, data)
            if progress is not None:
                progress(1)
    for stale in sorted(set(ours) - set(written)):  # clips of an earlier config, each unchanged since
        if _is_ours(root, stale, ours):
            (root / stale).unlink()
    _write_marker(root, cfg, written)
    return sorted(root / rel for rel in written)


def count_clips(cfg: SynthConfig) -> int:
    """How many clips ``make_dataset`` writes for ``cfg``."""
    per_machine = cfg.n_train_source + cfg.n_train_target + 4 * cfg.n_test_per_cell + 2 * cfg.n_supplemental
    return per_machine * len(cfg.machines)
