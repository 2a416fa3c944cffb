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
