"""Ground truth of test clips: labels (normal/anomaly) and domains (source/target) per machine and
section, read from the official ground-truth CSVs or from labelled dev file names, and written
back in the official layout::

    GT_DIR/ground_truth_data/ground_truth_<machine>_section_<SS>_test.csv        filename,0|1 (1 = anomaly)
    GT_DIR/ground_truth_domain/ground_truth_<machine>_section_<SS>_test.csv      filename,0|1 (1 = target)
    GT_DIR/ground_truth_attributes/ground_truth_<machine>_section_<SS>_test.csv  filename,<labelled name w/o .wav>[,...]

The attributes file is optional when reading; where present, a submission may name a clip by its
labelled name (column 2, with ``.wav``, or column 3) instead of its anonymised name, as the
official evaluator allows.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdcli.artifacts import write_text_atomic
from asdcli.errors import DataError

if TYPE_CHECKING:
    from asdcli.data.names import Clip

GT_DIRS = ("ground_truth_data", "ground_truth_domain", "ground_truth_attributes")
_GT_NAME = re.compile(r"^ground_truth_(?P<machine>.+?)_section_(?P<section>\d+)_test\.csv$")
SHOW = 5  # names quoted in an error message
_SURROGATE = re.compile("[\ud800-\udfff]")


def first_few(names: Sequence[str], show: int = SHOW) -> str:
    """``"a, b, c and 12 more"``: the first few names and how many were left out."""
    names = list(names)
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


def printable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name (surrogate-escaped) shown as U+FFFD: for
    labels that go into tables, plots and HTML, which cannot hold such bytes."""
    return _SURROGATE.sub("\ufffd", text)


def gt_file_name(machine: str, section: str) -> str:
    return f"ground_truth_{machine}_section_{section}_test.csv"


@dataclass(frozen=True)
class SectionTruth:
    """Labels and domains of the test clips of one machine/section, sorted by file name.

    ``anomaly`` and ``target`` are int8 (N,) arrays (1 = anomaly / target domain); ``labelled``
    holds each clip's labelled name without ``.wav`` (for dev data the file's own stem);
    ``aliases`` maps other accepted names of a clip to its name in ``filenames``.
    """

    machine: str
    section: str
    filenames: tuple[str, ...]
    anomaly: np.ndarray
    target: np.ndarray
    labelled: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.filenames)


@dataclass(frozen=True)
class GroundTruth:
    """Every machine/section's truth, where it came from, and machines known to lack labels."""

    sections: Mapping[tuple[str, str], SectionTruth]
    origin: str
    unlabelled: tuple[str, ...] = ()

    @property
    def machines(self) -> list[str]:
        return sorted({m for m, _ in self.sections})

    def of_machine(self, machine: str) -> list[SectionTruth]:
        return [self.sections[k] for k in sorted(self.sections) if k[0] == machine]

    def require(self, machine: str, section: str | None, what: str) -> SectionTruth:
        """The truth of ``machine``/``section``, or a DataError explaining why there is none
        (``section=None`` always raises: the caller found no section of ``machine``)."""
        truth = self.sections.get((machine, section)) if section is not None else None
        if truth is not None:
            return truth
        if machine in self.unlabelled:
            raise DataError(
                f"{what}: the test clips of {machine} in {self.origin} have no labels in their names "
                "(evaluation set?); pass the official ground truth with --ground-truth GT_DIR."
            )
        have = ", ".join(f"{m} section {s}" for m, s in sorted(self.sections)) or "none"
        sec = "" if section is None else f" section {section}"
        raise DataError(
            f"{what}: no ground truth for {machine}{sec} in {self.origin} (it has: {first_few(have.split(', '))})."
        )


def _make_truth(
    machine: str, section: str, rows: Iterable[tuple[str, int, int, str]], aliases: Mapping[str, str]
) -> SectionTruth:
    ordered = sorted(rows)
    return SectionTruth(
        machine=machine,
        section=section,
        filenames=tuple(r[0] for r in ordered),
        anomaly=np.array([r[1] for r in ordered], dtype=np.int8),
        target=np.array([r[2] for r in ordered], dtype=np.int8),
        labelled=tuple(r[3] for r in ordered),
        aliases={a: n for a, n in aliases.items() if a != n},
    )


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".wav") else name


