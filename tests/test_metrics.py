"""asdcli.evaluate.metrics against hand-computed cases, sklearn, the McClish formula and the published table."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from asdcli.evaluate import metrics

# Two source normals, two target normals, one anomaly in each domain.
#                  sN   sN   tN   tN   sA   tA
SCORES = np.array([0.1, 0.4, 0.3, 0.9, 0.5, 0.2])
Y = np.array([0, 0, 0, 0, 1, 1])
TARGET = np.array([0, 0, 1, 1, 0, 1])


def test_auc_source_uses_source_normals_and_anomalies_of_both_domains() -> None:
    # pairs (anomaly, source normal): 0.5>0.1, 0.5>0.4, 0.2>0.1, 0.2<0.4 -> 3/4
    assert metrics.auc_source(Y, SCORES, TARGET) == pytest.approx(0.75)
    # the common mistake (source anomalies only) would give 1.0
    only_source = TARGET == 0
    assert roc_auc_score(Y[only_source], SCORES[only_source]) == 1.0


def test_auc_target_uses_target_normals_and_anomalies_of_both_domains() -> None:
    # pairs (anomaly, target normal): 0.5>0.3 only -> 1/4
    assert metrics.auc_target(Y, SCORES, TARGET) == pytest.approx(0.25)


def test_auc_all_over_every_clip() -> None:
    # 0.5 beats 0.1, 0.4, 0.3; 0.2 beats 0.1 -> 4 of 8 pairs
    assert metrics.auc_all(Y, SCORES) == pytest.approx(0.5)


def test_domain_mask() -> None:
    assert metrics.domain_mask(Y, TARGET, "source").tolist() == [True, True, False, False, True, True]
    assert metrics.domain_mask(Y, TARGET, "target").tolist() == [False, False, True, True, True, True]
    with pytest.raises(ValueError):
        metrics.domain_mask(Y, TARGET, "both")


def test_ties_count_one_half() -> None:
    # normals 0.5, 0.1; anomalies 0.5, 0.9: tie (1/2) + 3 wins -> 3.5/4
    assert metrics.auc([0, 0, 1, 1], [0.5, 0.1, 0.5, 0.9]) == pytest.approx(0.875)
    assert metrics.auc([0, 0, 1, 1], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)


def test_auc_undefined_with_one_class_is_nan() -> None:
    assert math.isnan(metrics.auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(metrics.pauc([1, 1], [0.1, 0.2]))
    # no target normals: AUC (target) has anomalies only
    assert math.isnan(metrics.auc_target([0, 1, 1], [0.1, 0.2, 0.3], [0, 0, 1]))


def test_pauc_hand_computed() -> None:
    # 10 normals 0..9, anomalies 9.5, 8.5, 0.5. Up to FPR 0.1 the ROC is at TPR 1/3 (only 9.5 beats
    # every normal), so the raw area is A = 0.1 / 3; McClish: 0.5 * (1 + (A - 0.005) / (0.1 - 0.005)).
    scores = np.r_[np.arange(10.0), 9.5, 8.5, 0.5]
    y = np.r_[np.zeros(10), np.ones(3)]
    expected = 0.5 * (1 + (0.1 / 3 - 0.005) / (0.1 - 0.005))
    assert expected == pytest.approx(0.6491228070)
    assert metrics.pauc(y, scores) == pytest.approx(expected)
    assert metrics.pauc(y, scores) == roc_auc_score(y, scores, max_fpr=0.1)


def _raw_partial_area(y: np.ndarray, s: np.ndarray, p: float) -> float:
    """Own ROC and trapezoid area for FPR in [0, p] (ties as diagonal steps), no sklearn."""
    n_pos, n_neg = (y == 1).sum(), (y == 0).sum()
    pts = [(0.0, 0.0)]
    for thr in np.unique(s)[::-1]:
        pts.append((((s >= thr) & (y == 0)).sum() / n_neg, ((s >= thr) & (y == 1)).sum() / n_pos))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 >= p:
            break
        if x1 > p:  # cut the segment at FPR = p
            y1 = y0 + (y1 - y0) * (p - x0) / (x1 - x0)
            x1 = p
        area += (x1 - x0) * (y0 + y1) / 2
    return area


@pytest.mark.parametrize("seed", range(6))
def test_pauc_equals_sklearn_and_mcclish_of_own_partial_area(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    y = (rng.random(n) < 0.4).astype(int)
    s = np.round(rng.normal(size=n) + 0.8 * y, 1)  # rounding makes ties
    p = metrics.MAX_FPR
    a = _raw_partial_area(y, s, p)
    mcclish = 0.5 * (1 + (a - p**2 / 2) / (p - p**2 / 2))
    assert metrics.pauc(y, s) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1), abs=1e-12)
    assert metrics.pauc(y, s) == pytest.approx(mcclish, abs=1e-12)


def test_pauc_domain_uses_the_same_clips_as_auc_domain() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40), np.ones(20)].astype(int)
    target = np.r_[np.zeros(20), np.ones(20), np.zeros(10), np.ones(10)].astype(int)
    s = rng.normal(size=60) + y
    for domain, keep in (("source", (target == 0) | (y == 1)), ("target", (target == 1) | (y == 1))):
        assert metrics.pauc_domain(y, s, target, domain) == roc_auc_score(y[keep], s[keep], max_fpr=0.1)
        assert metrics.auc_domain(y, s, target, domain) == roc_auc_score(y[keep], s[keep])


def test_precision_recall_f1() -> None:
    # tp = 2, fp = 1, fn = 1
    p, r, f = metrics.precision_recall_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert (p, r, f) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # tp = 1, fp = 0, fn = 2: precision 1, recall 1/3, F1 = 2 * 1/3 / (4/3) = 1/2
    assert metrics.precision_recall_f1([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx((1.0, 1 / 3, 0.5))
    # nothing decided anomalous: the evaluator's epsilon floors give 0, not a division error
    assert metrics.precision_recall_f1([1, 0], [0, 0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        metrics.precision_recall_f1([1, 0], [2, 0])


def test_hmean_amean_and_epsilon_floor() -> None:
    assert metrics.hmean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.amean([0.5, 1.0]) == pytest.approx(0.75)
    tiny = metrics.hmean([0.0, 1.0])  # floored at machine epsilon instead of failing
    assert 0 < tiny < 1e-15
    assert math.isnan(metrics.hmean([0.5, float("nan")]))
    assert math.isnan(metrics.hmean([]))
    assert math.isnan(metrics.amean([]))


def test_official_score_of_the_published_baseline_table() -> None:
    # spec/dcase.md section 5: baseline AE (MSE) on the 2025 dev set; official score 56.25
    src = [71.05, 61.76, 66.53, 70.96, 64.80, 70.10, 63.53]
    tgt = [53.32, 56.46, 53.15, 38.75, 50.49, 48.77, 67.18]
    pauc = [49.79, 50.19, 61.12, 49.46, 52.49, 52.32, 57.35]
    score = metrics.official_score([v / 100 for v in src], [v / 100 for v in tgt], [v / 100 for v in pauc])
    assert round(100 * score, 2) == 56.25
    assert score == pytest.approx(scipy.stats.hmean(np.array(src + tgt + pauc) / 100))


def test_section_metrics_columns() -> None:
    pred = (SCORES > 0.45).astype(int)  # 0.5 and 0.9 decided anomalous
    m = metrics.section_metrics(Y, SCORES, TARGET, pred)
    assert set(m) == set(metrics.COLUMNS)
    assert m["AUC (source)"] == pytest.approx(0.75)
    assert m["AUC (target)"] == pytest.approx(0.25)
    assert m["AUC (all)"] == pytest.approx(0.5)
    assert m["pAUC"] == roc_auc_score(Y, SCORES, max_fpr=0.1)
    # source clips: 0.1 N, 0.4 N, 0.5 A -> tp 1, fp 0, fn 0
    assert (m["precision (source)"], m["recall (source)"], m["F1 score (source)"]) == pytest.approx((1, 1, 1))
    # target clips: 0.3 N, 0.9 N (decided 1), 0.2 A (decided 0) -> tp 0
    assert (m["precision (target)"], m["recall (target)"], m["F1 score (target)"]) == (0.0, 0.0, 0.0)
    without = metrics.section_metrics(Y, SCORES, TARGET)
    assert all(math.isnan(without[c]) for c in metrics.DECISION_COLUMNS)


def test_column_means() -> None:
    rows = [{"a": 0.5, "b": 1.0}, {"a": 1.0, "b": 1.0}]
    means = metrics.column_means(rows, ["a", "b"])
    assert means["arithmetic mean"] == pytest.approx({"a": 0.75, "b": 1.0})
    assert means["harmonic mean"] == pytest.approx({"a": 2 / 3, "b": 1.0})


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        metrics.auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        metrics.auc([0, 2], [0.1, 0.2])
