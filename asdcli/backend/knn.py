"""Exact cosine k-nearest-neighbour distances as chunked matrix products (pure numpy, float32).

Every function here takes arrays and returns arrays: no paths, no printing, no hidden RNG.
Memory is bounded by ``query_chunk * bank_chunk`` float32 similarities (64 MiB by default) plus a
running (Q, k) top-k, whatever the bank size, so a 10^6 x 768 bank needs only itself in memory.

Cosine distance between L2-normalized vectors is ``1 - q . b`` (clipped at 0, as scikit-learn
does). Optional per-bank-vector ``scale`` divides each distance (local-density normalization).
"""

from __future__ import annotations

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


def knn_score(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int = 1,
    *,
    scale: np.ndarray | None = None,
    self_index: np.ndarray | None = None,
    **chunks: int,
) -> np.ndarray:
    """Mean of the ``k`` smallest (scaled) cosine distances per query: (Q,) float32.

    Shapes and arguments as :func:`knn_distances`.
    """
    return knn_distances(queries, bank, k, scale=scale, self_index=self_index, **chunks).mean(axis=1)


def grouped_knn_score(
    queries: np.ndarray,
    bank: np.ndarray,
    groups: np.ndarray,
    k: int = 1,
    *,
    scale: np.ndarray | None = None,
    self_index: np.ndarray | None = None,
    **chunks: int,
) -> np.ndarray:
    """Domain-aware score: each group of bank rows searched alone, score = min over groups.

    Parameters
    ----------
    queries : (Q, D) float32, L2-normalized.
    bank : (M, D) float32, L2-normalized.
    groups : (M,) labels of the bank rows (e.g. "source"/"target").
    k : neighbours per group; a group with fewer usable rows uses all of them.
    scale, self_index : as :func:`knn_distances` (indices refer to the whole bank).

    Returns
    -------
    (Q,) float32: ``min over groups g of knn_score(queries, bank[g], min(k, |g|))``; inf for a
    query with no usable bank row.
    """
    groups = np.asarray(groups)
    best = np.full(queries.shape[0], np.inf, dtype=np.float32)
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        sub_self = None
        if self_index is not None:
            # Map the excluded whole-bank index to the position inside this group (or -1).
            pos = np.full(bank.shape[0], -1, dtype=np.int64)
            pos[idx] = np.arange(idx.size)
            si = np.asarray(self_index, dtype=np.int64)
            sub_self = np.where(si >= 0, pos[np.clip(si, 0, None)], -1)
        scores = _group_scores(queries, bank[idx], k, None if scale is None else scale[idx], sub_self, chunks)
        best = np.minimum(best, scores)
    return best


def _group_scores(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    scale: np.ndarray | None,
    self_index: np.ndarray | None,
    chunks: dict[str, int],
) -> np.ndarray:
    """knn_score on one group; queries whose own row is in a 1-row group get inf."""
    if self_index is None:
        return knn_score(queries, bank, min(k, bank.shape[0]), scale=scale, **chunks)
    excluded = self_index >= 0
    usable = bank.shape[0] - 1
    scores = np.full(queries.shape[0], np.inf, dtype=np.float32)
    if usable >= 1:
        scores[excluded] = knn_score(
            queries[excluded], bank, min(k, usable), scale=scale, self_index=self_index[excluded], **chunks
        )
    if (~excluded).any():
        scores[~excluded] = knn_score(queries[~excluded], bank, min(k, bank.shape[0]), scale=scale, **chunks)
    return scores


def density_radii(bank: np.ndarray, k: int, **chunks: int) -> np.ndarray:
    """Each bank row's mean cosine distance to its ``k`` nearest other bank rows, floored.

    Parameters
    ----------
    bank : (M, D) float32, L2-normalized, M >= k + 1.

    Returns
    -------
    (M,) float32 radii, floored at ``max(DENSITY_FLOOR_REL * mean, DENSITY_FLOOR_ABS)``.
    """
    n = bank.shape[0]
    radii = knn_score(bank, bank, k, self_index=np.arange(n), **chunks)
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


def bank_score(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int = 1,
    *,
    groups: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    self_index: np.ndarray | None = None,
    **chunks: int,
) -> np.ndarray:
    """Anomaly scores (Q,) float32 of L2-normalized ``queries`` against a prepared bank.

    ``groups`` None: mean of the k smallest (scaled) distances over the whole bank; otherwise the
    domain-aware min over groups (:func:`grouped_knn_score`). With ``self_index`` (leave-one-out)
    and no groups, k is reduced to M - 1 when the bank is that small.
    """
    if groups is not None:
        return grouped_knn_score(queries, bank, groups, k, scale=scale, self_index=self_index, **chunks)
    if self_index is not None:
        k = min(k, bank.shape[0] - 1)
    return knn_score(queries, bank, k, scale=scale, self_index=self_index, **chunks)