def ground_truth_from_clips(clips: Iterable[Clip], origin: str) -> GroundTruth:
    """Truth from labelled test clips (``asdcli.data.names.Clip``); names give label and domain.

    A machine whose test clips are all unlabelled (anonymised evaluation names) is listed in
    ``unlabelled``; a machine with some labelled and some unlabelled clips is a DataError.
    """
    groups: dict[tuple[str, str], list[Clip]] = {}
    for clip in clips:
        if clip.split == "test":
            groups.setdefault((clip.machine, clip.section), []).append(clip)
    sections: dict[tuple[str, str], SectionTruth] = {}
    unlabelled: set[str] = set()
    for (machine, section), group in sorted(groups.items()):
        bad = [c.name for c in group if c.label not in ("normal", "anomaly") or c.domain not in ("source", "target")]
        if len(bad) == len(group):
            unlabelled.add(machine)
            continue
        if bad:
            raise DataError(
                f"{len(bad)} test clip(s) of {machine} in {origin} have no label or domain in their names: "
                f"{first_few(bad)}; use official names such as section_00_source_test_normal_0000_<attributes>.wav."
            )
        names = [c.name for c in group]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(
                f"Test clip name(s) {first_few(dup)} occur more than once for {machine} in {origin}; keep one copy."
            )
        rows = [(c.name, int(c.label == "anomaly"), int(c.domain == "target"), _stem(c.name)) for c in group]
        sections[(machine, section)] = _make_truth(machine, section, rows, {})
    if not sections and not unlabelled:
        raise DataError(f"No test clips in {origin}; point --data at a dataset with <machine>/test/ folders.")
    return GroundTruth(
        sections=sections, origin=origin, unlabelled=tuple(sorted(unlabelled - {m for m, _ in sections}))
    )


def ground_truth_from_data(data_root: Path | str) -> GroundTruth:
    """Truth from the labelled test file names under a dev dataset root (any layout that
    ``asdcli.data.dataset.discover_clips`` accepts)."""
    from asdcli.data.dataset import discover_clips

    clips = discover_clips([Path(data_root)], splits={"test"})
    return ground_truth_from_clips(clips, origin=f"the test file names under {data_root}")


def _read_csv_rows(path: Path, min_cols: int) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a headerless CSV with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")  # as the file names on disk
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e}.") from e
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    for row in reader:
        lineno, start = start, reader.line_num + 1
        if not any(c.strip() for c in row):  # names are kept as written: one may start with a space
            continue
        if len(row) < min_cols:
            raise DataError(f"{path} line {lineno} has {len(row)} column(s), expected {min_cols}: {','.join(row)!r}.")
        rows.append((lineno, row))
    return rows


def _read_flags(path: Path) -> dict[str, int]:
    flags: dict[str, int] = {}
    for lineno, (name, raw, *_) in _read_csv_rows(path, 2):
        value = raw.strip()
        if value not in ("0", "1"):
            raise DataError(f"{path} line {lineno}: expected 0 or 1 after the file name, got {value!r}.")
        if name in flags:
            raise DataError(f"{path} lists {name} twice (line {lineno}); fix the ground truth file.")
        flags[name] = int(value)
    return flags


