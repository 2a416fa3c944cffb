"""`asd package`: a DCASE 2025 Task 2 submission package from a run or submission folder.

Layout (the challenge's submission page: one zip holding per task the system outputs, one meta
file per system and the technical report; a system's label is
``<Surname>_<INSTITUTE>_task2_<N>``, N = 1..4)::

    OUT/
      <team>_task2_<N>.zip                 the package to upload, holding task2/ below
      task2/
        <team>_task2_<N>/
          <team>_task2_<N>.meta.yaml       system meta information (placeholders: FILL IN)
          anomaly_score_<machine>_section_<SS>_test.csv
          decision_result_<machine>_section_<SS>_test.csv
        <team>_task2.technical_report.pdf  not written: add your report before uploading

Before anything is written the submission is checked against the dataset's test clips: every
machine/section has both files, every test clip exactly one row in each, every score finite,
every decision 0 or 1. A score file in a form other than the challenge's plain ``filename,value``
rows (JSON lines, a header line, a BOM) is packed as such rows. A problem is a DataError naming the file and the clips. Files of machines
the dataset does not have (the dev machines of a run over dev and eval data) are left out, and
said so. An `asd run` folder's banks, submission files and test embeddings are first checked
against its stage records (:mod:`asdcli.pipeline.run_check`). The meta YAML is written by
:mod:`asdcli.evaluate.system_meta`.

Packing again replaces only what an earlier `asd package` wrote: its zip carries a comment that
hashes its entries (:func:`_marker`), and that zip's CRC-32s vouch for the files in the folder. A
zip without that comment, or changed since, is never overwritten.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from asdcli.artifacts import write_bytes_atomic
from asdcli.errors import ConfigError, DataError
from asdcli.evaluate.ground_truth import first_few
from asdcli.evaluate.score_rows import Entry, is_header, parse_rows, read_text
from asdcli.evaluate.system_meta import system_meta
from asdcli.pipeline.run_check import check_run_file, check_run_pair

TASK = "task2"
_TEAM = re.compile(r"^[A-Za-z][A-Za-z0-9-]*_[A-Za-z0-9-]+$")
_SCORE = "anomaly_score_{m}_section_{s}_test.csv"
_DECISION = "decision_result_{m}_section_{s}_test.csv"
ZIP_MARKER = "written by asd package"  # the start of the comment of every zip it writes


def check_team(team: str) -> str:
    """``team`` if it is a label prefix ``<Surname>_<INSTITUTE>``, else a ConfigError."""
    if not _TEAM.match(team):
        raise ConfigError(f"--team must be <Surname>_<INSTITUTE> (letters, digits, '-'), e.g. Doe_ACME; got {team!r}.")
    return team


@dataclass(frozen=True)
class PackageConfig:
    """What `asd package` does: the input, the system label and where the package goes."""

    source: Path  # a run folder (with submission/) or a submission folder
    team: str  # <Surname>_<INSTITUTE>, e.g. Doe_ACME
    system: int  # 1..4
    out: Path
    data: Path | None = None  # dataset root whose test clips the submission must cover

    def __post_init__(self) -> None:
        check_team(self.team)
        if not 1 <= self.system <= 4:
            raise ConfigError(
                f"--system must be 1, 2, 3 or 4 (the challenge takes up to 4 systems), got {self.system}."
            )

    @property
    def label(self) -> str:
        return f"{self.team}_{TASK}_{self.system}"


def locate(source: Path) -> tuple[Path, Path | None]:
    """(submission folder, run folder or None) of ``source``."""
    if (source / "submission").is_dir():
        return source / "submission", source
    if source.is_dir() and any(source.glob("anomaly_score_*_test.csv")):
        run = source.parent if (source.parent / "banks").is_dir() else None
        return source, run
    raise DataError(
        f"{source} is neither a run folder (with submission/) nor a submission folder "
        "(anomaly_score_*_test.csv); pass what `asd run` or `asd score --submission-dir` wrote."
    )


def expected_clips(data: Path | None, run: Path | None) -> dict[tuple[str, str], set[str]]:
    """Test clip names per (machine, section): from ``data`` (preferred) or the run's test embeddings."""
    if data is not None:
        from asdcli.data.dataset import discover_clips

        clips = [(c.machine, c.section, c.name) for c in discover_clips([data], splits={"test"})]
    elif run is not None and (run / "embeddings" / "test.npz").is_file():
        from asdcli.artifacts import load_embeddings

        path = run / "embeddings" / "test.npz"
        check_run_file(run, "embed", path, "embeddings file")
        emb = load_embeddings(path)
        clips = list(zip(emb.machine.tolist(), emb.section.tolist(), emb.filenames.tolist()))
    else:
        raise DataError("Cannot tell which test clips the package must cover: add --data DATA (the evaluation set).")
    out: dict[tuple[str, str], set[str]] = {}
    for machine, section, name in clips:
        out.setdefault((machine, section), set()).add(name)
    if not out:
        raise DataError(f"No test clips under {data}; point --data at the dataset root with <machine>/test/.")
    return out


