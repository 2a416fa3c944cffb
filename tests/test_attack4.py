"""Adversarial cases of a fourth tester pass, on what the third pass's fixes changed; through the real CLI.

Each test states the promised behaviour. Those still failing are marked ``xfail(strict=True)``:
when a fix lands the test passes, the strict xfail turns red, and the marker is removed. Tiny
random BEATs, 1 s clips.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok

MARKER = "asd-synth.json"


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    """A folder holding the fan section 00 bank from the tiny BEATs."""
    root = tmp_path_factory.mktemp("attack4")
    train = root / "train.npz"
    _assert_ok(_asd("embed", synth_root / "fan" / "train", "--checkpoint", tiny_checkpoint, "--seconds", 1,
                    "--device", "cpu", "--out", train))  # fmt: skip
    _assert_ok(_asd("fit-bank", train, "--out-dir", root / "banks"))
    return root / "banks"


# ------------------------------------------------------------------------- asd demo --make-data


def _demo_data(root: Path) -> None:
    result = _asd("demo", "--make-data", root, "--seconds", 0.2)
    assert result.exit_code == 0, result.output


def _list_in_marker(root: Path, rel: str) -> None:
    """Edit the marker to claim ``rel`` (with a made-up hash) as a clip asd demo wrote."""
    marker = root / MARKER
    record = json.loads(marker.read_text(encoding="utf-8"))
    record["files"][rel] = "0" * 64
    marker.write_text(json.dumps(record), encoding="utf-8")


@pytest.mark.parametrize("where", ["outside", "absolute", "inside_not_wav", "inside_deeper"])
def test_demo_make_data_never_removes_a_file_the_marker_merely_lists(where: str, tmp_path: Path) -> None:
    """Only clips asd demo wrote, unchanged, are removed: a marker entry pointing outside DIR
    ('../x', an absolute path) or at a user's file it never wrote is an error or left alone."""
    root = tmp_path / "data"
    _demo_data(root)
    victim = {
        "outside": tmp_path / "victim.txt",
        "absolute": tmp_path / "elsewhere" / "victim.wav",
        "inside_not_wav": root / "fan" / "train" / "notes.txt",
        "inside_deeper": root / "fan" / "train" / "mine" / "own.wav",
    }[where]
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"the user's own file")
    rel = str(victim) if where == "absolute" else os.path.relpath(victim, root).replace(os.sep, "/")
    _list_in_marker(root, rel)
    result = _asd("demo", "--make-data", root, "--seconds", 0.2, "--seed", 1)
    assert victim.is_file(), (result.output, "a file asd demo never wrote was removed")
    assert victim.read_bytes() == b"the user's own file"


def test_demo_make_data_rerun_after_an_interrupted_regeneration(tmp_path: Path) -> None:
    """asd demo's own clips stay its own: after a re-generation stopped part way, running it again works."""
    from asdcli.synth.dataset import SynthConfig, make_dataset

    root = tmp_path / "data"
    _demo_data(root)
    written = [0]

    def stop_after_five(n: int) -> None:
        written[0] += n
        if written[0] >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_dataset(root, SynthConfig(seed=1, seconds=0.2), progress=stop_after_five)
    result = _asd("demo", "--make-data", root, "--seconds", 0.2, "--seed", 1)
    assert result.exit_code == 0, result.output


def test_demo_make_data_marker_naming_a_folder_is_one_error_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _demo_data(root)
    (root / "fan" / "mine").mkdir()
    _list_in_marker(root, "fan/mine")
    result = _asd("demo", "--make-data", root, "--seconds", 0.2, "--seed", 1)
    if result.exit_code != 0:
        _assert_error(result, "asd-synth.json")
    assert (root / "fan" / "mine").is_dir()


# ------------------------------------------------------------------------------ asd watch lock


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a live process other than this one (stands for a running watcher)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _hold_log_lock(log: Path, pid: int) -> None:
    lock = log.with_name(f".{log.name}.lock")
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "now"}) + "\n", encoding="utf-8")


def test_watch_refuses_a_log_another_watcher_holds(banks: Path, tmp_path: Path, live_pid: int) -> None:
    incoming, logs = tmp_path / "incoming", tmp_path / "logs"
    incoming.mkdir()
    logs.mkdir()
    log = logs / "watch.csv"
    _hold_log_lock(log, live_pid)
    _assert_error(_asd("watch", incoming, "--banks", banks, "--log", log, "--once", "--device", "cpu"), "in use")


def test_watch_refuses_a_symlink_to_a_log_another_watcher_holds(banks: Path, tmp_path: Path, live_pid: int) -> None:
    incoming, logs = tmp_path / "incoming", tmp_path / "logs"
    incoming.mkdir()
    logs.mkdir()
    log = logs / "watch.csv"
    log.write_text("", encoding="utf-8")
    _hold_log_lock(log, live_pid)
    link = tmp_path / "link.csv"
    link.symlink_to(log)
    _assert_error(_asd("watch", incoming, "--banks", banks, "--log", link, "--once", "--device", "cpu"), "in use")


def test_watch_garbage_lock_error_names_asd_watch(banks: Path, tmp_path: Path) -> None:
    incoming, logs = tmp_path / "incoming", tmp_path / "logs"
    incoming.mkdir()
    logs.mkdir()
    log = logs / "watch.csv"
    log.with_name(f".{log.name}.lock").write_text("garbage\n", encoding="utf-8")
    line = _assert_error(_asd("watch", incoming, "--banks", banks, "--log", log, "--once", "--device", "cpu"))
    assert "asd watch" in line and "asd run" not in line, line


# ----------------------------------------------------------------------------------- asd package


def test_package_rewrites_a_header_after_an_empty_row(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A score file asd reads with a header (here after a row of empty fields) is uploaded as plain
    'filename,score' rows: never with the header line in it."""
    run = tmp_path / "run"
    _assert_ok(_asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--no-finetune", "--seconds", 1,
                    "--device", "cpu", "--out", run))  # fmt: skip
    sub = tmp_path / "sub"
    shutil.copytree(run / "submission", sub)
    path = sub / "anomaly_score_fan_section_00_test.csv"
    path.write_bytes(b",\nfilename,score\n" + path.read_bytes())
    out = tmp_path / "pkg"
    result = _asd("package", sub, "--team", "Doe_X", "--out", out, "--data", synth_root)
    if result.exit_code != 0:
        _assert_error(result, path.name)
        return
    with zipfile.ZipFile(out / "Doe_X_task2_1.zip") as archive:
        text = archive.read(f"task2/Doe_X_task2_1/{path.name}").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == 2 and r[0] not in ("", "filename") for r in rows), text[:200]


def test_watch_long_log_name_works_or_names_log(banks: Path, tmp_path: Path) -> None:
    """A --log whose name the file system takes (244 characters) is used, or refused naming --log."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    log = tmp_path / ("a" * 240 + ".csv")
    log.write_text("", encoding="utf-8")  # the name itself is fine here
    result = _asd("watch", incoming, "--banks", banks, "--log", log, "--once", "--device", "cpu")
    if result.exit_code != 0:
        _assert_error(result, "--log")