def _read_section(gt_dir: Path, name: str, machine: str, section: str) -> SectionTruth:
    data_path = gt_dir / GT_DIRS[0] / name
    domain_path = gt_dir / GT_DIRS[1] / name
    if not domain_path.is_file():
        raise DataError(f"{data_path} has no companion {domain_path}; the domain of every test clip is needed.")
    labels, domains = _read_flags(data_path), _read_flags(domain_path)
    if labels.keys() != domains.keys():
        diff = sorted(labels.keys() ^ domains.keys())
        raise DataError(f"{data_path} and {domain_path} list different clips ({len(diff)} differ: {first_few(diff)}).")
    labelled = {n: _stem(n) for n in labels}
    aliases: dict[str, str] = {}
    attr_path = gt_dir / GT_DIRS[2] / name
    if attr_path.is_file():
        for _, (fname, *names) in _read_csv_rows(attr_path, 2):
            if fname in labelled:
                labelled[fname] = names[0]
                aliases[names[0] + ".wav"] = fname
                aliases.update({n: fname for n in names[1:] if n})
    rows = [(n, labels[n], domains[n], labelled[n]) for n in labels]
    return _make_truth(machine, section, rows, aliases)


def read_ground_truth(gt_dir: Path | str) -> GroundTruth:
    """Read the official ground-truth layout (see the module docstring) under ``gt_dir``."""
    gt_dir = Path(gt_dir)
    data_dir = gt_dir / GT_DIRS[0]
    if not data_dir.is_dir():
        raise DataError(f"{gt_dir} has no {GT_DIRS[0]}/ folder; expected {', '.join(d + '/' for d in GT_DIRS)}.")
    sections: dict[tuple[str, str], SectionTruth] = {}
    for path in sorted(data_dir.iterdir()):
        m = _GT_NAME.match(path.name)
        if m and path.is_file():
            key = (m["machine"], m["section"])
            sections[key] = _read_section(gt_dir, path.name, *key)
    if not sections:
        raise DataError(f"{data_dir} holds no ground_truth_<machine>_section_<SS>_test.csv file.")
    return GroundTruth(sections=sections, origin=str(gt_dir))


def load_ground_truth(ground_truth: Path | str | None = None, data: Path | str | None = None) -> GroundTruth:
    """Truth from ``--ground-truth`` (official CSVs; wins when both are given) or ``--data``."""
    if ground_truth is not None:
        return read_ground_truth(ground_truth)
    if data is not None:
        return ground_truth_from_data(data)
    raise DataError("No ground truth: pass --ground-truth GT_DIR (official CSVs) or --data DATA (labelled test names).")


def _csv_text(rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def ground_truth_texts(truth: GroundTruth) -> dict[str, str]:
    """The official ground-truth files as ``{relative path: text}`` (sorted rows, ``\\n`` ends,
    names quoted by the ``csv`` module where they need it)."""
    files: dict[str, str] = {}
    for (machine, section), st in sorted(truth.sections.items()):
        name = gt_file_name(machine, section)
        files[f"{GT_DIRS[0]}/{name}"] = _csv_text(zip(st.filenames, (int(a) for a in st.anomaly)))
        files[f"{GT_DIRS[1]}/{name}"] = _csv_text(zip(st.filenames, (int(t) for t in st.target)))
        files[f"{GT_DIRS[2]}/{name}"] = _csv_text(zip(st.filenames, st.labelled))
    return files


def write_ground_truth(truth: GroundTruth, out_dir: Path | str) -> list[Path]:
    """Write the three ground-truth CSVs of every machine/section under ``out_dir`` (each file
    atomically). Returns the written paths, sorted."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; --ground-truth-out needs a folder path.")
    texts = {out_dir / rel: text for rel, text in ground_truth_texts(truth).items()}
    other = [path for path, text in texts.items() if path.exists() and not _holds(path, text)]
    if other:
        more = f" and {len(other) - 1} more" if len(other) > 1 else ""
        raise DataError(
            f"{other[0]}{more} already {'exist' if more else 'exists'} with other content, which asdcli did not write for this "
            "data and will not overwrite; choose an empty --ground-truth-out folder or remove them."
        )
    for path, text in texts.items():
        if not path.exists():
            write_text_atomic(path, text)
    return sorted(texts)


def _holds(path: Path, text: str) -> bool:
    """True when ``path`` is a file holding exactly ``text`` (a re-run writes nothing new)."""
    try:
        return path.is_file() and path.read_bytes() == text.encode("utf-8", errors="surrogateescape")
    except OSError:
        return False
