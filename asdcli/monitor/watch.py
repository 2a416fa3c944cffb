"""`asd watch`: score every new audio file of a folder once it is complete, log it, raise alarms.

A file is complete when its size and modification time are unchanged between two polls. Each
scored file appends one row to the log (:mod:`asdcli.monitor.watch_log`), which is also the
memory: a restart skips every file it names and resumes the anomaly streaks, of files or of
windows (from each row's window counts).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdcli.backend.bank import Bank
from asdcli.backend.score import fits_bank, format_score
from asdcli.data.dataset import layout_machine
from asdcli.data.names import AUDIO_SUFFIXES, OTHER_AUDIO_SUFFIXES, make_clip, parse_filename
from asdcli.errors import AsdError, ConfigError
from asdcli.frontend.spec import check_same_frontend
from asdcli.monitor.watch_log import ScoreLog
from asdcli.monitor.windows import Streak, WindowSpec, aggregate, check_window_length

if TYPE_CHECKING:
    from asdcli.monitor.embedder import Embedder

ONE_BANK = ("", "")  # the key of `--bank B.npz` among the banks: every file is scored against it
DEFAULT_LOG = "asd-watch.csv"  # inside the watched folder unless --log says otherwise


MAX_WAIT_S = 86_400.0  # --poll and --command-timeout: one day


@dataclass(frozen=True)
class WatchConfig:
    """Options of `asd watch` (see the command's help); ``on_anomaly`` is the argv to run."""

    folder: Path
    log: Path
    min_consecutive: int = 1
    min_windows: int | None = None  # given: alarms count windows in a row, not files
    on_anomaly: tuple[str, ...] = ()
    command_timeout_s: float = 30.0
    poll_s: float = 2.0
    once: bool = False
    window_s: float | None = None  # None: the bank's clip length
    hop_s: float | None = None
    aggregate: str = "max"
    batch_size: int | None = None  # None: the embedder's (auto_batch_size)

    def __post_init__(self) -> None:
        if not self.folder.is_dir():
            raise ConfigError(
                f"Watched folder {self.folder} does not exist or is not a folder; create it or fix the path."
            )
        if self.min_consecutive < 1:
            raise ConfigError(f"--min-consecutive must be at least 1, got {self.min_consecutive}.")
        if self.min_windows is not None and self.min_windows < 1:
            raise ConfigError(f"--min-windows must be at least 1, got {self.min_windows}.")
        if self.min_windows is not None and self.min_consecutive > 1:
            raise ConfigError(
                "Give --min-consecutive N (anomalous files in a row) or --min-windows N (anomalous windows "
                "in a row, across files), not both."
            )
        for option, seconds in (("--poll", self.poll_s), ("--command-timeout", self.command_timeout_s)):
            if not 0 < seconds <= MAX_WAIT_S:  # NaN fails too; inf would overflow the waits
                raise ConfigError(
                    f"{option} must be more than 0 and at most {MAX_WAIT_S:g} s (a day), got {seconds:g}."
                )


def parse_command(text: str | None) -> tuple[str, ...]:
    """``--on-anomaly`` as an argv list (shlex rules, never a shell); the file path is appended."""
    if not text:
        return ()
    try:
        argv = tuple(shlex.split(text))
    except ValueError as e:
        raise ConfigError(f"--on-anomaly {text!r} cannot be split into arguments ({e}); check its quotes.") from e
    if not argv:
        raise ConfigError("--on-anomaly is empty; give a program and its arguments.")
    return argv


# ------------------------------------------------------------------------------ finding files


_WATCHED_SUFFIXES = (*AUDIO_SUFFIXES, *OTHER_AUDIO_SUFFIXES)  # the other formats only to say they are skipped


class FileTracker:
    """Audio files under a folder that are complete: same (size, mtime) as at the previous look."""

    def __init__(self, folder: Path, exclude: set[Path]) -> None:
        self.folder = folder
        self.exclude = {p.resolve() for p in exclude}
        self.seen: dict[Path, tuple[int, int]] = {}

    def _files(self) -> Iterator[Path]:
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder)
            if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in _WATCHED_SUFFIXES:
                continue
            if path.is_file() and path.resolve() not in self.exclude:
                yield path

    def look(self) -> list[Path]:
        """Files whose size and mtime did not change since the previous look (and are not empty)."""
        ready, now = [], {}
        for path in self._files():
            try:
                st = path.stat()
            except OSError:
                continue  # removed meanwhile
            now[path] = (st.st_size, st.st_mtime_ns)
            if st.st_size > 0 and self.seen.get(path) == now[path]:
                ready.append(path)
        self.seen = now
        return ready


