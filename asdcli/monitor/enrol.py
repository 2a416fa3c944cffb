"""Enrolment: add normal clips of a new operating condition to a bank without retraining.

The new vectors are embedded with the bank's own front end (a different checkpoint, adapter or
embedding kind is an ArtifactMismatch), standardized with the bank's mean/std and appended; the
density radii (if used) and the decision threshold are refitted as `asd fit-bank` fits them. With
``restandardize`` the bank is refitted from the raw training embeddings plus the new ones (a bank
stores only standardized, L2-normalized vectors, so its raw vectors must come from that file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from asdcli.artifacts import Embeddings, load_embeddings
from asdcli.backend import knn
from asdcli.backend.bank import Bank
from asdcli.backend.bank_fit import build_bank, fit_prepared
from asdcli.backend.score import check_compatible
from asdcli.data.dataset import discover_clips
from asdcli.data.names import DOMAINS
from asdcli.errors import ArtifactMismatch, ConfigError, DataError
from asdcli.frontend.spec import check_same_spacing

SAME_VECTOR_ATOL = 1e-4  # largest component difference of a bank vector recomputed from its raw embedding
# Cosine distance at or below which an enrolled vector is the same sound as a bank vector: one clip
# embedded by two kernels (batch sizes, CPUs) differs by ~1e-5 relative, a distance of ~1e-10, and a
# float32 ``1 - a.b`` of unit D-vectors rounds by up to D * eps; other clips lie 1e-2 and more apart.
SAME_SOUND_DISTANCE = 1e-4


def _check_fits(bank: Bank, emb: Embeddings, what: str) -> None:
    """``emb`` made like the bank's vectors (:func:`check_compatible`), and cut alike: whole clips
    and windows that overlap do not go into one bank."""
    check_compatible(bank, emb, f"The bank of {bank.name}", what)
    check_same_spacing(bank.embedding_meta, emb.meta, f"The bank of {bank.name}", what)


def _check_normal(emb: Embeddings, what: str) -> None:
    bad = emb.filenames[emb.label == "anomaly"]
    if len(bad):
        raise DataError(f"{what} holds anomalous clips ({', '.join(map(str, bad[:3]))}); enrol normal clips only.")


def _check_belongs(bank: Bank, emb: Embeddings) -> None:
    """DataError unless every row is of the bank's machine/section (where known) and new to it:
    another machine's clip, or one already in the bank, would make its threshold wrong."""
    other = np.zeros(len(emb), dtype=bool)
    if bank.machine:
        other |= (emb.machine != "") & (emb.machine != bank.machine)
    if bank.section:
        other |= (emb.section != "") & (emb.section != bank.section)
    if other.any():
        i = int(np.flatnonzero(other)[0])
        raise DataError(
            f"{int(other.sum())} of the clips to enrol are not of the bank's {bank.name}, e.g. "
            f"{emb.paths[i] or emb.filenames[i]} ({emb.machine[i] or '?'} section {emb.section[i] or '?'}); "
            "enrol clips of that machine and section only."
        )
    known = np.isin(emb.filenames, bank.filenames)
    if known.any():
        raise DataError(
            f"{int(known.sum())} of the clips to enrol are already in the bank of {bank.name} (e.g. "
            f"{emb.filenames[int(np.flatnonzero(known)[0])]}); enrol new clips only."
        )


