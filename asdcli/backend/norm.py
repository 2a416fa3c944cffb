"""Score normalization of a bank (`--score-norm`): how the bank's rows are grouped and how each
group's nearest-neighbour distance is normalized, fitted on the bank's own (training) vectors only.

- ``none``: one group of every row, raw distances (the seed's method).
- ``density``: one group; distance to bank row f divided by r(f), f's mean cosine distance to
  its K nearest other bank rows (K = ``density_k``).
- ``domain-density``: source rows and target rows are two groups, each with radii from its own
  rows (K_s = ``density_k``, K_t = ``density_k_target``, at most n_target - 1); score = the
  smaller of the two normalized minima.
- ``domain-zscore``: two groups; d_s, d_t = the k-NN distance within each domain, shifted by that
  domain's mean leave-one-out distance and divided by the *target* domain's leave-one-out std
  (GenRep's choice); score = the smaller.

Every radius and statistic is a chunked k-NN search (:mod:`asdcli.backend.knn`): memory stays
bounded at 10^6 bank vectors, and the statistics use at most ``STATS_SAMPLE`` seeded rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from asdcli.backend import knn
from asdcli.errors import ConfigError

SCORE_NORMS = ("none", "density", "domain-density", "domain-zscore")
DOMAIN_NORMS = ("domain-density", "domain-zscore")
# Leave-one-out statistics (and thresholds) use at most this many rows: a seeded sample in big banks.
STATS_SAMPLE = 10_000
# A leave-one-out std below this fraction of its mean (e.g. two target clips: one distance) is
# raised to it, so a near-constant domain cannot blow up its z-scores.
ZSCORE_STD_FLOOR_REL = 1e-3
ZSCORE_STD_FLOOR_ABS = 1e-8


def default_density_k(n: int) -> int:
    """The default K of density radii for a group of ``n`` vectors: sqrt(n) / 3 rounded, at least 1
    and at most n - 1 (chosen on synthetic data: bench/backends.py --k-sweep, README)."""
    return max(1, min(n - 1, math.floor(math.sqrt(n) / 3 + 0.5)))


def sample_rows(rows: np.ndarray, seed: int, limit: int = STATS_SAMPLE) -> np.ndarray:
    """``rows`` itself, or a sorted seeded sample of ``limit`` of them."""
    if rows.size <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def domain_rows(domain: np.ndarray, score_norm: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the source and target rows; a domain-wise norm needs >= 2 of each, no others."""
    domain = np.asarray(domain, dtype=str)
    src, tgt = np.nonzero(domain == "source")[0], np.nonzero(domain == "target")[0]
    if src.size < 2 or tgt.size < 2 or src.size + tgt.size != domain.size:
        counts = {str(d) or "unknown": int((domain == d).sum()) for d in np.unique(domain)}
        raise ConfigError(
            f"--score-norm {score_norm} needs at least 2 source and 2 target train clips and no clip of "
            f"unknown domain; the bank of {name} has {counts}. Use --score-norm density instead."
        )
    return src, tgt


def fit_normalization(
    vectors: np.ndarray,
    domain: np.ndarray,
    score_norm: str,
    density_k: int | None,
    density_k_target: int | None,
    k: int,
    seed: int,
    name: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Radii (M,) float32 (all 1 without density) and the statistics record of ``score_norm``.

    ``vectors`` (M, D) are the prepared (standardized, L2-normalized) training vectors.
    """
    m = vectors.shape[0]
    radii = np.ones(m, dtype=np.float32)
    if score_norm == "none":
        return radii, {}
    if score_norm == "density":
        kk = default_density_k(m) if density_k is None else density_k
        _check_k(kk, m, "--density-k", name)
        return knn.density_radii(vectors, kk), {"density_k": kk}
    src, tgt = domain_rows(domain, score_norm, name)
    if score_norm == "domain-density":
        k_s = default_density_k(src.size) if density_k is None else density_k
        _check_k(k_s, src.size, "--density-k", name)
        k_t = min(default_density_k(tgt.size) if density_k_target is None else density_k_target, tgt.size - 1)
        radii[src] = knn.density_radii(vectors[src], k_s)
        radii[tgt] = knn.density_radii(vectors[tgt], k_t)
        return radii, {"density_k": k_s, "density_k_target": k_t}
    stats = {d: _loo_stats(vectors, rows, k, seed) for d, rows in (("source", src), ("target", tgt))}
    return radii, stats


def _check_k(kk: int, n: int, option: str, name: str) -> None:
    if kk > n - 1:
        raise ConfigError(f"{option} {kk} needs at least {kk + 1} bank vectors; the bank of {name} has {n}.")


def _loo_stats(vectors: np.ndarray, rows: np.ndarray, k: int, seed: int) -> dict[str, float]:
    """Mean and floored std of the leave-one-out k-NN distances of ``rows`` within ``rows``."""
    sample = sample_rows(rows, seed)
    d = knn.score(vectors[sample], vectors, [knn.Group(rows=rows)], k, self_index=sample).astype(np.float64)
    mean = float(d.mean())
    std = max(float(d.std()), ZSCORE_STD_FLOOR_REL * abs(mean), ZSCORE_STD_FLOOR_ABS)
    return {"mean": mean, "std": std, "n": int(d.size)}


def score_groups(score_norm: str, domain: np.ndarray, radii: np.ndarray, stats: dict[str, Any]) -> list[knn.Group]:
    """The :class:`knn.Group` list that :func:`knn.score` searches for ``score_norm``."""
    if score_norm == "none":
        return [knn.Group()]
    if score_norm == "density":
        return [knn.Group(scale=radii)]
    domain = np.asarray(domain, dtype=str)
    src, tgt = np.nonzero(domain == "source")[0], np.nonzero(domain == "target")[0]
    if score_norm == "domain-density":
        return [knn.Group(rows=src, scale=radii[src]), knn.Group(rows=tgt, scale=radii[tgt])]
    sigma = float(stats["target"]["std"])
    return [
        knn.Group(rows=src, shift=float(stats["source"]["mean"]), divisor=sigma),
        knn.Group(rows=tgt, shift=float(stats["target"]["mean"]), divisor=sigma),
    ]


def check_stats(score_norm: str, stats: Any, domain: np.ndarray, k: int) -> str | None:
    """What is wrong with a loaded statistics record (None when it fits ``score_norm``)."""
    if not isinstance(stats, dict):
        return "its normalization record is not an object"
    if score_norm == "none":
        return None
    if score_norm in DOMAIN_NORMS:
        try:
            domain_rows(domain, score_norm, "")
        except ConfigError:
            return f"--score-norm {score_norm} needs at least 2 source and 2 target vectors"
    if score_norm == "domain-zscore":
        for d in ("source", "target"):
            rec = stats.get(d)
            if not isinstance(rec, dict) or not all(_finite(rec.get(f)) for f in ("mean", "std")) or rec["std"] <= 0:
                return f"its {d} statistics are missing or not finite positive numbers"
        return None
    keys = ("density_k",) if score_norm == "density" else ("density_k", "density_k_target")
    if not all(isinstance(stats.get(key), int) and not isinstance(stats.get(key), bool) for key in keys):
        return "its density K is missing or not an integer"
    return None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
