"""Fitting KNN banks: pick the machine/section, standardize, leave-one-out scores and the decision threshold."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from asdcli.artifacts import Embeddings
from asdcli.backend import knn, norm
from asdcli.backend.bank import Bank, BankConfig
from asdcli.errors import ConfigError, DataError

# The threshold is fitted on at most this many leave-one-out scores (a seeded sample of the bank's
# rows): scoring all M rows against the bank costs O(M^2), which a 10^6-vector bank cannot afford.
THRESHOLD_SAMPLE = norm.STATS_SAMPLE


def build_bank(
    vectors: np.ndarray,
    domain: np.ndarray,
    filenames: np.ndarray,
    cfg: BankConfig = BankConfig(),
    *,
    machine: str = "",
    section: str = "",
    embedding_meta: dict[str, Any] | None = None,
) -> Bank:
    """Fit a bank on raw training embeddings ``vectors`` (N, D) with their ``domain``/``filenames`` (N,).

    Raises DataError when N < 2 and ConfigError when k or the density K need more vectors.
    """
    name = f"{machine or '?'} section {section or '?'}"
    vectors = np.asarray(vectors, dtype=np.float32)
    domain, filenames = np.asarray(domain, dtype=str), np.asarray(filenames, dtype=str)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise DataError(f"The bank of {name} needs at least 2 train clips, got {vectors.shape[0]}.")
    if vectors.shape[1] == 0:
        raise DataError(f"The train embeddings of {name} have 0 dimensions; re-create the embeddings file.")
    if not np.isfinite(vectors).all():
        raise DataError(f"The train embeddings of {name} contain NaN or inf; re-create the embeddings file.")
    if not (embedding_meta or {}).get("window"):  # windows of one recording share its name, and may repeat
        _check_each_clip_once(vectors, filenames, name)
    mean, std = knn.standardization_stats(vectors)
    prepared = knn.prepare(vectors, mean, std)
    if cfg.condense_source is not None:
        prepared, domain, filenames = _condense(prepared, domain, filenames, cfg.condense_source, cfg.seed)
    return fit_prepared(
        prepared, domain, filenames, mean, std, cfg, machine=machine, section=section, embedding_meta=embedding_meta
    )


def _check_each_clip_once(vectors: np.ndarray, filenames: np.ndarray, name: str) -> None:
    """DataError when a clip name or an embedding is in the train rows twice: its leave-one-out
    distance would be 0, and the threshold fitted on those distances meaningless."""
    first: dict[str, int] = {}
    for i, clip in enumerate(filenames):
        if first.setdefault(str(clip), i) != i:
            raise DataError(
                f"The train embeddings of {name} hold the clip {clip} twice; embed each train clip once "
                "(one folder per clip) and fit the bank again."
            )
    # identical rows have identical projections; distinct ones practically never do
    projection = vectors.astype(np.float64) @ np.random.default_rng(0).standard_normal(vectors.shape[1])
    order = np.argsort(projection, kind="stable")
    for k in np.flatnonzero(projection[order[1:]] == projection[order[:-1]]):
        a, b = order[k], order[k + 1]
        if np.array_equal(vectors[a], vectors[b]):
            raise DataError(
                f"The train embeddings of {name} hold one embedding twice ({filenames[a]} and {filenames[b]}: the "
                "same audio under two names?); keep one of them and fit the bank again."
            )


def fit_prepared(
    prepared: np.ndarray,
    domain: np.ndarray,
    filenames: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    cfg: BankConfig,
    *,
    machine: str = "",
    section: str = "",
    embedding_meta: dict[str, Any] | None = None,
) -> Bank:
    """A bank of already standardized, L2-normalized vectors ``prepared`` (M, D) with the given
    mean/std: the score normalization, leave-one-out scores and threshold fitted on them (also
    what enrolment refits after adding vectors under the bank's own mean/std)."""
    name = f"{machine or '?'} section {section or '?'}"
    m = prepared.shape[0]
    if cfg.k > m:
        raise ConfigError(f"--k {cfg.k} needs at least {cfg.k} bank vectors; the bank of {name} has {m}.")
    radii, stats = norm.fit_normalization(
        prepared, domain, cfg.score_norm, cfg.density_k, cfg.density_k_target, cfg.k, cfg.seed, name
    )
    rows = norm.sample_rows(np.arange(m), cfg.seed, THRESHOLD_SAMPLE)
    groups = norm.score_groups(cfg.score_norm, domain, radii, stats)
    loo = knn.score(prepared[rows], prepared, groups, cfg.k, self_index=rows).astype(np.float32)
    threshold, info = fit_threshold(loo, cfg.threshold_quantile)
    finite = loo[np.isfinite(loo)].astype(np.float64)
    return Bank(
        mean=mean,
        std=std,
        vectors=prepared,
        domain=domain,
        filenames=filenames,
        radii=radii,
        loo_rows=rows.astype(np.int64),
        loo_scores=loo,
        threshold=threshold,
        config=cfg,
        normalization=stats,
        loo_stats=(float(finite.mean()), float(finite.std())),
        machine=machine,
        section=section,
        embedding_meta=dict(embedding_meta or {}),
        threshold_info=info,
    )


def _condense(
    prepared: np.ndarray, domain: np.ndarray, filenames: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace the source rows by ``n`` k-means centres; every other row is kept as is."""
    src = domain == "source"
    if n >= int(src.sum()):
        return prepared, domain, filenames  # nothing to condense
    centres = knn.kmeans_centres(prepared[src], n, seed)
    names = np.array([f"kmeans_centre_{i:04d}" for i in range(n)], dtype=str)
    vectors = np.concatenate([centres, prepared[~src]]).astype(np.float32)
    dom = np.concatenate([np.full(n, "source"), domain[~src]]).astype(str)
    return np.ascontiguousarray(vectors), dom, np.concatenate([names, filenames[~src]]).astype(str)


def fit_threshold(scores: np.ndarray, quantile: float = 0.9) -> tuple[float, dict[str, Any]]:
    """Decision threshold from normal scores: ``scipy.stats.gamma.ppf(quantile, *gamma.fit(scores))``.

    Fallbacks (recorded as ``method``): fewer than 3 finite scores or no spread -> ``"max"``, the
    largest score (only scores above every normal one are anomalies); a failed or non-finite gamma
    fit -> ``"empirical"``, ``np.quantile(scores, quantile)``; a gamma quantile below the smallest
    score -> ``"min"``, that score (``gamma_threshold`` keeps the quantile). The fitted location
    can lie far below the data (even below 0, where no cosine distance is), so a small quantile
    would flag every clip, the bank's own normal ones included; the data says nothing below it.
    """
    from scipy import stats

    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    info: dict[str, Any] = {"quantile": quantile, "n_scores": int(finite.size)}
    if finite.size == 0:
        raise DataError("No finite leave-one-out score to fit the decision threshold on.")
    spread = float(np.ptp(finite))
    if finite.size < 3 or spread <= 1e-9 * max(abs(float(finite.mean())), 1e-12):
        return float(finite.max()), {**info, "method": "max"}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            params = stats.gamma.fit(finite)
            threshold = float(stats.gamma.ppf(quantile, *params))
    except (RuntimeError, ValueError, FloatingPointError):
        params, threshold = (), math.nan
    if not math.isfinite(threshold):
        return float(np.quantile(finite, quantile)), {**info, "method": "empirical"}
    gamma = {"gamma": [float(p) for p in params]}
    lowest = float(finite.min())
    if threshold < lowest:
        return lowest, {**info, "method": "min", **gamma, "gamma_threshold": threshold}
    return threshold, {**info, "method": "gamma", **gamma}


def threshold_method(info: dict[str, Any]) -> str:
    """How a threshold was fitted, for a report line (``threshold_info`` of a bank)."""
    method = str(info.get("method"))
    if method == "min" and "gamma_threshold" in info:
        return (
            f"min: the gamma quantile {float(info['gamma_threshold']):.4g} lies below every normal "
            "leave-one-out score, so the lowest one is the threshold"
        )
    return method


def train_groups(emb: Embeddings) -> list[tuple[str, str]]:
    """The sorted (machine, section) pairs that have train clips in ``emb``."""
    train = emb.split == "train"
    return sorted({(str(m), str(s)) for m, s in zip(emb.machine[train], emb.section[train])})


def _describe(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{m or '?'} section {s or '?'}" for m, s in pairs)


def select_group(
    emb: Embeddings, machine: str | None = None, section: str | None = None, what: str = "the embeddings"
) -> tuple[str, str]:
    """The single (machine, section) with train clips matching the filters, or a clear error."""
    pairs = train_groups(emb)
    if not pairs:
        splits = sorted({s or "unknown" for s in emb.split})
        raise DataError(
            f"{what} has no train clips (splits found: {', '.join(splits) or 'none'}); embed the train folder."
        )
    chosen = [p for p in pairs if (machine is None or p[0] == machine) and (section is None or p[1] == section)]
    if not chosen:
        raise DataError(
            f"{what} has no train clips of machine {machine or 'any'} section {section or 'any'}; it holds {_describe(pairs)}."
        )
    if len(chosen) > 1:
        raise ConfigError(
            f"{what} holds train clips of several machines/sections ({_describe(chosen)}); "
            "choose one with --machine/--section or write one bank each with --out-dir."
        )
    return chosen[0]


def fit_bank(
    emb: Embeddings,
    cfg: BankConfig = BankConfig(),
    machine: str | None = None,
    section: str | None = None,
    what: str = "the embeddings",
) -> Bank:
    """Fit the bank of one machine/section from the train rows of ``emb``.

    ``machine``/``section`` may be omitted when ``emb`` holds train clips of only one of each.
    """
    return _fit_group(emb, cfg, *select_group(emb, machine, section, what))


def _fit_group(emb: Embeddings, cfg: BankConfig, machine: str, section: str) -> Bank:
    """The bank of the train rows of ``machine``/``section`` in ``emb``."""
    rows = emb.select((emb.split == "train") & (emb.machine == machine) & (emb.section == section))
    return build_bank(
        rows.vectors, rows.domain, rows.filenames, cfg, machine=machine, section=section, embedding_meta=emb.meta
    )


def fit_banks(
    emb: Embeddings,
    cfg: BankConfig = BankConfig(),
    machine: str | None = None,
    section: str | None = None,
    what: str = "the embeddings",
) -> dict[tuple[str, str], Bank]:
    """One bank per (machine, section) with train clips in ``emb`` (optionally filtered), keyed
    by that pair; no matching train clip is a DataError."""
    pairs = [p for p in train_groups(emb) if machine in (None, p[0]) and section in (None, p[1])]
    if not pairs:
        select_group(emb, machine, section, what)  # raises the "no train clips" error
    return {p: _fit_group(emb, cfg, *p) for p in pairs}
