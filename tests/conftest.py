"""Shared fixtures: a tiny synthetic DCASE dataset and a tiny random official-format checkpoint."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from asdcli.synth.dataset import SynthConfig, make_dataset

# 3 machines (bearing with noAttribute names), 1 s clips, per machine: 6 source + 2 target train,
# 3 clips per test cell (source/target x normal/anomaly), 1 supplemental machine + 1 noise clip.
TINY_SYNTH = SynthConfig(
    seed=0,
    machines=("fan", "gearbox", "bearing"),
    seconds=1.0,
    n_train_source=6,
    n_train_target=2,
    n_test_per_cell=3,
    n_supplemental=1,
)

# What the environment may say about the terminal, read by rich (COLUMNS, FORCE_COLOR, TTY_*) and by
# typer at import (FORCE_COLOR, PY_COLORS, TERMINAL_WIDTH): the tests read output as rendered for a
# pipe 80 columns wide without colour, whatever terminal or CI the suite runs under.
TERMINAL_VARIABLES = ("LINES", "FORCE_COLOR", "PY_COLORS", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERMINAL_WIDTH")


def pytest_configure(config: pytest.Config) -> None:
    """Before the test modules import typer and rich: a plain 80-column output, in this process and its children."""
    os.environ["COLUMNS"] = "80"
    for name in TERMINAL_VARIABLES:
        os.environ.pop(name, None)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """asdcli's user cache (checkpoint hashes) in a temp folder: tests never write to the real home."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("asd-cache")
        mp.setenv("ASD_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic dataset (``TINY_SYNTH``): ``root/<machine>/{train,test,supplemental}``.

    Session-scoped and shared: treat it as read-only (copy it if a test must change files).
    """
    root = tmp_path_factory.mktemp("synth") / "dev"
    make_dataset(root, TINY_SYNTH)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-format checkpoint of a randomly initialised tiny BEATs (seed 0), read-only."""
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "beats_tiny.pt", seed=0)
