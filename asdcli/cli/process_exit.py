"""Ending the `asd` process without the interpreter's teardown.

Tearing down the interpreter after ``import torch`` takes about 0.6 s on a 2-core machine (most
of it freeing torch's module objects), more than loading a BEATs checkpoint: a noticeable part
of a short command. The entry point ends the process with ``os._exit`` instead, after doing what
that teardown would do for us: non-daemon threads are joined, atexit handlers (multiprocessing,
temporary folders, accelerate) run, and Python's and C's output buffers are flushed. Every file
asdcli writes is closed and renamed into place before the command returns, so nothing is lost.
Tests call the Typer app and never come here.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading


def exit_code_of(exc: SystemExit) -> int:
    """The status Python itself would exit with for ``exc`` (a message is printed, status 1)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def reopen_closed_std_streams() -> None:
    """A command started with stdout or stderr closed (`asd ... >&-`, some daemons): Python sets
    ``sys.stdout`` to None, which Click and Rich write to and fail. Give the descriptor the null
    device instead: the output goes nowhere, as ``print`` would send it, and no file asdcli opens
    later gets descriptor 1 or 2 (a child process would write into it)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "w", encoding="utf-8", errors="surrogateescape", closefd=False))


def _join_threads() -> None:
    """What the interpreter's exit does first: run the threading exit hooks (they wake the idle
    workers of a ThreadPoolExecutor still alive, which would otherwise wait for work forever),
    then join every non-daemon thread."""
    shutdown = getattr(threading, "_shutdown", None)
    if callable(shutdown):
        shutdown()
        return
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()


def exit_without_teardown(code: int) -> None:
    """Flush, run the atexit handlers and end the process with ``code``, skipping the teardown.

    Falls back to a normal ``sys.exit`` where a torch.distributed process group is up: its
    shutdown belongs to the normal exit path.
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        sys.exit(code)
    _join_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`asd ... | head`) or a closed stream
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # output native libraries buffered in C stdio
    except (OSError, AttributeError):
        pass
    os._exit(code)