def enrolment_embeddings(bank: Bank, inputs: Sequence[Path], checkpoint: Path | None = None,
                         adapter: Path | None = None, device: str = "auto", batch_size: int | None = None) -> Embeddings:  # fmt: skip
    """Every row of the ``.npz`` inputs and the clips of the others (files; in folders the train
    clips of a DCASE layout, else every audio file), embedded with the bank's front end (window
    by window when the bank was fitted on windows of long recordings)."""
    npz = [p for p in inputs if p.suffix.lower() == ".npz"]
    audio = [p for p in inputs if p.suffix.lower() != ".npz"]
    parts = []
    for path in npz:
        emb = load_embeddings(path)
        _check_fits(bank, emb, str(path))
        parts.append(emb)
    if audio:
        from asdcli.backend.score import bank_embed_config
        from asdcli.frontend.embed import embed_clips

        found = discover_clips(audio)
        clips = [c for c in found if c.split == "train"] or found
        cfg = bank_embed_config(bank, checkpoint, adapter, device, batch_size)
        from asdcli.monitor.embedder import bank_windows

        windows = bank_windows(bank)
        if windows is not None:  # a bank of windows of long recordings: enrol windows cut the same way
            from asdcli.monitor.windowed import window_embeddings
            from asdcli.monitor.windows import WindowSpec

            emb = window_embeddings(clips, cfg, WindowSpec(*windows))[0]
        else:
            emb = embed_clips(clips, cfg)
        _check_fits(bank, emb, "the enrolled clips")
        parts.append(emb)
    if not parts:
        raise ConfigError("Give clips or embeddings files to enrol.")
    emb = Embeddings.concat(parts)
    _check_normal(emb, "The enrolment input")
    _check_belongs(bank, emb)
    return emb


def _refit(bank: Bank, vectors: np.ndarray, domain: np.ndarray, filenames: np.ndarray) -> Bank:
    """``bank`` with these prepared vectors under its own mean/std; normalization and threshold refitted."""
    return fit_prepared(
        vectors,
        domain,
        filenames,
        bank.mean,
        bank.std,
        bank.config,
        machine=bank.machine,
        section=bank.section,
        embedding_meta=bank.embedding_meta,
    )


def _check_new_sounds(bank: Bank, prepared: np.ndarray, names: np.ndarray) -> None:
    """DataError when an enrolled vector ``prepared`` (N, D) is one of the bank's or of another
    enrolled clip (the same audio under another name): its leave-one-out distance, and so the
    refitted threshold, would be 0, as `asd fit-bank` refuses. Windows of a recording may repeat."""
    if bank.embedding_meta.get("window"):
        return
    pool = np.concatenate([bank.vectors, prepared])
    tol = max(SAME_SOUND_DISTANCE, 2 * prepared.shape[1] * float(np.finfo(np.float32).eps))
    rows = len(bank) + np.arange(len(prepared))
    nearest = knn.knn_distances(prepared, pool, 1, self_index=rows)[:, 0]
    if (nearest > tol).all():
        return
    i = int(np.flatnonzero(nearest <= tol)[0])
    distances = 1.0 - pool.astype(np.float64) @ prepared[i].astype(np.float64)
    distances[rows[i]] = np.inf
    other = np.concatenate([bank.filenames, names])[int(np.argmin(distances))]
    raise DataError(
        f"{names[i]} has the embedding of {other} (the same audio under two names?); enrol each sound once."
    )


def _occurrences(names: np.ndarray) -> list[tuple[str, int]]:
    """(name, how many times it came before) of each name: the rows of one recording's windows apart."""
    seen: dict[str, int] = {}
    keys = []
    for name in map(str, names):
        keys.append((name, seen.get(name, 0)))
        seen[name] = keys[-1][1] + 1
    return keys


def _check_same_vectors(bank: Bank, rows: Embeddings, train_what: str) -> None:
    """ArtifactMismatch unless ``rows`` standardized with the bank's mean/std give the bank's own
    vectors: DCASE clip names repeat across years and datasets, so the names alone do not show
    that these are the embeddings the bank was fitted on."""
    index = dict(zip(_occurrences(rows.filenames), range(len(rows))))  # a windowed bank repeats each name
    shared = [(i, index[key]) for i, key in enumerate(_occurrences(bank.filenames)) if key in index]
    if not shared:
        return
    mine, theirs = (np.array(ix) for ix in zip(*shared))
    prepared = knn.prepare(rows.vectors[theirs], bank.mean, bank.std)
    # unit vectors: float32 rounding moves a component by ~1e-7; another clip's vector by ~0.1 and more
    differs = np.abs(prepared - bank.vectors[mine]).max(axis=1) > SAME_VECTOR_ATOL
    if differs.any():
        raise ArtifactMismatch(
            f"{train_what} holds other vectors than the bank of {bank.name} for {int(differs.sum())} of its "
            f"clips (e.g. {bank.filenames[mine[differs]][0]}): other audio under the same names, or another "
            "dataset; pass the embeddings the bank was fitted on."
        )


