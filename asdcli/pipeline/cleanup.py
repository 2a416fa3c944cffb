"""Removing what an earlier `asd run` wrote, and nothing else: files by name, never a folder tree.

A folder is removed only once it is empty, so a file the user put beside asdcli's stays where it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from asdcli.artifacts import is_stale_temp

PEFT_TEMP_PREFIX = ".adapter."  # the folder peft saves into before the adapter files are moved
PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")


def remove_own_files(paths: Iterable[Path], folder: Path | None = None) -> int:
    """Delete each of ``paths`` that exists and the temp files its killed writers left; then
    ``folder`` if that left it empty. Returns how many files were deleted."""
    removed = 0
    for path in paths:
        path = Path(path)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(path.parent):
                if is_stale_temp(entry.name, path.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed += 1
    if folder is not None:
        remove_empty_folder(folder)
    return removed


def remove_empty_folder(folder: Path) -> None:
    """``os.rmdir`` when ``folder`` is an empty folder; otherwise leave it."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def remove_parts(parts: Path) -> int:
    """Delete the saved parts (``NNNNN.npz``) of an embedding job and their temp files, then the
    folder if nothing else is in it. Returns how many files were deleted."""
    if not parts.is_dir():
        return 0
    names = [p for p in parts.iterdir() if len(p.name) == 9 and p.name[:5].isdigit() and p.name.endswith(".npz")]
    return remove_own_files(names, folder=parts)


def remove_finetune_files(out: Path) -> int:
    """Delete the files `asd finetune` writes in ``out`` (adapter or full backbone, head, run record,
    resume state and their temp files); keep anything else. Returns how many files were deleted."""
    from asdcli.finetune.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
    from asdcli.finetune.run_dir import ADAPTER_DIR, BACKBONE_FILE, HEAD_FILE, RUN_FILE
    from asdcli.finetune.state import STATE_FILE

    if not out.is_dir():
        return 0
    adapter = out / ADAPTER_DIR
    removed = remove_own_files([adapter / ADAPTER_WEIGHTS, adapter / ADAPTER_CONFIG], folder=adapter)
    removed += remove_own_files([out / STATE_FILE], folder=(out / STATE_FILE).parent)
    removed += remove_own_files([out / HEAD_FILE, out / RUN_FILE, out / BACKBONE_FILE])
    for temp in out.glob(f"{PEFT_TEMP_PREFIX}*"):  # left by a run killed while saving its adapter
        if temp.is_dir() and not temp.is_symlink():
            removed += remove_own_files([temp / name for name in PEFT_FILES], folder=temp)
    remove_empty_folder(out)
    return removed
