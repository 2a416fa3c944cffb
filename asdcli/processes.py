"""Which process of a job this is: Accelerate's ``PartialState`` under a launcher, else one process.

Importing accelerate costs about 0.2 s of every command's start-up (it imports its Accelerator).
A command that no launcher started (`accelerate launch`, torchrun, MPI, Accelerate's notebook
launcher) is a single process, so it gets :class:`SingleProcess` and accelerate is not imported.
The launchers announce themselves in the environment; any sign of one takes accelerate's own view.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

# what torchrun, accelerate launch, MPI runners and Accelerate's fork launcher set in each process
_LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                       "MV2_COMM_WORLD_SIZE", "FORK_LAUNCHED")  # fmt: skip


class ProcessState(Protocol):
    """What asdcli reads of ``accelerate.PartialState``."""

    @property
    def num_processes(self) -> int: ...
    @property
    def process_index(self) -> int: ...
    @property
    def is_main_process(self) -> bool: ...

    def split_between_processes(self, inputs: Any) -> contextlib.AbstractContextManager[Any]: ...
    def wait_for_everyone(self) -> None: ...


@dataclass(frozen=True)
class SingleProcess:
    """The state of a process no launcher started: the only one, so the main one."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any) -> Iterator[Any]:
        yield inputs  # all of them: there is no other process to share with

    def wait_for_everyone(self) -> None:
        return None


def launched(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether a launcher may have started this process (then accelerate decides how many there are)."""
    return any(name in environ for name in _LAUNCHER_VARIABLES) or any(k.startswith("ACCELERATE_") for k in environ)


def process_state() -> ProcessState:
    """Accelerate's ``PartialState()`` when :func:`launched`, else :class:`SingleProcess`."""
    if not launched():
        return SingleProcess()
    from accelerate import PartialState

    state: ProcessState = PartialState()
    return state
