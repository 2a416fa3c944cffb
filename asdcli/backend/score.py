"""Scoring embeddings against banks, decisions, and the challenge's CSV files.

Score files (DCASE 2025 Task 2 format): ``filename,score`` per line, no header, ``\\n`` line ends,
higher = more anomalous; decision files: ``filename,0|1`` (1 = anomaly, score > bank threshold).
Written with the ``csv`` module (a name holding a comma, quote or newline is quoted); scores
with ``%.9g`` (round-trips float32 exactly).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asdcli.artifacts import Embeddings, check_name_length, make_temp_dir, through_link, write_text_atomic
from asdcli.backend import knn
from asdcli.backend.bank import Bank
from asdcli.data.names import Clip, missing_field_error
from asdcli.errors import ArtifactMismatch, ArtifactNotFound, AsdError, ConfigError, DataError
from asdcli.frontend.spec import check_same_frontend, check_same_windows, spec_of

if TYPE_CHECKING:
    from asdcli.frontend.embedder import EmbedConfig

SCORE_FORMATS = ("csv", "jsonl")


def check_compatible(
    bank: Bank, emb: Embeddings, what_bank: str = "the bank", what_emb: str = "the embeddings"
) -> None:
    """Raise ArtifactMismatch when ``emb`` was not made like the bank's training embeddings (front
    end, and windows of the same length and hop when both are windows of long recordings)."""
    if emb.dim != bank.dim:
        raise ArtifactMismatch(
            f"{what_bank} has dimension {bank.dim} but {what_emb} has {emb.dim}; "
            "embed the test clips with the checkpoint and adapter used for the bank."
        )
    check_same_frontend(bank.embedding_meta, emb.meta, what_bank, what_emb)
    check_same_windows(bank.embedding_meta, emb.meta, what_bank, what_emb)


def score_vectors(bank: Bank, vectors: np.ndarray) -> np.ndarray:
    """Anomaly scores of raw embeddings ``vectors`` (N, D): (N,) float32, higher = more anomalous."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != bank.dim:
        raise ArtifactMismatch(
            f"Embeddings of shape {vectors.shape} do not fit the bank of {bank.name} (dimension {bank.dim})."
        )
    if vectors.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    return bank.score_prepared(knn.prepare(vectors, bank.mean, bank.std))


def score_embeddings(bank: Bank, emb: Embeddings, what: str = "the embeddings") -> np.ndarray:
    """Scores (N,) float32 of every row of ``emb`` after checking it matches the bank's front end."""
    check_compatible(bank, emb, f"The bank of {bank.name}", what)
    return score_vectors(bank, emb.vectors)


def decide(bank: Bank, scores: np.ndarray) -> np.ndarray:
    """Decisions (N,) int8: 1 (anomaly) where score > the bank's threshold, else 0."""
    return (np.asarray(scores) > bank.threshold).astype(np.int8)


def fits_bank(bank: Bank, clip: Clip) -> bool:
    """False when the clip's machine or section, where known, is not the bank's."""
    return not (clip.machine and clip.machine != bank.machine) and not (clip.section and clip.section != bank.section)


def bank_clips(
    bank: Bank, found: Sequence[Clip], skip_other_sections: bool, note: Callable[[str], None] | None = None
) -> list[Clip]:
    """The clips of the bank's machine/section (`asd score`, with or without ``--window``): a clip of
    another one is a DataError, or with ``skip_other_sections`` skipped and counted to ``note``."""
    others = [c for c in found if not fits_bank(bank, c)]
    if others and not skip_other_sections:
        first = others[0]
        raise DataError(
            f"{len(others)} clip(s) are not of the bank's {bank.name}, e.g. {first.path} "
            f"({first.machine or '?'} section {first.section or '?'}); pass the clips of that "
            "machine/section, or --skip-other-sections to skip them."
        )
    kept = [c for c in found if fits_bank(bank, c)]
    if not kept:
        raise DataError(f"None of the {len(found)} clip(s) is of the bank's {bank.name}; nothing to score.")
    if others and note is not None:
        note(f"Skipped {len(others)} clip(s) of other machines/sections than {bank.name}.")
    return kept


def select_test(emb: Embeddings, machine: str, section: str) -> Embeddings:
    """The test rows of ``emb`` for one machine/section."""
    return emb.select((emb.split == "test") & (emb.machine == machine) & (emb.section == section))


def sections_with_test_clips(emb: Embeddings) -> list[tuple[str, str]]:
    """Sorted (machine, section) pairs with test clips in ``emb``."""
    test = emb.split == "test"
    return sorted({(str(m), str(s)) for m, s in zip(emb.machine[test], emb.section[test])})


def format_score(x: float) -> str:
    return f"{float(x):.9g}"


