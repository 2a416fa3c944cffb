"""Stage bookkeeping for `asd run`: a stage is skipped when it finished before from the same
inputs and options (its key) and every output it recorded is still the file it wrote.

``RUN_DIR/stages/<name>.json`` holds the key, the status (``started`` while the stage runs,
``done`` after) and, once done, the size and SHA-256 of every output file, by path relative to
the run folder (so a copied or moved run folder stays fresh). The record is written atomically
*after* the outputs, so a run interrupted mid-stage never looks finished; a deleted, truncated or
replaced output makes the stage run again, and the files a record lists are the only ones a
later run of that stage may remove.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asdcli.artifacts import sha256_file, write_json_atomic

STAGE_SCHEMA = 2
READ_SCHEMAS = (1, 2)  # schema 1 (no status, no file stamps): its key still resumes fine-tuning
STARTED, DONE = "started", "done"


def stage_key(inputs: Mapping[str, Any]) -> str:
    """A stable hash of a stage's inputs and options (canonical JSON, sorted keys)."""
    blob = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of file names, sizes and modification times: changes when any input clip changes."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def stamp_of(path: Path) -> dict[str, Any] | None:
    """Size and SHA-256 of a file, or None when it is not a readable file."""
    try:
        return {"size": path.stat().st_size, "sha256": sha256_file(path)} if path.is_file() else None
    except OSError:
        return None


@dataclass(frozen=True)
class Stage:
    """One stage of a run folder: its name and the key of what it is made from."""

    run_dir: Path
    name: str
    key: str

    @property
    def record_path(self) -> Path:
        return self.run_dir / "stages" / f"{self.name}.json"

    def record(self) -> dict[str, Any]:
        """The stage's record as written by any earlier run ({} when there is none or it is unreadable)."""
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) and record.get("schema_version") in READ_SCHEMAS else {}

    def recorded_outputs(self) -> list[Path]:
        """The output files the last finished run of this stage wrote (whatever its key)."""
        outputs = self.record().get("outputs")
        return [self.run_dir / rel for rel in outputs] if isinstance(outputs, dict) else []

    def started_with_same_key(self) -> bool:
        """True when a run of this stage with this key started (and maybe finished) before."""
        record = self.record()
        return record.get("key") == self.key and record.get("status", DONE) in (STARTED, DONE)

    def changed_outputs(self) -> list[Path] | None:
        """The outputs a finished run with this key recorded that are no longer the files it wrote
        (edited, replaced or deleted since): [] when the stage is fresh; None for a stage of another key
        or not finished."""
        record = self.record()
        outputs = record.get("outputs")
        if record.get("key") != self.key or record.get("status") != DONE or not isinstance(outputs, dict):
            return None
        return [self.run_dir / rel for rel, stamp in outputs.items() if stamp_of(self.run_dir / rel) != stamp]

    def finished(self) -> bool:
        """True when the record says the stage finished and lists its outputs' stamps (any key)."""
        record = self.record()
        return record.get("status") == DONE and isinstance(record.get("outputs"), dict)

    def wrote_unchanged(self, path: Path) -> bool:
        """True when the record lists ``path`` (under the run folder) with its current size and SHA-256."""
        outputs = self.record().get("outputs")
        if not isinstance(outputs, dict):
            return False
        stamp = outputs.get(Path(path).relative_to(self.run_dir).as_posix())
        return stamp is not None and stamp_of(Path(path)) == stamp

    def outputs_id(self) -> str:
        """A hash of the recorded outputs' stamps: part of the key of the stages that read them."""
        return stage_key({"stage": self.name, "outputs": self.record().get("outputs")})

    def mark_started(self) -> None:
        """Record that the stage runs with this key (its earlier outputs stay listed for clean-up)."""
        previous = self.record().get("outputs")
        write_json_atomic(self.record_path, {"schema_version": STAGE_SCHEMA, "stage": self.name, "key": self.key,
                                             "status": STARTED, "outputs": previous if isinstance(previous, dict)
                                             else {}})  # fmt: skip

    def mark_done(self, outputs: Sequence[Path], details: Mapping[str, Any] | None = None) -> None:
        """Record the outputs (every one must exist) with their size and hash, and ``details``."""
        stamps = {}
        for path in outputs:
            stamp = stamp_of(path)
            if stamp is None:
                raise FileNotFoundError(f"stage {self.name} did not write {path}")
            stamps[Path(path).relative_to(self.run_dir).as_posix()] = stamp
        write_json_atomic(
            self.record_path,
            {
                "schema_version": STAGE_SCHEMA,
                "stage": self.name,
                "key": self.key,
                "status": DONE,
                "outputs": stamps,
                **(dict(details) if details else {}),
            },
        )