def _restandardized(bank: Bank, new: Embeddings, domain: str, train: Embeddings, train_what: str) -> Bank:
    rows = train.select((train.split == "train") & (train.machine == bank.machine) & (train.section == bank.section))
    if len(rows) == 0:
        raise DataError(f"{train_what} has no train clips of {bank.name}; pass the embeddings the bank was fitted on.")
    known = set(rows.filenames) | set(new.filenames)
    missing = [f for f in bank.filenames if f not in known and not f.startswith("kmeans_centre_")]
    if missing:
        raise ArtifactMismatch(
            f"{train_what} lacks {len(missing)} of the bank's clips ({', '.join(missing[:3])}); "
            "pass the embeddings the bank was fitted on (and earlier enrolled clips)."
        )
    _check_fits(bank, rows, train_what)
    _check_same_vectors(bank, rows, train_what)
    old = rows.select(~np.isin(rows.filenames, new.filenames))
    vectors = np.concatenate([old.vectors, new.vectors])
    domains = np.concatenate([old.domain, np.full(len(new), domain)]).astype(str)
    names = np.concatenate([old.filenames, new.filenames]).astype(str)
    return build_bank(vectors, domains, names, bank.config, machine=bank.machine, section=bank.section,
                      embedding_meta=bank.embedding_meta)  # fmt: skip


def enrol(bank: Bank, new: Embeddings, domain: str, *, train: Embeddings | None = None,
          train_what: str = "the training embeddings", inputs: Sequence[str] = ()) -> Bank:  # fmt: skip
    """The bank with ``new``'s vectors (raw, (N, D)) added as ``domain`` clips.

    Without ``train`` the bank's mean/std are kept; with it (``--restandardize``) the bank is
    refitted on ``train``'s rows of the bank plus ``new``. The meta's ``enrolments`` list records
    each enrolment (UTC time, domain, count, file names, inputs, restandardized).
    """
    if domain not in DOMAINS:
        raise ConfigError(f"--domain must be one of {', '.join(DOMAINS)}, got {domain!r}.")
    if len(new) == 0:
        raise DataError("Nothing to enrol: the inputs hold no clips.")
    _check_fits(bank, new, "the enrolled embeddings")
    named = [(str(f), str(d)) for f, d in zip(new.filenames, new.domain) if str(d) in DOMAINS and str(d) != domain]
    if named:
        clip, own = named[0]
        more = f" and {len(named) - 1} more" if len(named) > 1 else ""
        raise DataError(
            f"{clip}{more} is named as a {own} clip, not --domain {domain}; enrol {own} clips with "
            f"--domain {own} (one enrolment per domain)."
        )
    if train is not None:
        grown = _restandardized(bank, new, domain, train, train_what)
    else:
        prepared = knn.prepare(new.vectors, bank.mean, bank.std)
        _check_new_sounds(bank, prepared, new.filenames)
        grown = _refit(bank, np.concatenate([bank.vectors, prepared]),
                       np.concatenate([bank.domain, np.full(len(new), domain)]).astype(str),
                       np.concatenate([bank.filenames, new.filenames]).astype(str))  # fmt: skip
    record: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "domain": domain, "count": len(new),
        "files": [str(f) for f in new.filenames], "inputs": list(inputs), "restandardized": train is not None,
        "threshold_before": bank.threshold, "threshold_after": grown.threshold,
    }  # fmt: skip
    meta = {**bank.embedding_meta, "enrolments": [*bank.embedding_meta.get("enrolments", []), record]}
    return replace(grown, embedding_meta=meta)
