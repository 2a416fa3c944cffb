"""How long a clip the front end takes: constants and the one check of --seconds (torch-free, so
the CLI can validate options before it imports torch)."""

from __future__ import annotations

import math

from asdcli.errors import ConfigError

SAMPLE_RATE = 16000  # Hz, what BEATs was trained on and what DCASE ships
CLIP_SECONDS = 10.0  # the longest DCASE 2025 clip
MIN_SECONDS = 0.175  # 2800 samples at 16 kHz: shorter input gives BEATs no patch to embed
# The longest clip the front end takes at once. BEATs attention memory grows with the square of
# the length (BEATs_iter3 at 60 s: 2992 tokens, 0.43 GB of attention weights per clip and layer),
# and its relative position buckets stop at max_distance 800 tokens (~16 s): longer recordings are
# scored in windows, not as one clip.
MAX_SECONDS = 60.0


def check_clip_seconds(seconds: float | None) -> None:
    """ConfigError unless ``seconds`` (None: natural length) is a clip length the front end takes."""
    if seconds is None:
        return
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and MIN_SECONDS <= seconds <= MAX_SECONDS):
        raise ConfigError(
            f"--seconds must be a clip length from {MIN_SECONDS} to {MAX_SECONDS:g} s, got {seconds}; "
            "BEATs attention memory grows with the square of the length, so longer recordings are "
            "scored in windows."
        )
