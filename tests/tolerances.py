"""Tolerances derived from float arithmetic, for comparing results computed through different paths.

Two fp32 computations of the same maths that differ only in kernels (batch size, thread count,
MKL/oneDNN ISA, ONNX Runtime) agree up to rounding, never bit for bit. Use these bounds there and
bit equality only where both sides run the same kernels on the same inputs.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23

# A float32 dot product of length K carries ~sqrt(K) * eps relative rounding (K <= 256 in the tiny
# test models: the 16x16 patch embedding), ~2e-6; the tiny 2-layer BEATs chains ~14 such products
# (mel bank, patch embedding, 6 per layer), so two kernels' outputs differ by ~sqrt(14) * 2e-6 ~ 7e-6
# of the output's magnitude; 1e-5 leaves a margin, far below what a wrong input or weight changes.
FP32_TINY_MODEL_REL = 1e-5


def fp32_tiny_model_atol(reference: np.ndarray) -> float:
    """Absolute tolerance for tiny-BEATs outputs (embeddings) computed by other kernels than ``reference``."""
    return FP32_TINY_MODEL_REL * max(1.0, float(np.abs(reference).max()))


def unit_dot_atol(dim: int) -> float:
    """|a - b| bound for two float32 computations of ``1 - q . b`` with unit ``dim``-vectors in any
    summation order: each is within gamma_dim ~ dim * eps / 2 of exact (Higham, Thm 3.1), so the two
    are within dim * eps of each other (and one of them within dim * eps / 2 of the float64 value)."""
    return dim * EPS32


def prepared_atol(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, refitted: bool = False) -> float:
    """Absolute tolerance for bank rows ``knn.prepare(raw, mean, std)`` (standardized, then unit length)
    of tiny-BEATs embeddings ``raw`` computed by other kernels (e.g. in another batch): each raw
    component moves by up to ``a = fp32_tiny_model_atol(raw)``, so z = (x - mean) / std by up to
    ``a / std`` per component, and z / |z| by at most 2 |dz| / |z| (|a/|a| - b/|b|| <= 2 |a - b| / |a|);
    plus the float32 rounding of the standardization and normalization themselves. ``refitted``: the
    mean and std were computed from such rows too, so each moves by up to ``a`` as well (the std is
    1-Lipschitz in the rows), and z by up to ``(2 + |z|) a / std``."""
    a = fp32_tiny_model_atol(raw)
    std64 = np.asarray(std, np.float64)
    z = (raw.astype(np.float64) - mean) / std64
    growth = 2.0 + np.abs(z).max(axis=0) if refitted else 1.0
    per_dim = a * growth / std64
    dz = float(np.sqrt(np.sum(per_dim**2)))
    return 2 * dz / float(np.linalg.norm(z, axis=1).min()) + raw.shape[1] * EPS32
