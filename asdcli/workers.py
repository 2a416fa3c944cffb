"""The range of every --workers option (DataLoader processes that read audio): 0 to this
machine's CPUs, so a typo like 10000 is one error, not that many forked processes."""

from __future__ import annotations

import os
from typing import Any


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_rule() -> str:
    """The rule a --workers value must meet, for an error sentence (``--workers must be ...``)."""
    return f"from 0 to this machine's {usable_cpus()} CPUs (one loading process each)"


def is_workers(value: Any) -> bool:
    """Whether ``value`` is an integer from 0 to :func:`usable_cpus` (a bool is not)."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= usable_cpus()
