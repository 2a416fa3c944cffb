"""Stage bookkeeping for `asd run`: a stage is skipped when its outputs exist and were made from
the same inputs and options (its key), and redone otherwise.

Each finished stage writes ``RUN_DIR/stages/<name>.json`` atomically *after* its outputs are in
place, so a run interrupted mid-stage never looks finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asdcli.artifacts import write_json_atomic

STAGE_SCHEMA = 1


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


@dataclass(frozen=True)
class Stage:
    """One pipeline stage of a run folder: its name, key and the outputs it must leave."""

    run_dir: Path
    name: str
    key: str
    outputs: tuple[Path, ...]

    @property
    def record_path(self) -> Path:
        return self.run_dir / "stages" / f"{self.name}.json"

    def is_fresh(self) -> bool:
        """True when the stage finished before with the same key and all outputs still exist."""
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return record.get("key") == self.key and all(p.exists() for p in self.outputs)

    def mark_done(self, details: Mapping[str, Any] | None = None) -> None:
        write_json_atomic(
            self.record_path,
            {
                "schema_version": STAGE_SCHEMA,
                "stage": self.name,
                "key": self.key,
                "outputs": [str(p) for p in self.outputs],
                **(dict(details) if details else {}),
            },
        )


def make_stage(run_dir: Path, name: str, inputs: Mapping[str, Any], outputs: Sequence[Path]) -> Stage:
    return Stage(run_dir=run_dir, name=name, key=stage_key(inputs), outputs=tuple(outputs))
