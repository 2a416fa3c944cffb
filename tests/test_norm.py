"""Score normalizations against hand computations on tiny banks of 2-D unit vectors.

A vector at angle a degrees is (cos a, sin a); the cosine distance of angles a and b is
1 - cos(a - b), so every expected score below is written out from the definitions in issue 13.
"""

import math

import numpy as np
import pytest

from asdcli.backend import bank as B
from asdcli.backend import bank_fit as F
from asdcli.backend import knn, norm

SOURCE = [0.0, 10.0, 30.0]
TARGET = [40.0, 80.0, 120.0]


def unit(*angles: float) -> np.ndarray:
    rad = np.radians(np.asarray(angles, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def d(degrees: float) -> float:
    return 1.0 - math.cos(math.radians(degrees))


BANK = unit(*SOURCE, *TARGET)
DOMAIN = np.array(["source"] * 3 + ["target"] * 3)
QUERY = unit(45.0, 100.0)
# float32 vectors: 1 - q.b carries ~1e-7 absolute error, divided by radii >= d(10) ~ 0.015.
ATOL = 1e-4


def scores(score_norm: str, **kw: int) -> tuple[np.ndarray, dict]:
    radii, stats = norm.fit_normalization(BANK, DOMAIN, score_norm, kw.get("k_s"), kw.get("k_t"), 1, 0, "test")
    groups = norm.score_groups(score_norm, DOMAIN, radii, stats)
    return knn.score(QUERY, BANK, groups), stats


def test_none_is_the_nearest_cosine_distance() -> None:
    got, stats = scores("none")
    assert stats == {}
    np.testing.assert_allclose(got, [d(5), d(20)], atol=1e-6)


def test_density_divides_by_the_mean_distance_to_the_k_nearest_other_vectors() -> None:
    got, stats = scores("density", k_s=2)
    # r(f) over the whole bank, K = 2: 0 -> (10, 30); 10 -> (0, 30); 30 -> (40, 10); 40 -> (30, 10); 80 -> (120, 40); 120 -> (80, 40)
    r = {
        0: (d(10) + d(30)) / 2,
        10: (d(10) + d(20)) / 2,
        30: (d(10) + d(20)) / 2,
        40: (d(10) + d(30)) / 2,
        80: (d(40) + d(40)) / 2,
        120: (d(40) + d(80)) / 2,
    }
    expected = [min(d(abs(q - f)) / r[f] for f in r) for q in (45, 100)]
    assert stats == {"density_k": 2}
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_domain_density_uses_each_domains_own_radii() -> None:
    got, stats = scores("domain-density", k_s=1, k_t=1)
    r_src = {0: d(10), 10: d(10), 30: d(20)}
    r_tgt = {40: d(40), 80: d(40), 120: d(40)}  # within the target bank only
    expected = [
        min(min(d(abs(q - f)) / r for f, r in r_src.items()), min(d(abs(q - f)) / r for f, r in r_tgt.items()))
        for q in (45, 100)
    ]
    assert stats == {"density_k": 1, "density_k_target": 1}
    np.testing.assert_allclose(got, expected, atol=ATOL)
    # Plain density with the same K: the sparse target vector at 40 degrees takes its radius
    # from the dense source vector at 30 (d(10), not d(40)), so the two norms differ.
    plain, _ = scores("density", k_s=1)
    assert abs(plain[0] - got[0]) > 0.1 * got[0]


def test_domain_density_target_k_is_at_most_n_target_minus_1() -> None:
    _, stats = scores("domain-density", k_s=1, k_t=10)
    assert stats["density_k_target"] == 2


def test_domain_zscore_uses_each_domains_mean_and_the_target_std() -> None:
    got, stats = scores("domain-zscore")
    loo_s = [d(10), d(10), d(20)]  # 0 -> 10, 10 -> 0, 30 -> 10 within the source bank
    loo_t = [d(40), d(40), d(40)]  # 40 -> 80, 80 -> 40 or 120, 120 -> 80
    mu_s, mu_t = float(np.mean(loo_s)), float(np.mean(loo_t))
    sigma_t = norm.ZSCORE_STD_FLOOR_REL * mu_t  # equal target distances: std 0, raised to the floor
    assert stats["source"]["mean"] == pytest.approx(mu_s, abs=1e-6)
    assert stats["source"]["std"] == pytest.approx(float(np.std(loo_s)), abs=1e-6)
    assert stats["target"]["std"] == pytest.approx(sigma_t, rel=1e-3)
    expected = [
        min((d(15) - mu_s) / sigma_t, (d(5) - mu_t) / sigma_t),
        min((d(70) - mu_s) / sigma_t, (d(20) - mu_t) / sigma_t),
    ]
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_domain_zscore_std_of_spread_target_distances() -> None:
    bank = unit(0.0, 10.0, 30.0, 60.0, 100.0, 160.0)
    radii, stats = norm.fit_normalization(bank, DOMAIN, "domain-zscore", None, None, 1, 0, "test")
    loo_t = [d(40), d(40), d(60)]
    assert stats["target"]["mean"] == pytest.approx(np.mean(loo_t), abs=1e-6)
    assert stats["target"]["std"] == pytest.approx(np.std(loo_t), abs=1e-6)
    np.testing.assert_array_equal(radii, 1.0)


def test_default_k_rule() -> None:
    assert [norm.default_density_k(n) for n in (2, 3, 10, 35, 60, 110, 990, 10_000)] == [1, 1, 1, 2, 3, 3, 10, 33]


def test_thresholds_come_from_the_same_normalized_leave_one_out_scores() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 6)).astype(np.float32)
    dom = np.array(["source"] * 24 + ["target"] * 6)
    for score_norm in norm.SCORE_NORMS:
        bank = F.build_bank(x, dom, np.array([f"c{i}" for i in range(30)]), B.BankConfig(score_norm=score_norm))
        rows = np.arange(30)
        np.testing.assert_array_equal(bank.loo_scores, bank.score_prepared(bank.vectors, self_index=rows))
        assert bank.threshold == F.fit_threshold(bank.loo_scores)[0]
        assert bank.loo_stats == pytest.approx((bank.loo_scores.mean(), bank.loo_scores.std()), rel=1e-5)


def test_statistics_never_see_test_clips() -> None:
    """A bank is a function of its training vectors only: scoring more clips changes nothing."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    dom = np.array(["source"] * 16 + ["target"] * 4)
    names = np.array([f"c{i}" for i in range(20)])
    bank = F.build_bank(x, dom, names, B.BankConfig(score_norm="domain-zscore"))
    before = dict(bank.normalization)
    bank.score_prepared(knn.prepare(rng.standard_normal((50, 4)).astype(np.float32), bank.mean, bank.std))
    assert (
        bank.normalization
        == before
        == F.build_bank(x, dom, names, B.BankConfig(score_norm="domain-zscore")).normalization
    )
