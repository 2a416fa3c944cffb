"""Checks of a loaded bank file: every array and meta field that scoring relies on, so a tampered
or foreign file is one ArtifactError naming it, never a traceback or a silent wrong score."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from asdcli.backend import norm
from asdcli.errors import ArtifactError

BANK_ARRAYS = ("mean", "std", "vectors", "domain", "filenames", "radii", "loo_rows", "loo_scores", "threshold", "meta")
_NUMERIC = ("mean", "std", "vectors", "radii", "loo_rows", "loo_scores", "threshold")
# Bank vectors are L2-normalized (or all zero); float32 rounding keeps norms well within this.
NORM_TOLERANCE = 1e-3


def _fail(path: str | Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}; re-run `asd fit-bank`.")


def check_header(meta: dict[str, Any], path: str | Path, kind: str, schema: int) -> None:
    """Kind, schema version and the types of the meta fields."""
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path} is not a bank file (kind {meta.get('kind')!r}); make one with `asd fit-bank`.")
    if meta.get("schema_version") != schema:
        raise ArtifactError(
            f"{path} has bank schema {meta.get('schema_version')!r}, this asdcli reads {schema}; re-run `asd fit-bank`."
        )
    for key in ("config", "threshold", "embedding", "normalization"):
        if not isinstance(meta.get(key, {}), dict):
            raise _fail(path, f"its meta field {key!r} is not a JSON object")
    for key in ("machine", "section"):
        if not isinstance(meta.get(key, ""), str):
            raise _fail(path, f"its meta field {key!r} is not a string")
    stats = meta.get("loo_stats")
    if stats is not None:
        ok = isinstance(stats, dict) and all(_is_finite(stats.get(f)) for f in ("mean", "std"))
        if not ok or stats["std"] < 0:
            raise _fail(path, "its leave-one-out statistics are not finite numbers")


def check_arrays(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """Dtypes, shapes and values of the stored arrays."""
    for key in _NUMERIC:
        if arrays[key].dtype.kind not in "fiu":
            raise _fail(path, f"{key} has dtype {arrays[key].dtype}, expected numbers")
    vectors = arrays["vectors"]
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise _fail(path, f"vectors must be a non-empty 2-D array, got shape {vectors.shape}")
    m, d = vectors.shape
    for key, shape in (("mean", (d,)), ("std", (d,)), ("domain", (m,)), ("filenames", (m,)), ("radii", (m,))):
        if arrays[key].shape != shape:
            raise _fail(path, f"{key} has shape {arrays[key].shape}, expected {shape}")
    rows, loo = arrays["loo_rows"], arrays["loo_scores"]
    if loo.ndim != 1 or not 1 <= loo.shape[0] <= m or rows.shape != loo.shape:
        raise _fail(path, f"loo_scores/loo_rows have shapes {loo.shape}/{rows.shape}, expected (n,) with 1 <= n <= {m}")
    if rows.dtype.kind not in "iu" or rows.min() < 0 or rows.max() >= m or np.unique(rows).size != rows.size:
        raise _fail(path, f"loo_rows must be distinct row numbers in 0..{m - 1}")
    if arrays["threshold"].size != 1:
        raise _fail(path, f"threshold has shape {arrays['threshold'].shape}, expected one number")
    # checked as the float32 the bank is loaded as: a float64 beyond its range would become Inf (or 0)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        loaded = {key: arrays[key].astype(np.float32) for key in ("vectors", "mean", "std", "radii", "loo_scores")}
    for key, values in (*loaded.items(), ("threshold", arrays["threshold"])):
        if not np.isfinite(values).all():
            raise _fail(path, f"{key} contains NaN or Inf (or values beyond float32 range)")
    for key in ("std", "radii"):
        if (loaded[key] <= 0).any():
            raise _fail(path, f"{key} has zero or negative values (asd fit-bank floors them above 0)")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if ((np.abs(norms - 1.0) > NORM_TOLERANCE) & (norms != 0.0)).any():
        raise _fail(path, "vectors are not L2-normalized")


def check_options(
    meta: dict[str, Any], score_norm: str, k: int, domain: np.ndarray, path: str | Path
) -> dict[str, Any]:
    """The bank options fit the bank; returns the normalization record."""
    m = domain.shape[0]
    if k > m:
        raise _fail(path, f"its option k = {k} needs at least {k} vectors, the bank has {m}")
    stats = meta.get("normalization", {})
    problem = norm.check_stats(score_norm, stats, domain, k)
    if problem is not None:
        raise _fail(path, f"--score-norm {score_norm}: {problem}")
    sizes = {"density_k": m}
    if score_norm == "domain-density":
        sizes = {"density_k": int((domain == "source").sum()), "density_k_target": int((domain == "target").sum())}
    for key, n in sizes.items():
        if key in stats and not 1 <= stats[key] <= n - 1:
            raise _fail(path, f"its {key} = {stats[key]} does not fit a group of {n} vectors")
    return dict(stats)


def _is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
