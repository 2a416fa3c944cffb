"""The DCASE Task 2 metrics, exactly as the official evaluator computes them (pure numpy/sklearn).

Conventions for every function: ``y_true`` is (N,) with 1 = anomaly, 0 = normal; ``y_score`` is
(N,) float, higher = more anomalous; ``target`` is (N,) with 1 = target domain, 0 = source;
``y_pred`` is (N,) decisions with 1 = anomaly. Values are fractions in [0, 1], not percentages.

Cross-domain rule (official evaluator, ``dcase2024_task2_evaluator.py``): AUC (source) is the ROC
AUC over the *source normals plus the anomalies of both domains*, and AUC (target) over the
*target normals plus all anomalies*, so one threshold has to serve both domains. pAUC (source) and
pAUC (target) use the same clip subsets (as the evaluator's own, disabled, per-domain pAUC line
does). Precision, recall and F1 of a domain use that domain's clips only.

pAUC is ``sklearn.metrics.roc_auc_score(y_true, y_score, max_fpr=0.1)``: the McClish-standardised
partial AUC ``0.5 * (1 + (A - p^2/2) / (p - p^2/2))`` with ``A`` the raw ROC area for FPR in
[0, p], so chance is 0.5 and a perfect detector 1.0.

A metric that is undefined because a subset lacks normals or anomalies is ``nan`` (the official
evaluator would crash); every mean of a list holding ``nan`` is ``nan``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

MAX_FPR = 0.1
# The evaluator floors every value at machine epsilon before scipy.stats.hmean (hmean of 0 fails).
EPSILON = sys.float_info.epsilon
DOMAINS = ("source", "target")

# Per machine/section columns, in the order of the baseline's result files (plus AUC (all)).
COLUMNS = (
    "AUC (source)",
    "AUC (target)",
    "AUC (all)",
    "pAUC",
    "pAUC (source)",
    "pAUC (target)",
    "precision (source)",
    "precision (target)",
    "recall (source)",
    "recall (target)",
    "F1 score (source)",
    "F1 score (target)",
)
# The values that enter the official score, for every machine/section.
OFFICIAL_COLUMNS = ("AUC (source)", "AUC (target)", "pAUC")
DECISION_COLUMNS = COLUMNS[6:]


def _arrays(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"y_true has {t.size} values but y_score has {s.size}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (normal) and 1 (anomaly)")
    return t, s


def _two_classes(y_true: np.ndarray) -> bool:
    return bool(y_true.size) and 0 < int(y_true.sum()) < y_true.size


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC (ties count 1/2); ``nan`` unless both classes are present."""
    t, s = _arrays(y_true, y_score)
    return float(roc_auc_score(t, s)) if _two_classes(t) else float("nan")


