"""asdcli.processes: one process without a launcher (accelerate not even imported), accelerate's view under one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
from asdcli.processes import SingleProcess, launched, process_state

ROOT = Path(__file__).resolve().parents[1]


def _without_launcher(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not launched({k: v})}


@pytest.mark.parametrize("name", ["LOCAL_RANK", "RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                  "FORK_LAUNCHED", "ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION"])  # fmt: skip
def test_any_launcher_variable_counts_as_launched(name):
    assert not launched({"HOME": "/root", "OMP_NUM_THREADS": "2"})
    assert launched({"HOME": "/root", name: "0"})


def test_a_single_process_shares_nothing(monkeypatch):
    for k in list(os.environ):
        if launched({k: os.environ[k]}):
            monkeypatch.delenv(k)
    state = process_state()
    assert isinstance(state, SingleProcess)
    assert (state.num_processes, state.process_index, state.is_main_process) == (1, 0, True)
    with state.split_between_processes([3, 1, 2]) as mine:
        assert mine == [3, 1, 2]
    state.wait_for_everyone()


def test_under_a_launcher_accelerate_decides():
    # in a child: accelerate's state is a process-wide singleton, not to be set up for the other tests
    code = "from asdcli.processes import process_state; s = process_state(); print(type(s).__name__, s.num_processes)"
    env = _without_launcher(dict(os.environ)) | {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["PartialState", "1"]


def test_asd_embed_without_a_launcher_does_not_import_accelerate(tmp_path):
    clips = tmp_path / "fan" / "train"
    clips.mkdir(parents=True)
    sf.write(clips / "section_00_source_train_normal_0000_a_0.wav", np.zeros(8000, np.float32), 16000)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    cmd = [sys.executable, "-X", "importtime", "-m", "asdcli", "embed", str(tmp_path / "fan"), "--checkpoint",
           str(ckpt), "--seconds", "0.5", "--out", str(tmp_path / "emb.npz")]  # fmt: skip
    env = _without_launcher(dict(os.environ)) | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "emb.npz").is_file()
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "torch" in imported and "asdcli.frontend.embed" in imported
    assert not [m for m in imported if m.split(".")[0] == "accelerate"]