def choose_bank(rel: Path, banks: dict[tuple[str, str], Bank], folder: Path | None = None) -> Bank | None:
    """The bank of a file: section from its DCASE name, machine from a folder (or name token)
    that names a bank's machine, below the watched ``folder`` or the folder itself and its
    parent (watching ``incoming/fan`` or ``data/fan/test``); for a file directly in the watched
    folder that names no machine, the only bank of its section. None when that does not single
    out one bank. A ``--bank`` (key ``ONE_BANK``) takes every file; a ``--banks`` folder that holds
    a single bank is chosen by the same rules as one of several."""
    if ONE_BANK in banks:
        return banks[ONE_BANK]
    section = parse_filename(rel.name).section
    candidates = [b for b in banks.values() if not section or b.section == section]
    hints = set(rel.parts[:-1]) | set(rel.name.split("_"))
    named = [b for b in candidates if b.machine in hints]
    if not named and folder is not None:
        around = set(Path(folder).resolve().parts[-2:])
        named = [b for b in candidates if b.machine in around]
    if len(named) == 1:
        return named[0]
    top_level = len(rel.parts) == 1
    return candidates[0] if top_level and len(candidates) == 1 and section and not named else None


# ------------------------------------------------------------------------------- the watcher

Say = Callable[[str], None]


def window_for(cfg: WatchConfig, bank: Bank) -> WindowSpec:
    """The windows of a file scored against ``bank``: --window (default: the bank's clip length) and
    --hop, checked against the bank's clips (ConfigError)."""
    from asdcli.monitor.embedder import bank_clip_seconds

    clip_seconds = bank_clip_seconds(bank)
    spec = WindowSpec(cfg.window_s or clip_seconds or 10.0, cfg.hop_s)
    check_window_length(spec, clip_seconds, bank.name)
    return spec


def log_lock(log: Path, say: Say) -> contextlib.AbstractContextManager[Path]:
    """Hold ``.<log name>.lock`` beside the log while watching: a second watcher on the same log is
    a RunFolderLocked error (a dead watcher's lock is taken over)."""
    from asdcli.artifacts import shortened
    from asdcli.pipeline.lock import held_lock

    if not log.parent.is_dir():
        raise ConfigError(f"--log {log}: its folder {log.parent} does not exist; create it or choose another --log.")
    real = log.resolve()  # a link to the log locks the log itself
    lock = real.with_name(f".{shortened(real.name, len('..lock') + 24)}.lock")  # room for the temp suffix
    return held_lock(lock, "asd watch", f"the log {real}", "give another --log", say)


def run_command(argv: tuple[str, ...], path: Path, timeout_s: float) -> str | None:
    """Run ``argv + [path]`` (no shell); None on success, else what went wrong (one line). A path
    starting with ``-`` (a file in the watched ``.``) is passed as ``./-...``: never as an option."""
    arg = str(path)
    if arg.startswith("-"):
        arg = os.path.join(os.curdir, arg)
    try:
        done = subprocess.run([*argv, arg], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout_s:g} s and was stopped"
    except OSError as e:
        return f"could not be started ({e.strerror or e})"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()
        return f"exited with status {done.returncode}" + (f": {tail[-1][:200]}" if tail else "")
    return None


