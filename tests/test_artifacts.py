"""atomic_write: the final file mode follows the umask, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from asdcli.artifacts import atomic_write, write_bytes_atomic
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