def _csv_text(rows: Iterable[Iterable[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def format_rows(
    filenames: Iterable[str],
    scores: np.ndarray,
    decisions: np.ndarray | None = None,
    fmt: str = "csv",
    header: bool = False,
) -> str:
    """Score lines: CSV ``filename,score`` (optionally a header line) or JSONL objects
    ``{"filename", "score"[, "decision"]}``; every line ends with ``\\n``."""
    if fmt not in SCORE_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(SCORE_FORMATS)}, got {fmt!r}.")
    names = [str(f) for f in filenames]
    if fmt == "csv":
        rows: list[tuple[str, str]] = [("filename", "score")] if header else []
        return _csv_text(rows + [(n, format_score(s)) for n, s in zip(names, scores)])
    lines = []
    for i, (n, s) in enumerate(zip(names, scores)):
        rec: dict[str, object] = {"filename": n, "score": float(format_score(s))}
        if decisions is not None:
            rec["decision"] = int(decisions[i])
        lines.append(json.dumps(rec))
    return "".join(line + "\n" for line in lines)


def format_decisions(filenames: Iterable[str], decisions: np.ndarray) -> str:
    """``filename,0|1`` lines, no header."""
    return _csv_text((str(n), int(d)) for n, d in zip(filenames, decisions))


def check_not_windows(emb: Embeddings, what: str) -> None:
    """DataError when ``emb`` holds windows of long recordings: several rows per file, not clips."""
    if emb.meta.get("window"):
        raise DataError(
            f"{what} holds windows of long recordings (`asd embed --window`), several rows per file, not "
            "clips; score the recordings themselves with `asd score --bank BANK REC... --window SECONDS`."
        )


def check_unique_names(emb: Embeddings, what: str) -> None:
    """DataError naming both clips when two rows share a file name (or when ``emb`` holds windows):
    an output that names clips by file name could not tell them apart."""
    check_not_windows(emb, what)
    first: dict[str, int] = {}
    for i, name in enumerate(emb.filenames):
        j = first.setdefault(str(name), i)
        if j != i:
            a, b = emb.paths[j] or name, emb.paths[i] or name
            same = "the same clip twice" if a == b else "two clips"
            raise DataError(
                f"{what} holds {same} named {name} ({a} and {b}); outputs name clips by file name, "
                "so embed each clip once and score folders with equal names separately."
            )


def write_decisions(path: str | Path, filenames: Iterable[str], decisions: np.ndarray) -> None:
    """Write a decision CSV atomically."""
    write_text_atomic(path, format_decisions(filenames, decisions))


def submission_names(machine: str, section: str) -> tuple[str, str]:
    """File names of one machine/section's score and decision files."""
    tail = f"{machine}_section_{section}_test.csv"
    return f"anomaly_score_{tail}", f"decision_result_{tail}"


def _is_submission_file(p: Path) -> bool:
    return p.is_file() and p.suffix == ".csv" and p.name.startswith(("anomaly_score_", "decision_result_"))


def _bank_map(banks: Mapping[tuple[str, str], Bank] | Iterable[Bank]) -> dict[tuple[str, str], Bank]:
    items = banks.values() if isinstance(banks, Mapping) else banks
    return {(b.machine, b.section): b for b in items}


def submission_files(
    banks: Mapping[tuple[str, str], Bank] | Iterable[Bank], test_emb: Embeddings, what: str = "the test embeddings"
) -> dict[str, str]:
    """The submission folder's content {file name: text} for every machine/section with test clips.

    All checks happen here, before anything is written: every test clip has a machine, a bank
    exists for each machine/section and matches the embeddings, and no file name repeats.
    """
    bank_map = _bank_map(banks)
    test = test_emb.split == "test"
    if not test.any():
        raise DataError(f"{what} has no test clips; embed the test folders.")
    for field in ("machine", "section"):
        lacking = test & (getattr(test_emb, field) == "")
        if lacking.any():
            named = [p or f for p, f in zip(test_emb.paths[lacking], test_emb.filenames[lacking])]
            raise missing_field_error(field, f"A submission from {what}", named)
    files: dict[str, str] = {}
    for m, s in sections_with_test_clips(test_emb):
        bank = bank_map.get((m, s))
        if bank is None:
            have = ", ".join(f"{bm} section {bs}" for bm, bs in sorted(bank_map)) or "none"
            raise DataError(f"No bank for {m} section {s} (banks: {have}); fit it with `asd fit-bank --out-dir`.")
        rows = select_test(test_emb, m, s)
        check_unique_names(rows, f"{what} ({m} section {s})")
        scores = score_embeddings(bank, rows, what)
        score_name, decision_name = submission_names(m, s)
        files[score_name] = format_rows(rows.filenames, scores)
        files[decision_name] = format_decisions(rows.filenames, decide(bank, scores))
    return files


def write_submission(
    banks: Mapping[tuple[str, str], Bank] | Iterable[Bank],
    test_emb: Embeddings,
    out_dir: str | Path,
    what: str = "the test embeddings",
) -> list[Path]:
    """Write the challenge folder: ``anomaly_score_<m>_section_<SS>_test.csv`` and
    ``decision_result_<m>_section_<SS>_test.csv`` for every machine/section with test clips.

    The folder is built beside ``out_dir`` and renamed into place, so it holds exactly these
    files: stale score/decision files of an earlier run are replaced, and a folder holding any
    other file is refused (ConfigError). Returns the written paths, sorted.
    """
    _check_out_dir(Path(out_dir))  # before scoring: a refused folder costs nothing
    return write_submission_folder(submission_files(banks, test_emb, what), out_dir)


def write_submission_folder(files: Mapping[str, str], out_dir: str | Path) -> list[Path]:
    """Write ``files`` {file name: text} as the folder ``out_dir`` (built beside it and renamed into
    place; a folder holding anything but submission files is refused; a link to a folder is written
    through, so it stays a link). Returns the paths, sorted."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        out_dir = through_link(out_dir)
    _check_out_dir(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(parent, out_dir.name, ".tmp")
    except OSError as e:
        raise AsdError(f"Cannot write in {parent}: {e.strerror or e}. Choose a writable output folder.") from e
    try:
        for name, text in files.items():
            try:
                write_text_atomic(tmp / name, text)
            except AsdError as e:  # it names the temp folder; say which output could not be written
                cause = e.__cause__
                why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e)
                raise AsdError(
                    f"Cannot write {out_dir / name}: {why}. Free disk space or choose another output folder."
                ) from e
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out_dir / name for name in files)


def _check_out_dir(out_dir: Path) -> None:
    check_name_length(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"Submission folder {out_dir} is a file; choose a folder path.")
    if out_dir.is_dir():
        others = sorted(p.name for p in out_dir.iterdir() if not _is_submission_file(p))
        if others:
            raise ConfigError(
                f"Submission folder {out_dir} holds other files ({', '.join(others[:3])}); choose an empty or new folder."
            )


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (absent or holding only submission files) by the finished ``tmp``."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = make_temp_dir(out_dir.parent, out_dir.name, ".old")
    previous = old / "previous"
    try:
        os.replace(out_dir, previous)
    except OSError as e:
        shutil.rmtree(old, ignore_errors=True)
        raise AsdError(f"Cannot replace submission folder {out_dir}: {e.strerror}.") from e
    try:
        os.replace(tmp, out_dir)
    except OSError as e:
        os.replace(previous, out_dir)  # put the earlier submission back
        shutil.rmtree(old, ignore_errors=True)
        raise AsdError(f"Cannot replace submission folder {out_dir}: {e.strerror}.") from e
    shutil.rmtree(old, ignore_errors=True)


def _meta_path(meta: Mapping[str, Any], key: str) -> Path | None:
    value = meta.get(key)
    return Path(value) if value else None


def bank_front_end_files(bank: Bank, checkpoint: Path | None, adapter: Path | None) -> list[Path]:
    """The files embedding clips for ``bank`` reads (``checkpoint``/``adapter``, else the bank's
    recorded ones): outputs must never be one of them."""
    from asdcli.frontend.embedder import front_end_files

    meta = bank.embedding_meta
    return front_end_files(
        checkpoint or _meta_path(meta, "checkpoint_path"), adapter or _meta_path(meta, "adapter_path")
    )


def bank_embed_config(
    bank: Bank,
    checkpoint: Path | None = None,
    adapter: Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str | None = None,
) -> EmbedConfig:
    """The EmbedConfig that embeds clips as the bank's training clips were (checkpoint, adapter,
    embedding kind, layers, clip length, channel and precision from its front-end record);
    ``checkpoint``/``adapter``/``precision`` override, and a different front end is then caught
    by the contract check before scoring."""
    from asdcli.frontend.embedder import EMBEDDING_CHOICES, EmbedConfig

    meta = bank.embedding_meta
    spec = spec_of(meta, f"The bank of {bank.name}")
    if spec is None:
        raise ConfigError(
            f"The bank of {bank.name} does not record its front end (made by an older asdcli); "
            "re-fit it from embeddings made with this asdcli."
        )
    ckpt = checkpoint or _meta_path(meta, "checkpoint_path")
    if ckpt is None:
        raise ConfigError(f"The bank of {bank.name} does not record its checkpoint; pass --checkpoint.")
    if checkpoint is None and not Path(ckpt).is_file():
        raise ArtifactNotFound(
            f"The bank of {bank.name} was made with the checkpoint {ckpt}, which does not exist any more "
            "(moved?); pass --checkpoint with its new path (its SHA-256 is checked)."
        )
    adapter = adapter or _meta_path(meta, "adapter_path")
    kind = spec.get("embedding") if adapter is not None and spec.get("embedding") in EMBEDDING_CHOICES else None
    return EmbedConfig(
        checkpoint=ckpt,
        adapter=adapter,
        embedding=kind,
        batch_size=batch_size,
        device=device,
        seconds=spec.get("clip_seconds", 10.0),
        channel=spec.get("channel"),
        layers=str(spec.get("layers", "last")) if adapter is None else "last",
        precision=precision or str(spec.get("precision", "fp32")),
    )