class Watcher:
    """Holds the banks, the loaded front ends, the log and the streaks for one watch job."""

    def __init__(self, cfg: WatchConfig, banks: dict[tuple[str, str], Bank], embedder_for: Callable[[Bank], Embedder],
                 say: Say, warn: Say) -> None:  # fmt: skip
        self.cfg, self.banks, self.embedder_for, self.say, self.warn = cfg, banks, embedder_for, say, warn
        # --window/--hop and the front end against every bank now, not at the first file hours later
        for each in banks.values():
            window_for(cfg, each)
            check_same_frontend(
                each.embedding_meta, embedder_for(each).meta, f"The bank of {each.name}", "the embedder"
            )
        self.log = ScoreLog.open(cfg.log)
        self.tracker = FileTracker(cfg.folder, {cfg.log})
        self.streaks: dict[tuple[str, str], Streak] = {}
        self.failed: dict[Path, tuple[int, int]] = {}  # unreadable files, retried only once changed
        # (size, mtime) of each logged file as scored or first seen complete: a file rewritten under
        # its name (a recorder's latest.wav) differs from it and is scored again
        self.logged: dict[Path, tuple[int, int]] = {}
        self.unmatched: set[Path] = set()
        for row in self.log.rows:  # resume the streaks where the last run left them
            bank = choose_bank(Path(row["filename"]), banks, cfg.folder)
            if bank is None:
                continue
            if cfg.min_windows is None:
                self._streak(bank).update(row["decision"] == "1")
            else:
                self._streak(bank).carry(int(row["windows"]), int(row["trailing_anomalous"]))

    def _streak(self, bank: Bank) -> Streak:
        need = self.cfg.min_consecutive if self.cfg.min_windows is None else self.cfg.min_windows
        return self.streaks.setdefault((bank.machine, bank.section), Streak(need))

    def _alarm(self, bank: Bank, decision: int, flags: np.ndarray) -> tuple[bool, str]:
        """Whether this file raises an alarm, and what its line says about the streak."""
        streak = self._streak(bank)
        if self.cfg.min_windows is None:
            alarm = streak.update(bool(decision))
            if not decision or self.cfg.min_consecutive == 1:
                return alarm, ""
            n, need, what = streak.count, self.cfg.min_consecutive, ""
        else:
            n, need, what = streak.feed(flags), self.cfg.min_windows, " windows"
            alarm = n >= need
            if n == 0:
                return False, ""
        return alarm, f"  ({n}{what} in a row: ALARM)" if alarm else f"  ({n} of {need}{what} in a row)"

    def poll(self) -> int:
        """Score every complete file not yet logged, or rewritten since it was; returns how many were scored."""
        done, scored = self.log.names, 0
        for path in self.tracker.look():
            rel, stamp = path.relative_to(self.cfg.folder).as_posix(), self.tracker.seen[path]
            if rel in done and self.logged.setdefault(path, stamp) == stamp:
                continue
            if self.failed.get(path) == stamp:
                continue
            if path.suffix.lower() in OTHER_AUDIO_SUFFIXES:
                self._warn_once(path, f"Skipped {rel}: asdcli reads {' and '.join(AUDIO_SUFFIXES)} files, not "
                                f"{path.suffix}; convert it to WAV or FLAC.")  # fmt: skip
                continue
            bank = self._bank_of(path, rel)
            if bank is not None:
                scored += self._score(path, rel, bank)
        return scored

    def _bank_of(self, path: Path, rel: str) -> Bank | None:
        """The file's bank, or None (warned once per file) when no bank fits it: none is chosen, or
        the chosen one is of another machine/section than the file's name or layout says."""
        bank = choose_bank(Path(rel), self.banks, self.cfg.folder)
        problem = None
        if bank is None:
            problem = (
                f"No bank for {rel}: name it section_SS_... inside a folder named after its machine, or pass --bank."
            )
        else:
            clip = make_clip(path, layout_machine(path))
            if not fits_bank(bank, clip):
                known = " ".join(x for x in (clip.machine, clip.section and f"section {clip.section}") if x)
                problem = f"Skipped {rel}: it is of {known}, not of the bank's {bank.name}; watch it with its own bank (--banks)."
        if problem is not None:
            self._warn_once(path, problem)
            return None
        return bank

    def _warn_once(self, path: Path, problem: str) -> None:
        if path not in self.unmatched:
            self.warn(problem)
            self.unmatched.add(path)

    def _score(self, path: Path, rel: str, bank: Bank) -> int:
        from asdcli.monitor.recording import score_recording

        spec = window_for(self.cfg, bank)
        try:
            windows = score_recording(path, bank, self.embedder_for(bank), spec, self.cfg.batch_size)
        except AsdError as e:
            self.warn(f"Skipped {rel}: {e}")
            self.failed[path] = self.tracker.seen.get(path, (0, 0))
            return 0
        score = aggregate(windows.scores, self.cfg.aggregate)
        row = self.log.append(rel, score, bank.threshold, windows.decisions)
        self.logged[path] = self.tracker.seen.get(path, (0, 0))
        decision = int(row["decision"])
        alarm, streak = self._alarm(bank, decision, windows.decisions)
        verdict = "ANOMALY" if decision else "OK"
        self.say(f"{verdict:<7} {rel}  score {format_score(score)}  threshold {format_score(bank.threshold)}{streak}")
        if alarm and self.cfg.on_anomaly:
            problem = run_command(self.cfg.on_anomaly, path, self.cfg.command_timeout_s)
            if problem is not None:
                self.warn(f"--on-anomaly {shlex.join(self.cfg.on_anomaly)} {problem}; watching on.")
        return 1

    def run(self, stop: threading.Event | None = None, max_polls: int | None = None) -> int:
        """Poll until ``stop`` is set or ``max_polls`` polls (``--once``: look twice, score, return).

        Returns the number of files scored.
        """
        stop = stop or threading.Event()
        if self.cfg.once:
            self.tracker.look()
            stop.wait(min(self.cfg.poll_s, 1.0))  # a file still growing now is left for the next run
            return self.poll()
        scored, polls = 0, 0
        while not stop.is_set():
            scored += self.poll()
            polls += 1
            if max_polls is not None and polls >= max_polls:
                break
            stop.wait(self.cfg.poll_s)
        return scored


class Embedders:
    """One loaded front end per distinct embedding config of the banks, loaded on first use."""

    def __init__(self, checkpoint: Path | None, adapter: Path | None, device: str, batch_size: int | None) -> None:
        self.options = (checkpoint, adapter, device, batch_size)
        self.loaded: dict[object, Embedder] = {}

    def __call__(self, bank: Bank) -> Embedder:
        from asdcli.backend.score import bank_embed_config
        from asdcli.monitor.embedder import load_embedder

        cfg = bank_embed_config(bank, *self.options)
        if cfg not in self.loaded:
            self.loaded[cfg] = load_embedder(cfg)
        return self.loaded[cfg]