def _check_file(path: Path, names: set[str], decisions: bool) -> bytes:
    """The file's body for the upload, after checking it against the test clip ``names``."""
    if not path.is_file():
        raise DataError(f"{path.name} is missing from {path.parent}; every machine/section needs it.")
    text = read_text(path)
    rows = parse_rows(text, str(path), decisions=decisions)  # finite scores, decisions 0/1
    seen = [e.name for e in rows]
    dups = sorted({n for n in seen if seen.count(n) > 1})
    extra, missing = sorted(set(seen) - names), sorted(names - set(seen))
    for what, bad in (
        ("listed more than once", dups),
        ("not test clips of the dataset", extra),
        ("test clips without a row", missing),
    ):
        if bad:
            raise DataError(f"{path}: {len(bad)} {what}: {first_few(bad)}; every test clip needs exactly one row.")
    return _upload_body(path.read_bytes(), text, rows, decisions)


def _upload_body(raw: bytes, text: str, rows: Sequence[Entry], decisions: bool) -> bytes:
    """``raw`` when it is plain ``filename,score`` rows; a score file that asd score or report also
    reads (JSON lines, a header line, a BOM) is rewritten as such rows, each value exact (``repr``).
    Decision files are always written as ``filename,0|1`` (``0.0``, ``+1`` and the like become 0, 1)."""
    csv_rows = list(csv.reader(io.StringIO(text, newline="")))
    plain = (
        not raw.startswith(codecs.BOM_UTF8)
        and not text.lstrip().startswith("{")  # JSON lines
        and len(csv_rows) == len(rows)  # no blank, empty-cell or header row that parse_rows skipped, no JSON
        and all(len(r) == 2 for r in csv_rows)
        and not (csv_rows and is_header(csv_rows[0]))
    )
    if plain and not decisions:
        return raw
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows((e.name, int(e.value) if decisions else repr(e.value)) for e in rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def check_submission(
    submission: Path, expected: Mapping[tuple[str, str], set[str]]
) -> tuple[dict[str, bytes], list[str]]:
    """The bodies (by file name) of the submission's files for the machines/sections of
    ``expected``, after checking them (see the module docstring), and the names of the other files
    it holds (left out of the package: the dev machines of a run over dev and eval data)."""
    bodies = {}
    for (machine, section), names in sorted(expected.items()):
        for pattern, decisions in ((_SCORE, False), (_DECISION, True)):
            path = submission / pattern.format(m=machine, s=section)
            bodies[path.name] = _check_file(path, names, decisions)
    others = sorted(p.name for p in submission.glob("*_test.csv") if p.name not in bodies)
    return bodies, others


def _marker(entries: Sequence[zipfile.ZipInfo]) -> bytes:
    """The comment of a zip `asd package` wrote: a hash of its entries' names, sizes and CRC-32s,
    so a zip that anyone else made, or changed since (e.g. `zip -u` with the report), lacks it."""
    digest = hashlib.sha256()
    for info in entries:
        digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode("utf-8", "surrogateescape"))
    return f"{ZIP_MARKER} sha256:{digest.hexdigest()}".encode("ascii")