def pauc(y_true: np.ndarray, y_score: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """McClish-standardised partial AUC up to FPR ``max_fpr`` (``roc_auc_score(max_fpr=...)``)."""
    t, s = _arrays(y_true, y_score)
    return float(roc_auc_score(t, s, max_fpr=max_fpr)) if _two_classes(t) else float("nan")


def domain_mask(y_true: np.ndarray, target: np.ndarray, domain: str) -> np.ndarray:
    """(N,) bool: the normals of ``domain`` plus the anomalies of *both* domains."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    is_target = np.asarray(target).astype(bool).ravel()
    in_domain = is_target if domain == "target" else ~is_target
    return in_domain | (np.asarray(y_true).ravel() == 1)


def auc_domain(y_true: np.ndarray, y_score: np.ndarray, target: np.ndarray, domain: str) -> float:
    """AUC of one domain by the official cross-domain rule (see the module docstring)."""
    m = domain_mask(y_true, target, domain)
    return auc(np.asarray(y_true).ravel()[m], np.asarray(y_score).ravel()[m])


def auc_source(y_true: np.ndarray, y_score: np.ndarray, target: np.ndarray) -> float:
    """AUC (source): source normals + anomalies of both domains."""
    return auc_domain(y_true, y_score, target, "source")


def auc_target(y_true: np.ndarray, y_score: np.ndarray, target: np.ndarray) -> float:
    """AUC (target): target normals + anomalies of both domains."""
    return auc_domain(y_true, y_score, target, "target")


def auc_all(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUC (all): every test clip of the machine/section."""
    return auc(y_true, y_score)


def pauc_domain(
    y_true: np.ndarray, y_score: np.ndarray, target: np.ndarray, domain: str, max_fpr: float = MAX_FPR
) -> float:
    """pAUC over the same clips as :func:`auc_domain` (domain normals + all anomalies)."""
    m = domain_mask(y_true, target, domain)
    return pauc(np.asarray(y_true).ravel()[m], np.asarray(y_score).ravel()[m], max_fpr)


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of decisions (1 = anomaly), the evaluator's way.

    Denominators are floored at machine epsilon, so an empty denominator gives 0, not an error:
    ``prec = tp / max(tp + fp, eps)``, ``rec = tp / max(tp + fn, eps)``,
    ``f1 = 2 prec rec / max(prec + rec, eps)``.
    """
    t, p = _arrays(y_true, y_pred)
    if not np.isin(p, (0, 1)).all():
        raise ValueError("y_pred must hold only 0 and 1")
    tp = float(np.sum((t == 1) & (p == 1)))
    fp = float(np.sum((t == 0) & (p == 1)))
    fn = float(np.sum((t == 1) & (p == 0)))
    prec = tp / max(tp + fp, EPSILON)
    rec = tp / max(tp + fn, EPSILON)
    return prec, rec, 2.0 * prec * rec / max(prec + rec, EPSILON)


def amean(values: Iterable[float]) -> float:
    """Arithmetic mean; ``nan`` for an empty list or when any value is ``nan``."""
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()) if v.size else float("nan")


def hmean(values: Iterable[float]) -> float:
    """``scipy.stats.hmean`` of the values floored at ``EPSILON`` (as the evaluator does);
    ``nan`` for an empty list or when any value is ``nan``."""
    v = np.asarray(list(values), dtype=np.float64)
    if not v.size or np.isnan(v).any():
        return float("nan")
    return float(scipy.stats.hmean(np.maximum(v, EPSILON)))


def official_score(auc_sources: Iterable[float], auc_targets: Iterable[float], paucs: Iterable[float]) -> float:
    """The official score: hmean of [AUC (source) of every machine/section] + [AUC (target) of
    every ...] + [pAUC of every ...], each floored at ``EPSILON`` (21 values for 7 machines)."""
    return hmean([*auc_sources, *auc_targets, *paucs])


def section_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    target: np.ndarray,
    y_pred: np.ndarray | None = None,
    max_fpr: float = MAX_FPR,
) -> dict[str, float]:
    """Every column of :data:`COLUMNS` for one machine/section.

    Parameters
    ----------
    y_true, y_score, target : (N,) arrays, see the module docstring.
    y_pred : (N,) 0/1 decisions, optional; without them the precision, recall and F1 columns
        are ``nan``.

    Returns
    -------
    dict mapping each name in ``COLUMNS`` to a float in [0, 1] or ``nan``.
    """
    t, s = _arrays(y_true, y_score)
    tg = np.asarray(target).astype(np.int64).ravel()
    if tg.shape != t.shape:
        raise ValueError(f"target has {tg.size} values but y_true has {t.size}")
    out = {name: float("nan") for name in COLUMNS}
    out["AUC (all)"] = auc_all(t, s)
    out["pAUC"] = pauc(t, s, max_fpr)
    for domain in DOMAINS:
        out[f"AUC ({domain})"] = auc_domain(t, s, tg, domain)
        out[f"pAUC ({domain})"] = pauc_domain(t, s, tg, domain, max_fpr)
        if y_pred is not None:
            in_domain = tg == (1 if domain == "target" else 0)
            if in_domain.any():
                prec, rec, f1 = precision_recall_f1(t[in_domain], np.asarray(y_pred).ravel()[in_domain])
                out[f"precision ({domain})"], out[f"recall ({domain})"], out[f"F1 score ({domain})"] = prec, rec, f1
    return out


def column_means(rows: Iterable[Mapping[str, float]], columns: Iterable[str] = COLUMNS) -> dict[str, dict[str, float]]:
    """Per-column ``{"arithmetic mean": {...}, "harmonic mean": {...}}`` over metric rows
    (e.g. the sections of a machine, or every machine/section of a system)."""
    rows = list(rows)
    cols = list(columns)
    return {
        "arithmetic mean": {c: amean(r[c] for r in rows) for c in cols},
        "harmonic mean": {c: hmean(r[c] for r in rows) for c in cols},
    }
