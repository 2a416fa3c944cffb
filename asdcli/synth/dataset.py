"""A synthetic DCASE-2025-layout dataset on disk: its config, the plan of its clips, writing and checking it.

Everything is a pure function of ``(seed, machine, clip role, clip number)``: the same config
writes byte-identical 16-bit PCM WAV files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asdcli.artifacts import write_json_atomic
from asdcli.errors import ConfigError, DataError
from asdcli.seeds import check_seed
from asdcli.synth.sounds import MACHINES, Attrs, render_clip

MARKER = "asd-synth.json"
GENERATOR = "asdcli.synth.sounds"  # every record carries it (make_dataset lived there first): keep it


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