def _zip_bytes(root: Path, files: Sequence[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(root).as_posix())
        archive.comment = _marker(archive.infolist())
    return buf.getvalue()


def _packed_crcs(archive: Path, folder: str) -> dict[str, int] | None:
    """CRC-32 of each file an earlier `asd package` put into ``archive`` under ``folder`` (its
    record of what it wrote there): {} when there is no archive, None when ``archive`` is anything
    but a zip that `asd package` wrote, unchanged since (its comment says so, see :func:`_marker`)."""
    if not archive.exists() and not archive.is_symlink():
        return {}
    if archive.is_symlink() or not archive.is_file():
        return None
    try:
        with zipfile.ZipFile(archive) as z:
            entries = z.infolist()
            if z.comment != _marker(entries):
                return None
    except (OSError, zipfile.BadZipFile):
        return None
    return {i.filename.rsplit("/", 1)[1]: i.CRC for i in entries if i.filename.startswith(folder + "/")}


def _stale_files(folder: Path, packed: Mapping[str, int], new: Mapping[str, bytes]) -> list[Path]:
    """The files of an earlier package in ``folder`` that the new one does not hold (to remove).

    Every file there must be one an earlier `asd package` wrote, unchanged since (as its zip
    records in ``packed``), or hold exactly what is written now; anything else (a user's file, an
    edited meta YAML) is a DataError: nothing asdcli did not write is deleted or overwritten.
    """
    if not folder.is_dir():
        return []
    foreign = []
    for path in sorted(folder.iterdir()):
        body = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        if body is None or (body != new.get(path.name) and packed.get(path.name) != zlib.crc32(body)):
            foreign.append(path.name)
    if foreign:
        raise DataError(
            f"{folder} holds {len(foreign)} file(s) that asd package did not write there or that changed since: "
            f"{first_few(foreign)}; move them out (copy the fields you filled in into the new meta YAML) and run again."
        )
    return [folder / name for name in sorted(set(packed) - set(new)) if (folder / name).is_file()]


def _check_out_outside(out: Path, inputs: Sequence[Path]) -> None:
    """ConfigError when --out is one of the input folders or inside one: the package would be
    mixed with the score files (a later `asd score` into that folder refuses it) or the banks."""
    real = out.resolve()
    for folder in inputs:
        if real == folder.resolve() or folder.resolve() in real.parents:
            raise ConfigError(f"--out {out} is inside {folder}, which asd package reads; choose another --out.")


def write_package(cfg: PackageConfig) -> tuple[Path, list[str]]:
    """Check the submission, write OUT/task2/<label>/ (removing the files of an earlier package
    that this one does not hold) and OUT/<label>.zip; returns the zip and the submission's files
    left out (machines the dataset does not have)."""
    submission, run = locate(cfg.source)
    _check_out_outside(cfg.out, [submission, *([run / "banks"] if run is not None else [])])
    if run is not None:  # its banks (the meta YAML's facts) and submission as `asd run` wrote them
        check_run_pair(submission, run / "banks", decisions=True)
    new, left_out = check_submission(submission, expected_clips(cfg.data, run))
    folder = cfg.out / TASK / cfg.label
    archive = cfg.out / f"{cfg.label}.zip"
    new[f"{cfg.label}.meta.yaml"] = system_meta(cfg, run).encode("utf-8", "surrogateescape")
    packed = _packed_crcs(archive, f"{TASK}/{folder.name}")
    if packed is None:
        raise DataError(
            f"{archive} was not written by asd package, or changed since (e.g. a file added to it); "
            "move it away or choose another --out: nothing asdcli did not write is overwritten."
        )
    for stale in _stale_files(folder, packed, new):
        stale.unlink()
    for name, body in new.items():
        write_bytes_atomic(folder / name, body)
    write_bytes_atomic(archive, _zip_bytes(cfg.out, [folder / name for name in new]))
    return archive, left_out
