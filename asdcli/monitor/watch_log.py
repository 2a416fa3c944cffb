"""The `asd watch` log: an append-only CSV, one row (:data:`LOG_COLUMNS`) per scored file.

Each row is appended with a single ``write`` on an ``O_APPEND`` descriptor, then fsync: a row is in
the log whole or not at all (a torn last line after a power cut is ignored and fenced off by a
newline on restart).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from asdcli.backend.score import format_score
from asdcli.errors import AsdError, ConfigError
from asdcli.monitor.windows import trailing_anomalous

LOG_COLUMNS = ("time", "filename", "score", "threshold", "decision", "windows", "anomalous_windows",
               "trailing_anomalous")  # fmt: skip
_FIRST_LOG_COLUMNS = LOG_COLUMNS[:5]  # the log before the window counts


@dataclass
class ScoreLog:
    """The append-only CSV log; ``rows`` holds what it had when opened plus what was appended."""

    path: Path
    rows: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> ScoreLog:
        log = cls(Path(path))
        if log.path.exists() and not log.path.is_file():
            raise ConfigError(f"--log {log.path} is not a file (a folder?); give the path of a CSV file.")
        if not log.path.is_file() or log.path.stat().st_size == 0:
            log._append(",".join(LOG_COLUMNS) + "\n")
            return log
        text = log.path.read_text(encoding="utf-8", errors="surrogateescape")
        header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])
        if tuple(header) == _FIRST_LOG_COLUMNS:
            raise ConfigError(
                f"{log.path} is a log of an earlier asdcli, without the window counts a restart resumes "
                "streaks from; move it aside or choose another --log file."
            )
        if tuple(header) != LOG_COLUMNS:  # checked before anything is appended: never touch a foreign file
            raise ConfigError(f"{log.path} is not an `asd watch` log (header {header[:6]}); choose another --log file.")
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        if complete != text:
            log._append("\n")  # fence off a torn last row
        reader = csv.DictReader(io.StringIO(complete))
        log.rows = [r for r in reader if _is_whole(r)]
        return log

    @property
    def names(self) -> set[str]:
        return {r["filename"] for r in self.rows}

    def _append(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                written = os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:  # a full disk: stop, rather than score files that are never logged
            raise AsdError(f"Cannot append to the log {self.path}: {e.strerror or e}; free disk space or "
                           "choose another --log file, then start asd watch again.") from e  # fmt: skip
        if written != len(data):  # a row appended after this torn one would be mangled with it
            raise AsdError(
                f"Cannot append to the log {self.path}: {written} of {len(data)} bytes written (disk full?); "
                "free disk space and start asd watch again (it fences off the torn row)."
            )

    def append(self, filename: str, score: float, threshold: float, flags: np.ndarray) -> dict[str, str]:
        """Log a file: its score and the threshold, its decision (score above it) and its window
        decisions ``flags`` (N,) as counts."""
        row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "filename": filename,
               "score": format_score(score), "threshold": format_score(threshold),
               "decision": str(int(score > threshold)), "windows": str(len(flags)),
               "anomalous_windows": str(int(np.sum(flags))), "trailing_anomalous": str(trailing_anomalous(flags))}  # fmt: skip
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row[c] for c in LOG_COLUMNS])
        self._append(buf.getvalue())
        self.rows.append(row)
        return row


def _is_whole(row: dict[str, str]) -> bool:
    """A row with a decision and window counts (not a torn or hand-mangled one)."""
    counts = (row.get(c) for c in ("windows", "anomalous_windows", "trailing_anomalous"))
    return row.get("decision") in ("0", "1") and all(str(c).isdigit() for c in counts)
