"""atomic_write: the final file mode follows the umask, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from asdcli.artifacts import atomic_write, check_writable_folder, temp_dir_prefix, write_bytes_atomic
from asdcli.errors import AsdError


@pytest.fixture()
def umask() -> Iterator[None]:
    """Restore the process umask after a test that changes it."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_artifacts_get_the_mode_a_plain_open_would_give(tmp_path: Path, mask: int, umask: None) -> None:
    os.umask(mask)
    write_bytes_atomic(tmp_path / "new.npz", b"data")
    with open(tmp_path / "plain.npz", "wb") as f:
        f.write(b"data")
    mode = stat.S_IMODE((tmp_path / "new.npz").stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE((tmp_path / "plain.npz").stat().st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "emb.npz"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["emb.npz"]


def test_writing_over_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(AsdError, match=r"Cannot write .*out\.npz: Is a directory"):
        write_bytes_atomic(tmp_path / "out.npz", b"data")
    assert os.listdir(tmp_path) == ["out.npz"] and not os.listdir(tmp_path / "out.npz")


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="asking whether a pid runs is POSIX-only")
def test_the_next_write_removes_temps_of_killed_writers_only(tmp_path: Path) -> None:
    path = tmp_path / "bank.npz"
    dead, live = _dead_pid(), os.getppid()  # the parent (pytest's launcher) runs
    stale = [tmp_path / f".bank.npz.{dead}-0123abcd.tmp", tmp_path / ".bank.npz.0123abcd.tmp"]  # killed, older form
    kept = [
        tmp_path / f".bank.npz.{live}-0123abcd.tmp",  # its writer still runs
        tmp_path / f".other.npz.{dead}-0123abcd.tmp",  # another artifact's
        tmp_path / f".bank.npz.{dead}-notahex.tmp",
    ]  # not a temp name of asdcli
    for p in [*stale, *kept]:
        p.write_bytes(b"partial")
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_a_long_name_gets_a_temp_name_that_fits_and_a_too_long_one_is_an_error(tmp_path: Path) -> None:
    long = tmp_path / ("é" * 125 + ".npz")  # 254 bytes: the longest-but-one name most file systems allow
    with atomic_write(long) as f:
        temps = [p.name for p in tmp_path.iterdir()]
        f.write(b"x")
    assert len(temps) == 1 and len(temps[0].encode()) <= 255 and temps[0].endswith(".tmp")
    assert long.read_bytes() == b"x" and [p.name for p in tmp_path.iterdir()] == [long.name]
    with pytest.raises(AsdError, match="its name is 260 bytes long, more than the 255"):
        write_bytes_atomic(tmp_path / ("e" * 256 + ".npz"), b"x")


@pytest.mark.parametrize("suffix", [".tmp", ".old"])
def test_temp_folders_beside_a_long_name_fit_a_file_name(tmp_path: Path, suffix: str) -> None:
    """`score --submission-dir`, `asd fuse` and `asd export` build their output in a tempfile folder
    named after it: with a 254-byte name that folder name must still fit."""
    name = "é" * 127  # 254 bytes
    folder = Path(tempfile.mkdtemp(prefix=temp_dir_prefix(name), suffix=suffix, dir=tmp_path))
    assert folder.is_dir() and folder.name.startswith(".é") and len(folder.name.encode()) <= 255
    assert temp_dir_prefix("model.onnx") == ".model.onnx."


def test_an_unwritable_output_folder_is_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.access as a non-root user would answer (root may write anywhere: the real chmod test skips there)
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != folder and real_access(p, mode))
    with pytest.raises(AsdError, match=rf"^Cannot write in {re.escape(str(folder))}: no write permission\. Choose"):
        check_writable_folder(folder / "new" / ".emb.npz.parts-0123")  # the nearest folder that exists is named
    check_writable_folder(tmp_path / "other" / "deeper")  # created later under a writable folder
    check_writable_folder(folder.parent)
