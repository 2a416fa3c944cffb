"""The range of every random seed option: what numpy's and torch's generators all take."""

from __future__ import annotations

from typing import Any

from asdcli.errors import ConfigError

MAX_SEED = 2**32 - 1


def is_seed(value: Any) -> bool:
    """Whether ``value`` is an integer in [0, MAX_SEED] (a bool is not)."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_SEED


def check_seed(value: Any, option: str = "--seed") -> int:
    """``value`` if it is an integer in [0, MAX_SEED], else a ConfigError naming ``option``."""
    if not is_seed(value):
        raise ConfigError(f"{option} must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {value!r}.")
    return value
