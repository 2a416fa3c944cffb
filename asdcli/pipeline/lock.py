"""One `asd run` per run folder: ``RUN_DIR/.asd-run.lock`` holds the pid and host of the run using it.

The lock file appears complete or not at all (written beside, then hard-linked into place, which
fails when it exists). A lock whose process no longer runs on this host (the run was killed) is
stale: the next run takes it over and says so. A lock of another host cannot be checked from
here, so it is an error that says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from asdcli.artifacts import pid_alive, shortened
from asdcli.errors import AsdError

LOCK_NAME = ".asd-run.lock"


class RunFolderLocked(AsdError):
    """Another asdcli process (`asd run` on the run folder, `asd watch` on the log) holds the lock."""


def _holder(lock: Path, command: str = "asd run", what: str | None = None) -> dict[str, Any] | None:
    """The lock's record, or None when it vanished meanwhile."""
    try:
        record = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        record = None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("pid"), int)
        or not isinstance(record.get("host"), str)
    ):
        raise RunFolderLocked(
            f"{lock} is not an {command} lock file; if no {command} uses {what or lock.parent}, delete it and run again."
        )
    return record


def _try_create(lock: Path, record: dict[str, Any]) -> bool:
    """Put ``record`` at ``lock`` if there is no lock yet; False when one exists."""
    suffix = f".{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp = lock.with_name(shortened(lock.name, len(suffix)) + suffix)  # a long name still leaves room
    try:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError as e:  # a full disk: the file was created, but not written
        tmp.unlink(missing_ok=True)
        raise AsdError(f"Cannot write in {lock.parent}: {e.strerror or e}; choose a writable folder.") from e
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network or FAT file systems): exclusive create
        try:
            with open(lock, "x", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(lock: Path, holder: dict[str, Any]) -> bool:
    """Remove a stale lock (renamed first, so that of two runs taking it over only one succeeds)."""
    aside = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:
        return False
    moved = _holder(aside)
    aside.unlink(missing_ok=True)
    if moved != holder:  # another run took it over and locked it between our read and rename
        raise RunFolderLocked(
            f"{lock.parent} was just locked by another asd run; wait for it to finish or choose another --out."
        )
    return True


def acquire_lock(lock: Path, command: str, what: str, instead: str, say: Callable[[str], None]) -> Path:
    """Create ``lock`` for this process (``command`` using ``what``); RunFolderLocked, saying to
    wait or ``instead``, when a live process holds it. A dead holder's lock is taken over."""
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(10):
        if _try_create(lock, record):
            return lock
        holder = _holder(lock, command, what)
        if holder is None:
            continue
        pid, where, since = holder["pid"], holder["host"], holder.get("started", "?")
        if where != host:
            raise RunFolderLocked(
                f"{what} is locked by {command} pid {pid} on host {where} (since {since}); "
                f"if it is no longer active, delete {lock} and run again."
            )
        if pid_alive(pid) and pid != os.getpid():
            raise RunFolderLocked(
                f"{what} is in use by another {command} (pid {pid}, since {since}); wait for it to finish or {instead}."
            )
        if _take_over(lock, holder):
            say(f"Took over the stale lock of {command} pid {pid} (started {since}, no longer running) on {what}.")
    raise RunFolderLocked(f"Could not lock {what}: other {command} processes keep taking {lock}; run one at a time.")


def release(lock: Path) -> None:
    """Remove ``lock`` if this process still holds it."""
    with contextlib.suppress(AsdError, OSError):
        holder = _holder(lock)
        if holder is not None and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname():
            lock.unlink()


def run_folder_lock(run_dir: Path, say: Callable[[str], None]) -> contextlib.AbstractContextManager[Path]:
    """Hold the lock of ``run_dir`` for the body of the ``with`` block."""
    return held_lock(run_dir / LOCK_NAME, "asd run", str(run_dir), "choose another --out", say)


def folder_lock(folder: Path, command: str, say: Callable[[str], None]) -> contextlib.AbstractContextManager[Path]:
    """Hold ``.<name>.lock`` beside the output ``folder`` (resolved: a link to it is the folder
    itself) while ``command`` writes it: a second one on the same folder is RunFolderLocked."""
    real = Path(folder).resolve()
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AsdError(f"Cannot create folder {real.parent}: {e.strerror or e}. Choose a writable --out.") from e
    lock = real.with_name(f".{shortened(real.name, len('..lock') + 24)}.lock")  # room for the temp suffix
    return held_lock(lock, command, str(folder), "choose another --out", say)


@contextlib.contextmanager
def held_lock(lock: Path, command: str, what: str, instead: str, say: Callable[[str], None]) -> Iterator[Path]:
    """Hold ``lock`` (see :func:`acquire_lock`) for the body of the ``with`` block."""
    acquire_lock(lock, command, what, instead, say)
    try:
        yield lock
    finally:
        release(lock)
