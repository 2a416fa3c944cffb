"""Exact cosine k-nearest-neighbour distances as chunked matrix products (pure numpy, float32).

Every function here takes arrays and returns arrays: no paths, no printing, no hidden RNG.
Memory is bounded by ``query_chunk * bank_chunk`` float32 similarities (64 MiB by default) plus a
running (Q, k) top-k, whatever the bank size, so a 10^6 x 768 bank needs only itself in memory.

Cosine distance between L2-normalized vectors is ``1 - q . b`` (clipped at 0, as scikit-learn
does). Optional per-bank-vector ``scale`` divides each distance (local-density normalization).
:func:`score` is the one scoring path: a bank is searched as one or more groups of rows (source,
target), each normalized, and the score is the smallest normalized distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Standard deviations below STD_FLOOR_REL * mean(std) (or STD_FLOOR_ABS when all are ~0) are
# raised to that floor, so a dimension that is (nearly) constant in the bank cannot blow up a
# test vector's standardized value and dominate its cosine distance.
STD_FLOOR_REL = 1e-3
STD_FLOOR_ABS = 1e-8
# Density radii are floored the same way (duplicated bank vectors have radius 0).
DENSITY_FLOOR_REL = 1e-3
DENSITY_FLOOR_ABS = 1e-8

QUERY_CHUNK = 1024
BANK_CHUNK = 16384


def floored(values: np.ndarray, rel: float, absolute: float) -> np.ndarray:
    """``max(values, max(rel * mean(values), absolute))`` elementwise, as float32."""
    values = np.asarray(values, dtype=np.float64)
    floor = max(rel * float(values.mean()) if values.size else 0.0, absolute)
    return np.maximum(values, floor).astype(np.float32)


def standardization_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and floored standard deviation of raw embeddings.

    Parameters
    ----------
    x : (N, D) float array of raw training embeddings, N >= 1.

    Returns
    -------
    mean, std : (D,) float32 each; ``std`` is floored at
        ``max(STD_FLOOR_REL * mean(std), STD_FLOOR_ABS)``.
    """
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=0)
    std = x64.std(axis=0)
    return mean.astype(np.float32), floored(std, STD_FLOOR_REL, STD_FLOOR_ABS)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit L2 norm, float32; an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)


