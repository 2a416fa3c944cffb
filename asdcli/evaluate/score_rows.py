"""Rows of score and decision CSVs (``filename,value``, no header; DCASE 2025 Task 2 format) and
JSON lines, as `asd score` writes them: read with the ``csv`` module, file names kept as written."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asdcli.errors import DataError


@dataclass(frozen=True)
class Entry:
    """One row of a score or decision file: its file, line number, clip name and value."""

    file: str
    line: int
    name: str
    value: float


def is_header(row: Sequence[str]) -> bool:
    return bool(row) and row[0].strip().lower() in ("filename", "file_name", "file")


def parse_rows(text: str, where: str, decisions: bool = False) -> list[Entry]:
    """Rows ``filename,value`` of a score (or decision) CSV, read with the ``csv`` module (a name
    may hold a quoted comma, quote or newline; a UTF-8 BOM is dropped); JSON lines
    ``{"filename", "score"}`` (``asd score --format jsonl``) are accepted too. A header line
    ``filename,...`` is skipped.

    Raises DataError on a row of other than 2 columns, a non-numeric or non-finite score, or a
    decision not 0/1.
    """
    text = text.removeprefix("\ufeff")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        return _json_rows(text, where, decisions)
    entries: list[Entry] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    for row in reader:
        lineno, start = start, reader.line_num + 1
        if not any(c.strip() for c in row):
            continue
        at = f"{where} line {lineno}"
        if not entries and is_header(row):
            continue
        if len(row) != 2:  # 'filename,label,score' would be read as scoring the labels
            raise DataError(
                f"{at}: expected 2 columns 'filename,{'0|1' if decisions else 'score'}', got {len(row)}: "
                f"{','.join(row)!r}; quote a name holding a comma."
            )
        entries.append(
            Entry(where, lineno, row[0], _value(row[1].strip(), at, decisions))
        )  # a name may start with a space
    return entries


def _json_rows(text: str, where: str, decisions: bool) -> list[Entry]:
    key = "decision" if decisions else "score"
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where} line {lineno}"
        try:
            rec = json.loads(line)
            name, raw = str(rec["filename"]), str(rec[key])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{at}: not a JSON object with 'filename' and '{key}' ({e}).") from e
        entries.append(Entry(where, lineno, name, _value(raw, at, decisions)))
    return entries


# What the official evaluator (pandas) and a spreadsheet read as a number: ASCII digits, no
# Python-only forms such as "1_000" or non-ASCII digits, which float() would accept.
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _value(raw: str, at: str, decisions: bool) -> float:
    value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
    if decisions and value not in (0.0, 1.0):
        raise DataError(f"{at}: a decision must be 0 or 1, got {raw!r}.")
    if not math.isfinite(value):
        raise DataError(
            f"{at}: the score {raw!r} is not a finite number in plain decimal digits (such as 0.25 or "
            "1.5e-03); every clip needs a numeric score."
        )
    return value


def read_text(path: Path) -> str:
    """A CSV input as text (UTF-8, a leading BOM dropped; bytes that are not UTF-8, as `asd score`
    writes a file name that is not UTF-8, decoded with surrogateescape like the file names on
    disk); an unreadable file is a DataError."""
    try:
        return path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e}.") from e
