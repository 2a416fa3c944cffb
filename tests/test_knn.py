"""Exact cosine KNN: against a direct formula, scikit-learn, and constructed cases per option."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors
from tolerances import unit_dot_atol

from asdcli.backend import knn


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return knn.l2_normalize(rng.standard_normal((n, d)).astype(np.float32))


def _direct(q: np.ndarray, b: np.ndarray, k: int, scale: np.ndarray | None = None) -> np.ndarray:
    """Full distance matrix in float64, sorted: the reference."""
    d = np.clip(1.0 - q.astype(np.float64) @ b.astype(np.float64).T, 0, None)
    if scale is not None:
        d = d / scale
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("k", [1, 4])
def test_matches_direct_formula_and_sklearn(k: int) -> None:
    rng = np.random.default_rng(0)
    raw_b = rng.standard_normal((500, 48)).astype(np.float32)
    raw_q = rng.standard_normal((70, 48)).astype(np.float32)
    b, q = knn.l2_normalize(raw_b), knn.l2_normalize(raw_q)
    ours = knn.knn_distances(q, b, k, query_chunk=32, bank_chunk=100)
    tol = unit_dot_atol(48)  # float32 dots of unit 48-d vectors vs float64 / sklearn's own float32 order
    np.testing.assert_allclose(ours, _direct(q, b, k), atol=tol)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(raw_b)
    ref, _ = nn.kneighbors(raw_q)
    np.testing.assert_allclose(ours, ref, atol=tol)
    np.testing.assert_allclose(knn.score(q, b, [knn.Group()], k), ref.mean(axis=1), atol=tol)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("chunks", [(1, 1), (2, 1), (7, 13), (1000, 1000), (16, 3)])
def test_chunking_gives_identical_results(k: int, chunks: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    b, q = _unit(rng, 101, 16), _unit(rng, 37, 16)
    scale = rng.uniform(0.5, 2.0, 101).astype(np.float32)
    whole = knn.knn_distances(q, b, k, query_chunk=10_000, bank_chunk=10_000)
    parts = knn.knn_distances(q, b, k, query_chunk=chunks[0], bank_chunk=chunks[1])
    # Same values up to float32 rounding: BLAS picks other kernels for other block shapes; a
    # distance divided by scale >= 0.5 carries up to twice the dot product's rounding.
    tol, tol_s = unit_dot_atol(16), unit_dot_atol(16) / float(scale.min())
    np.testing.assert_allclose(parts, whole, rtol=0, atol=tol)
    whole_s = knn.knn_distances(q, b, k, scale=scale, query_chunk=10_000, bank_chunk=10_000)
    parts_s = knn.knn_distances(q, b, k, scale=scale, query_chunk=chunks[0], bank_chunk=chunks[1])
    np.testing.assert_allclose(parts_s, whole_s, rtol=0, atol=tol_s)
    np.testing.assert_allclose(whole_s, _direct(q, b, k, scale), atol=tol_s)


def test_leave_one_out_excludes_only_self() -> None:
    rng = np.random.default_rng(2)
    b = _unit(rng, 60, 8)
    got = knn.knn_distances(b, b, 2, self_index=np.arange(60), query_chunk=7, bank_chunk=11)
    full = np.clip(1.0 - b.astype(np.float64) @ b.T.astype(np.float64), 0, None)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(got, np.sort(full, axis=1)[:, :2], atol=1e-6)
    # -1 excludes nothing: the nearest neighbour of a bank row is itself.
    none = knn.knn_distances(b, b, 1, self_index=np.full(60, -1))
    np.testing.assert_allclose(none[:, 0], 0.0, atol=1e-6)


def test_k_larger_than_bank_is_refused() -> None:
    b = _unit(np.random.default_rng(3), 3, 4)
    with pytest.raises(ValueError, match="at least"):
        knn.knn_distances(b, b, 4)
    with pytest.raises(ValueError, match="at least"):
        knn.knn_distances(b, b, 3, self_index=np.arange(3))


def test_score_is_min_over_groups() -> None:
    rng = np.random.default_rng(4)
    b, q = _unit(rng, 40, 8), _unit(rng, 9, 8)
    src, tgt = np.arange(30), np.arange(30, 40)
    got = knn.score(q, b, [knn.Group(rows=src), knn.Group(rows=tgt)], k=3)
    np.testing.assert_allclose(got, np.minimum(_direct(q, b[:30], 3).mean(1), _direct(q, b[30:], 3).mean(1)), atol=1e-6)
    # One group of every row is the plain k-NN mean; with k = 3 it is not the min over groups.
    whole = knn.score(q, b, [knn.Group()], k=3)
    np.testing.assert_allclose(whole, _direct(q, b, 3).mean(1), atol=1e-6)
    assert not np.allclose(got, whole)
    # A group smaller than k uses all of its rows; shift and divisor apply per group.
    small = knn.score(q, b, [knn.Group(rows=src), knn.Group(rows=np.arange(30, 32), shift=0.1, divisor=2.0)], k=5)
    expected = np.minimum(_direct(q, b[:30], 5).mean(1), (_direct(q, b[30:32], 2).mean(1) - 0.1) / 2.0)
    np.testing.assert_allclose(small, expected, atol=1e-6)


def test_score_leave_one_out_within_groups() -> None:
    rng = np.random.default_rng(5)
    b = _unit(rng, 12, 6)
    groups = [knn.Group(rows=np.arange(10)), knn.Group(rows=np.arange(10, 12))]
    got = knn.score(b, b, groups, k=1, self_index=np.arange(12))
    full = np.clip(1.0 - b.astype(np.float64) @ b.T.astype(np.float64), 0, None)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(got, full.min(axis=1), atol=1e-6)
    # A query whose own row is the only row of its group has no usable row there.
    alone = knn.score(b[:1], b, [knn.Group(rows=np.arange(1))], self_index=np.zeros(1, np.int64))
    assert np.isinf(alone).all()


def test_seed_default_is_bit_identical_to_the_plain_search() -> None:
    """One group of every row, k = 1: exactly the chunked nearest-neighbour distance."""
    rng = np.random.default_rng(8)
    b, q = _unit(rng, 300, 16), _unit(rng, 50, 16)
    np.testing.assert_array_equal(knn.score(q, b, [knn.Group()]), knn.knn_distances(q, b, 1)[:, 0])
    rows = np.arange(300)
    np.testing.assert_array_equal(
        knn.score(b, b, [knn.Group()], self_index=rows), knn.knn_distances(b, b, 1, self_index=rows)[:, 0]
    )


def test_density_norm_equalizes_dense_and_sparse_clusters() -> None:
    rng = np.random.default_rng(6)
    d = 32
    centre_a, centre_b = np.zeros(d), np.zeros(d)
    centre_a[0], centre_b[1] = 1.0, 1.0
    dense = knn.l2_normalize((centre_a + 0.02 * rng.standard_normal((200, d))).astype(np.float32))
    sparse = knn.l2_normalize((centre_b + 0.2 * rng.standard_normal((200, d))).astype(np.float32))
    bank = np.concatenate([dense, sparse])
    q_dense = knn.l2_normalize((centre_a + 0.02 * rng.standard_normal((100, d))).astype(np.float32))
    q_sparse = knn.l2_normalize((centre_b + 0.2 * rng.standard_normal((100, d))).astype(np.float32))
    raw_a, raw_b = knn.score(q_dense, bank, [knn.Group()]), knn.score(q_sparse, bank, [knn.Group()])
    assert raw_b.mean() > 10 * raw_a.mean()  # without normalization the sparse cluster looks anomalous
    radii = knn.density_radii(bank, 5)
    norm_a = knn.score(q_dense, bank, [knn.Group(scale=radii)])
    norm_b = knn.score(q_sparse, bank, [knn.Group(scale=radii)])
    assert 0.5 < norm_b.mean() / norm_a.mean() < 2.0
    # Radii are the mean distance to the 5 nearest other rows.
    full = np.clip(1.0 - bank.astype(np.float64) @ bank.T.astype(np.float64), 0, None)
    np.fill_diagonal(full, np.inf)
    tol = unit_dot_atol(d)  # float32 1 - q.b of unit d-vectors
    np.testing.assert_allclose(radii, np.sort(full, axis=1)[:, :5].mean(1), rtol=0, atol=tol)
    # Chunked like every search: the same radii from tiny blocks (no M x M matrix needed).
    np.testing.assert_allclose(knn.density_radii(bank, 5, query_chunk=7, bank_chunk=13), radii, rtol=0, atol=tol)


def test_standardization_floor_and_normalization() -> None:
    x = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0], [5.0, 5.0, 0.0]], dtype=np.float32)
    mean, std = knn.standardization_stats(x)
    np.testing.assert_allclose(mean, [3.0, 5.0, 0.0])
    floor = knn.STD_FLOOR_REL * np.sqrt(8 / 3) / 3
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), floor, floor], rtol=1e-5)
    z = knn.prepare(x, mean, std)
    assert z.dtype == np.float32 and z.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(z, [[-1, 0, 0], [0, 0, 0], [1, 0, 0]], atol=1e-6)  # zero row stays zero
    _, std0 = knn.standardization_stats(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(std0, np.float32([knn.STD_FLOOR_ABS] * 2))


def test_kmeans_centres_are_deterministic_unit_vectors() -> None:
    rng = np.random.default_rng(7)
    x = _unit(rng, 50, 8)
    a, b = knn.kmeans_centres(x, 5, seed=3), knn.kmeans_centres(x, 5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(knn.kmeans_centres(x, 60, seed=0), x)


def test_density_radii_memory_is_bounded_by_the_blocks() -> None:
    """No M x M matrix: peak extra memory follows query_chunk x bank_chunk, not M^2."""
    import tracemalloc

    b = _unit(np.random.default_rng(9), 2000, 8)
    tracemalloc.start()
    try:
        radii = knn.density_radii(b, 3, query_chunk=128, bank_chunk=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert radii.shape == (2000,)
    assert peak < 2000 * 2000 * 4 / 8  # an M x M float32 matrix would be 16 MB; the blocks are ~0.1 MB