def prepare(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardize raw embeddings ``x`` (N, D) with ``mean``/``std`` (D,), then L2-normalize.

    Returns (N, D) float32, C-contiguous.
    """
    z = (np.asarray(x, dtype=np.float32) - mean) / std
    return np.ascontiguousarray(l2_normalize(z))


def _chunk_candidates(sim: np.ndarray, k: int, scale: np.ndarray | None) -> np.ndarray:
    """The k smallest distances per row of a similarity block ``sim`` (q, b), unsorted (q, k).

    ``sim`` is overwritten.
    """
    if scale is None:
        # Smallest distances are the largest similarities: select on sim, convert only k values.
        if k == 1:
            top = sim.max(axis=1, keepdims=True)
        else:
            top = np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:]
        return 1.0 - top
    np.subtract(1.0, sim, out=sim)
    np.maximum(sim, 0.0, out=sim)
    sim /= scale
    if k == 1:
        return sim.min(axis=1, keepdims=True)
    return np.partition(sim, k - 1, axis=1)[:, :k]


def knn_distances(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int = 1,
    *,
    scale: np.ndarray | None = None,
    self_index: np.ndarray | None = None,
    query_chunk: int = QUERY_CHUNK,
    bank_chunk: int = BANK_CHUNK,
) -> np.ndarray:
    """The ``k`` smallest cosine distances from each query to the bank, sorted ascending.

    Parameters
    ----------
    queries : (Q, D) float32, rows L2-normalized.
    bank : (M, D) float32, rows L2-normalized, M >= k (M >= k + 1 with ``self_index``).
    k : number of neighbours.
    scale : optional (M,) positive float32; distance to bank row j is divided by ``scale[j]``.
    self_index : optional (Q,) int; query i never matches bank row ``self_index[i]``
        (leave-one-out when the queries are bank rows); -1 excludes nothing.
    query_chunk, bank_chunk : block sizes; peak extra memory ~ 4 * query_chunk * bank_chunk bytes.

    Returns
    -------
    (Q, k) float32 distances ``max(1 - q . b, 0) / scale``, ascending per row.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    n_q, n_b = queries.shape[0], bank.shape[0]
    n_excluded = 0 if self_index is None else 1
    if k < 1 or n_b - n_excluded < k:
        raise ValueError(f"k={k} needs at least {k + n_excluded} bank vectors, got {n_b}.")
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"dimension mismatch: queries {queries.shape[1]}, bank {bank.shape[1]}.")
    out = np.empty((n_q, k), dtype=np.float32)
    for q0 in range(0, n_q, query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best = np.full((q.shape[0], k), np.inf, dtype=np.float32)  # running top-k, unsorted
        for b0 in range(0, n_b, bank_chunk):
            b = bank[b0 : b0 + bank_chunk]
            kk = min(k, b.shape[0])
            sim = q @ b.T  # (q, b)
            if self_index is not None:
                _mask_self(sim, self_index[q0 : q0 + q.shape[0]], b0)
            sc = None if scale is None else scale[b0 : b0 + b.shape[0]]
            cand = _chunk_candidates(sim, kk, sc)
            del sim  # free the block before the next matmul allocates one
            best = _merge(best, cand, k)
        out[q0 : q0 + q.shape[0]] = np.sort(np.maximum(best, 0.0), axis=1)
    return out


def _mask_self(sim: np.ndarray, self_index: np.ndarray, b0: int) -> None:
    """Make the excluded (query, bank) pairs of a block (starting at bank row b0) never win."""
    cols = np.asarray(self_index, dtype=np.int64) - b0
    rows = np.nonzero((cols >= 0) & (cols < sim.shape[1]))[0]
    # As a similarity -inf never wins; the scaled path turns 1 - sim into +inf.
    sim[rows, cols[rows]] = -np.inf


def _merge(best: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """Keep the k smallest of the running ``best`` (q, k) and a block's candidates (q, kk)."""
    if k == 1:
        return np.minimum(best, cand)
    both = np.concatenate([best, cand], axis=1)
    return np.partition(both, k - 1, axis=1)[:, :k]


@dataclass(frozen=True)
class Group:
    """Bank rows searched together, and how their k-NN distance is normalized.

    The group's score of a query is ``(mean of its k smallest distances to the group's rows,
    each divided by that row's ``scale`` - shift) / divisor``.
    """

    rows: np.ndarray | None = None  # (m,) int indices into the bank; None = every row
    scale: np.ndarray | None = None  # (m,) positive radii dividing each distance; None = 1
    shift: float = 0.0
    divisor: float = 1.0


def score(
    queries: np.ndarray,
    bank: np.ndarray,
    groups: Sequence[Group],
    k: int = 1,
    *,
    self_index: np.ndarray | None = None,
    query_chunk: int = QUERY_CHUNK,
    bank_chunk: int = BANK_CHUNK,
) -> np.ndarray:
    """The one scoring path: min over ``groups`` of each group's normalized k-NN distance.

    Parameters
    ----------
    queries : (Q, D) float32, L2-normalized.
    bank : (M, D) float32, L2-normalized.
    groups : at least one :class:`Group` (one group of every row = plain k-NN).
    k : neighbours; a group with fewer usable rows uses all of them.
    self_index : optional (Q,) int; query i never matches bank row ``self_index[i]``
        (leave-one-out when the queries are bank rows); -1 excludes nothing.

    Returns
    -------
    (Q,) float32; inf for a query with no usable bank row in any group.
    """
    chunks = {"query_chunk": query_chunk, "bank_chunk": bank_chunk}
    best = np.full(queries.shape[0], np.inf, dtype=np.float32)
    for group in groups:
        vectors = bank if group.rows is None else bank[group.rows]
        self_pos = None
        if self_index is not None:
            self_pos = np.asarray(self_index, dtype=np.int64)
            if group.rows is not None:  # the excluded whole-bank row's position inside the group, or -1
                pos = np.full(bank.shape[0], -1, dtype=np.int64)
                pos[group.rows] = np.arange(len(group.rows))
                self_pos = np.where(self_pos >= 0, pos[np.clip(self_pos, 0, None)], -1)
        dist = _mean_distance(queries, vectors, k, group.scale, self_pos, chunks)
        if group.shift != 0.0 or group.divisor != 1.0:
            dist = ((dist - np.float32(group.shift)) / np.float32(group.divisor)).astype(np.float32)
        best = np.minimum(best, dist)
    return best


def _mean_distance(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    scale: np.ndarray | None,
    self_pos: np.ndarray | None,
    chunks: dict[str, int],
) -> np.ndarray:
    """Mean of the min(k, usable) smallest (scaled) distances per query; inf without a usable row."""
    m = vectors.shape[0]
    has_self = np.zeros(queries.shape[0], bool) if self_pos is None else self_pos >= 0
    out = np.full(queries.shape[0], np.inf, dtype=np.float32)
    for mask, usable, excluded in ((~has_self, m, None), (has_self, m - 1, self_pos)):
        if usable < 1 or not mask.any():
            continue
        q = queries if mask.all() else queries[mask]
        si = None if excluded is None else excluded[mask]
        out[mask] = knn_distances(
            q,
            vectors,
            min(k, usable),
            scale=scale,
            self_index=si,
            query_chunk=chunks["query_chunk"],
            bank_chunk=chunks["bank_chunk"],
        ).mean(axis=1)
    return out


def density_radii(
    bank: np.ndarray, k: int, *, query_chunk: int = QUERY_CHUNK, bank_chunk: int = BANK_CHUNK
) -> np.ndarray:
    """Each bank row's mean cosine distance to its ``k`` nearest other bank rows, floored.

    Chunked like every search here: memory is bounded whatever M (no M x M matrix).

    Parameters
    ----------
    bank : (M, D) float32, L2-normalized, M >= k + 1.

    Returns
    -------
    (M,) float32 radii, floored at ``max(DENSITY_FLOOR_REL * mean, DENSITY_FLOOR_ABS)``.
    """
    n = bank.shape[0]
    radii = knn_distances(bank, bank, k, self_index=np.arange(n), query_chunk=query_chunk, bank_chunk=bank_chunk).mean(
        axis=1
    )
    return floored(radii, DENSITY_FLOOR_REL, DENSITY_FLOOR_ABS)


def kmeans_centres(x: np.ndarray, n_centres: int, seed: int) -> np.ndarray:
    """Condense L2-normalized rows ``x`` (N, D) to ``n_centres`` k-means centres, re-normalized.

    Returns (n_centres, D) float32, deterministic for a given ``seed``; ``x`` itself (a copy)
    when ``n_centres >= N``.
    """
    from sklearn.cluster import KMeans

    if n_centres >= x.shape[0]:
        return np.array(x, dtype=np.float32)
    km = KMeans(n_clusters=n_centres, random_state=seed, n_init=3)
    km.fit(np.asarray(x, dtype=np.float32))
    return np.ascontiguousarray(l2_normalize(km.cluster_centers_))
