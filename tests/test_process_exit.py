"""The `asd` entry point ends the process without the interpreter's teardown: exit statuses,
buffered output and atexit handlers must be as a normal exit leaves them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from asdcli import __version__
from asdcli.cli.process_exit import exit_code_of

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _asd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asdcli", *args], capture_output=True, text=True, env=ENV,
                          timeout=120)  # fmt: skip


def test_piped_output_and_statuses_survive_the_fast_exit() -> None:
    ok = _asd("--version")
    assert ok.returncode == 0 and __version__ in ok.stdout  # a pipe is block-buffered: flushed before _exit
    usage = _asd("embed", "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr
    failed = _asd("fit-bank", "/nonexistent/embeddings.npz", "--out", "/nonexistent/bank.npz")
    assert failed.returncode == 1 and failed.stderr.startswith("Error: ")


def test_atexit_handlers_and_threads_run_before_the_exit() -> None:
    code = (
        "import atexit, threading, time\n"
        "from asdcli.cli.process_exit import exit_without_teardown\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "print('buffered', end='')\n"
        "exit_without_teardown(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout.startswith("buffered") and "thread done" in proc.stdout and "atexit ran" in proc.stdout


@pytest.mark.parametrize(("code", "status", "printed"), [(None, 0, ""), (4, 4, ""), ("boom", 1, "boom")])
def test_exit_code_of_follows_python(
    code: object, status: int, printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code_of(SystemExit(code)) == status
    assert capsys.readouterr().err.strip() == printed
