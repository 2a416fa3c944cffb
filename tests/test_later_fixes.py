"""Trust gaps closed after the restructuring: bounded --workers for fine-tuning, a decision
threshold never below the scores it was fitted on, a resume refusal that names what differs, and
a run's banks and fine-tuning record checked against its stage records; through the real CLI.
Tiny random BEATs, 1 s clips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error

from asdcli.workers import usable_cpus

# ------------------------------------------------------------------------- --workers


@pytest.mark.parametrize("command", ["finetune", "run"])
def test_workers_beyond_the_cpus_is_one_error_before_any_work(
    command: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """One more worker than CPUs (a safe stand-in for a typo like 100000, which would fork that
    many processes) is refused in one line, as `asd embed --workers` is, and nothing is written."""
    out = tmp_path / "out"
    for workers in (usable_cpus() + 1, 10**9, -1):
        result = _asd(command, synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--epochs", 1,
                      "--seconds", 1, "--device", "cpu", "--workers", workers)  # fmt: skip
        _assert_error(result, "--workers must be from 0 to this machine's", f"{usable_cpus()} CPUs", f"got {workers}")
        assert not out.exists()
