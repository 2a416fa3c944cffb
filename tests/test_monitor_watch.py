"""`asd watch`: files appearing while it runs, a file still being written, restarts, --once,
--min-consecutive and --on-anomaly (also failing), with a tiny random BEATs and 1 s clips.

The bank's threshold is set between the scores of the candidate clips, so which clips are
anomalous is known exactly (4 "bad", 4 "good") whatever the random model makes of them.
"""

from __future__ import annotations

import csv
import os
import shlex
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from monitor_synth import piece, write_wav
from typer.testing import CliRunner, Result

from asdcli.backend.bank import load_bank, save_bank
from asdcli.backend.score import bank_embed_config
from asdcli.cli.main import app
from asdcli.monitor.embedder import load_embedder
from asdcli.monitor.recording import score_recording
from asdcli.monitor.watch import Embedders, WatchConfig, Watcher
from asdcli.monitor.watch_log import LOG_COLUMNS, ScoreLog
from asdcli.monitor.windows import WindowSpec

runner = CliRunner()
POLL = "0.1"


def run(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class Setup:
    banks: Path
    good: list[bytes]  # wav file contents scoring below the threshold
    bad: list[bytes]  # and above it


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Setup:
    root = tmp_path_factory.mktemp("watch")
    for i in range(8):
        write_wav(
            root / f"data/fan/train/section_00_source_train_normal_{i:04d}_x.wav",
            piece(1.0, (1, i), False, "fan", "source", i),
        )
    assert (
        run("embed", root / "data", "--checkpoint", tiny_checkpoint, "--seconds", 1, "--out", root / "t.npz").exit_code
        == 0
    )
    assert run("fit-bank", root / "t.npz", "--out-dir", root / "banks").exit_code == 0
    bank_path = root / "banks/bank_fan_section_00.npz"
    bank = load_bank(bank_path)
    clips = [write_wav(root / f"c{i}.wav", piece(1.0, (2, i), i >= 4, "fan", "source", i)) for i in range(8)]
    embedder = load_embedder(bank_embed_config(bank, device="cpu"))
    scores = np.array([score_recording(c, bank, embedder, WindowSpec(1.0)).scores[0] for c in clips])
    order = np.argsort(scores)
    threshold = float(scores[order[3]] + scores[order[4]]) / 2
    save_bank(bank_path, replace(bank, threshold=threshold))
    return Setup(root / "banks", [clips[i].read_bytes() for i in order[:4]], [clips[i].read_bytes() for i in order[4:]])


def _log_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == LOG_COLUMNS
        return list(reader)


def _drop(folder: Path, name: str, data: bytes) -> Path:
    path = folder / "fan" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_once_scores_what_is_there_and_a_restart_skips_the_logged(setup: Setup, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    _drop(incoming, "section_00_0000.wav", setup.good[0])
    _drop(incoming, "section_00_0001.wav", setup.bad[0])
    result = run("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OK      fan/section_00_0000.wav  score ") and "threshold" in lines[0]
    assert lines[1].startswith("ANOMALY fan/section_00_0001.wav")
    log = incoming / "asd-watch.csv"
    assert [(r["filename"], r["decision"]) for r in _log_rows(log)] == [
        ("fan/section_00_0000.wav", "0"),
        ("fan/section_00_0001.wav", "1"),
    ]
    _drop(incoming, "section_00_0002.wav", setup.good[1])
    again = run("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL)
    assert again.exit_code == 0 and again.stdout.splitlines() == [again.stdout.splitlines()[0]]
    assert "section_00_0002.wav" in again.stdout
    assert len(_log_rows(log)) == 3


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_files_appearing_during_the_run_and_a_partial_file(setup: Setup, tmp_path: Path) -> None:
    incoming, log = tmp_path / "in", tmp_path / "scores.csv"
    incoming.mkdir()
    bank = load_bank(setup.banks / "bank_fan_section_00.npz")
    said: list[str] = []
    warned: list[str] = []
    cfg = WatchConfig(folder=incoming, log=log, poll_s=0.01)
    watcher = Watcher(cfg, {("fan", "00"): bank}, Embedders(None, None, "cpu", 8), said.append, warned.append)
    stop = threading.Event()
    slow = incoming / "fan" / "section_00_0002.wav"
    slow.parent.mkdir(parents=True)
    data = setup.good[2]
    parts = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    # The recorder takes one step before each look of the watcher, not steps on a clock (which a
    # loaded machine stretches until a growing file looks unchanged): 0001 appears whole, then
    # 0002 grows at every look until it is complete.
    steps = [lambda: _drop(incoming, "section_00_0001.wav", setup.bad[1])]
    steps += [lambda part=part: _append(slow, part) for part in parts]
    logged_before_look: list[int] = []
    look = watcher.tracker.look

    def record_then_look() -> list[Path]:
        if steps:
            steps.pop(0)()
        logged_before_look.append(len(watcher.log.names))
        if len(logged_before_look) == len(parts) + 3:
            stop.set()  # one look after 0002 was scored
        return look()

    watcher.tracker.look = record_then_look  # type: ignore[method-assign]
    watcher.run(stop, max_polls=100)
    # 0001 scored at the 2nd look (unchanged since the 1st), 0002 at the look after the one that saw its last part
    assert len(parts) > 2 and logged_before_look == [0, 0] + [1] * len(parts) + [2]
    rows = _log_rows(log)
    assert sorted(r["filename"] for r in rows) == ["fan/section_00_0001.wav", "fan/section_00_0002.wav"]
    assert warned == []
    embedder = load_embedder(bank_embed_config(bank, device="cpu"))
    whole = score_recording(slow, bank, embedder, WindowSpec(1.0)).scores[0]
    logged = float(next(r["score"] for r in rows if r["filename"].endswith("0002.wav")))
    assert logged == pytest.approx(float(whole), rel=1e-6)  # scored once complete, not while partial
    assert [line.split()[0] for line in said] == ["ANOMALY", "OK"]


def _rewrite(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` with a later mtime (a clock tick may be coarser than the test)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_a_file_rewritten_under_its_name_is_scored_again(setup: Setup, tmp_path: Path) -> None:
    """A recorder that always writes latest.wav: each complete version gets its own row, also for a
    file a restarted watcher finds in its log (rewritten after the restart); an unchanged one is not rescored."""
    incoming, log = tmp_path / "in", tmp_path / "scores.csv"
    bank = load_bank(setup.banks / "bank_fan_section_00.npz")
    latest = _drop(incoming, "section_00_latest.wav", setup.good[0])
    cfg = WatchConfig(folder=incoming, log=log, poll_s=0.01)

    def watcher() -> Watcher:
        return Watcher(cfg, {("fan", "00"): bank}, Embedders(None, None, "cpu", 8), said.append, warned.append)

    said: list[str] = []
    warned: list[str] = []
    first = watcher()
    assert [first.poll() for _ in range(3)] == [0, 1, 0]
    _rewrite(latest, setup.bad[0])
    assert [first.poll() for _ in range(3)] == [0, 1, 0]  # complete after two looks, then once
    restarted = watcher()
    assert [restarted.poll() for _ in range(3)] == [0, 0, 0]  # logged and unchanged since
    _rewrite(latest, setup.good[1])
    assert [restarted.poll() for _ in range(3)] == [0, 1, 0]
    rows = _log_rows(log)
    assert [(r["filename"], r["decision"]) for r in rows] == [("fan/section_00_latest.wav", d) for d in "010"]
    assert [line.split()[0] for line in said] == ["OK", "ANOMALY", "OK"] and warned == []


def _alarm_script(tmp_path: Path) -> tuple[str, Path]:
    calls = tmp_path / "alarms.txt"
    code = f"import sys; open({str(calls)!r}, 'a').write(sys.argv[1] + '\\n')"
    return shlex.join([sys.executable, "-c", code]), calls


def test_min_consecutive_alarms_resume_after_a_restart(setup: Setup, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    command, calls = _alarm_script(tmp_path)
    for i, data in enumerate([setup.good[0], setup.bad[0], setup.good[1], setup.bad[1]]):
        _drop(incoming, f"section_00_{i:04d}.wav", data)
    args = ("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL, "--min-consecutive", 2,
            "--on-anomaly", command)  # fmt: skip
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "(1 of 2 in a row)" in first.stdout and "ALARM" not in first.stdout
    assert not calls.exists()
    _drop(incoming, "section_00_0004.wav", setup.bad[2])
    _drop(incoming, "section_00_0005.wav", setup.bad[3])
    second = run(*args)  # the streak of 0003 continues from the log
    assert second.exit_code == 0, second.output
    assert "(2 in a row: ALARM)" in second.stdout and "(3 in a row: ALARM)" in second.stdout
    assert [Path(p).name for p in calls.read_text().splitlines()] == ["section_00_0004.wav", "section_00_0005.wav"]


def _recording(folder: Path, name: str, clips: list[bytes]) -> Path:
    """A file of several 1 s windows: the clips one after another (the same samples, so each
    window's decision is its clip's)."""
    import io

    import soundfile as sf

    return write_wav(folder / "fan" / name, np.concatenate([sf.read(io.BytesIO(c))[0] for c in clips]))


def test_min_windows_counts_windows_across_files_and_restarts(setup: Setup, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    command, calls = _alarm_script(tmp_path)
    good, bad = setup.good, setup.bad
    _recording(incoming, "section_00_0000.wav", [good[0], bad[0], bad[1]])  # ends with 2 bad windows
    args = ("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL, "--min-windows", 3,
            "--on-anomaly", command)  # fmt: skip
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("ANOMALY fan/section_00_0000.wav") and "(2 of 3 windows in a row)" in first.stdout
    assert not calls.exists()
    row = _log_rows(incoming / "asd-watch.csv")[0]
    assert (row["windows"], row["anomalous_windows"], row["trailing_anomalous"], row["decision"]) == (
        "3",
        "2",
        "2",
        "1",
    )
    # after a restart the run goes on from the log: 1 more bad window at the start of 0001 is the 3rd
    _recording(incoming, "section_00_0001.wav", [bad[2], good[1], good[2]])
    _recording(incoming, "section_00_0002.wav", [good[3], bad[3], good[0]])  # 1 bad window: no alarm
    _recording(incoming, "section_00_0003.wav", [bad[0], bad[1], bad[2], good[1]])  # 3 in a row inside one file
    second = run(*args)
    assert second.exit_code == 0, second.output
    lines = second.stdout.splitlines()
    assert lines[0].startswith("ANOMALY fan/section_00_0001.wav") and lines[0].endswith("(3 windows in a row: ALARM)")
    assert lines[1].endswith("(1 of 3 windows in a row)")
    assert lines[2].endswith("(3 windows in a row: ALARM)")
    assert [Path(p).name for p in calls.read_text().splitlines()] == ["section_00_0001.wav", "section_00_0003.wav"]


def test_min_consecutive_counts_files_not_windows(setup: Setup, tmp_path: Path) -> None:
    # one file with 3 bad windows is 1 anomalous file: no alarm at --min-consecutive 2
    incoming = tmp_path / "in"
    _recording(incoming, "section_00_0000.wav", [setup.bad[0], setup.bad[1], setup.bad[2]])
    result = run("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL, "--min-consecutive", 2)
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("(1 of 2 in a row)")


def test_an_earlier_log_without_window_counts_is_refused_untouched(setup: Setup, tmp_path: Path) -> None:
    log = tmp_path / "old.csv"
    text = "time,filename,score,threshold,decision\n2026-01-01T00:00:00+00:00,fan/a.wav,0.5,0.4,1\n"
    log.write_text(text)
    result = run("watch", tmp_path, "--banks", setup.banks, "--once", "--poll", POLL, "--log", log)
    assert result.exit_code == 1 and "log of an earlier asdcli" in result.stderr and "--log" in result.stderr
    assert log.read_text() == text


@pytest.mark.parametrize(
    ("program", "timeout", "expect"),
    [  # a Python start-up can take over 0.5 s on a loaded machine: only the hanging command gets 0.5 s
        ("import sys; sys.exit(3)", 60, "exited with status 3"),
        ("import time; time.sleep(60)", 0.5, "did not finish within 0.5 s"),
        (None, 0.5, "could not be started"),
    ],
)
def test_a_failing_on_anomaly_command_is_reported_not_fatal(setup: Setup, tmp_path: Path, program: str | None,
                                                            timeout: float, expect: str) -> None:  # fmt: skip
    incoming = tmp_path / "in"
    _drop(incoming, "section_00_0000.wav", setup.bad[0])
    _drop(incoming, "section_00_0001.wav", setup.bad[1])
    command = shlex.join([sys.executable, "-c", program]) if program else str(tmp_path / "no-such-program")
    result = run("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL, "--on-anomaly", command,
                 "--command-timeout", timeout)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ANOMALY") == 2
    assert result.stderr.count(expect) == 2 and "watching on" in result.stderr


def test_unmatched_and_unreadable_files_are_reported_once(setup: Setup, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    (incoming / "pump").mkdir(parents=True)
    (incoming / "pump" / "section_01_0000.wav").write_bytes(setup.good[0])
    _drop(incoming, "section_00_0000.wav", b"RIFF not really a wave file" * 20)
    _drop(incoming, "section_00_0001.wav", setup.good[0])
    said: list[str] = []
    warned: list[str] = []
    fan = load_bank(setup.banks / "bank_fan_section_00.npz")
    banks = {("fan", "00"): fan, ("valve", "01"): replace(fan, machine="valve", section="01")}
    cfg = WatchConfig(folder=incoming, log=tmp_path / "log.csv", poll_s=0.01)
    Watcher(cfg, banks, Embedders(None, None, "cpu", 8), said.append, warned.append).run(max_polls=4)
    assert len(said) == 1 and "section_00_0001.wav" in said[0]
    assert len(warned) == 2
    assert any(w.startswith("No bank for pump/section_01_0000.wav") for w in warned)
    assert any(w.startswith("Skipped fan/section_00_0000.wav") for w in warned)


def test_a_file_of_another_section_or_machine_than_the_one_bank_is_skipped(setup: Setup, tmp_path: Path) -> None:
    # --bank (one bank) scores every file against it, but not one whose name or layout says it is
    # of another section or machine: as `asd score` refuses it, watch warns once and logs nothing
    incoming = tmp_path / "in"
    _drop(incoming, "section_00_0000.wav", setup.good[0])
    _drop(incoming, "section_01_0001.wav", setup.bad[0])
    (incoming / "gearbox/test").mkdir(parents=True)
    (incoming / "gearbox/test/section_00_0002.wav").write_bytes(setup.bad[1])
    args = ("watch", incoming, "--bank", setup.banks / "bank_fan_section_00.npz", "--once", "--poll", POLL)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [result.stdout.splitlines()[0]] and "section_00_0000.wav" in result.stdout
    assert "Skipped fan/section_01_0001.wav: it is of section 01, not of the bank's fan section 00" in result.stderr
    assert "Skipped gearbox/test/section_00_0002.wav: it is of gearbox section 00" in result.stderr
    assert [r["filename"] for r in _log_rows(incoming / "asd-watch.csv")] == ["fan/section_00_0000.wav"]


def test_bank_choice_from_folder_and_section() -> None:
    from asdcli.monitor.watch import choose_bank

    fan0, fan1, valve0 = (
        SimpleNamespace(machine=m, section=s) for m, s in (("fan", "00"), ("fan", "01"), ("valve", "00"))
    )
    banks = {(b.machine, b.section): b for b in (fan0, fan1, valve0)}
    assert choose_bank(Path("fan/section_01_0003.wav"), banks) is fan1  # type: ignore[arg-type]
    assert choose_bank(Path("site2/valve/test/section_00_0003.wav"), banks) is valve0  # type: ignore[arg-type]
    assert choose_bank(Path("valve_section_00_0003.wav"), banks) is valve0  # type: ignore[arg-type]
    assert choose_bank(Path("section_01_0003.wav"), banks) is fan1  # type: ignore[arg-type]  # only bank of section 01
    assert choose_bank(Path("section_00_0003.wav"), banks) is None  # type: ignore[arg-type]  # fan or valve?
    assert choose_bank(Path("pump/section_01_0003.wav"), banks) is None  # type: ignore[arg-type]


def test_a_long_file_is_scored_on_all_its_windows(setup: Setup, tmp_path: Path) -> None:
    import io

    import soundfile as sf

    incoming = tmp_path / "in"
    waves = [sf.read(io.BytesIO(data))[0] for data in (setup.good[0], setup.good[1], setup.bad[0])]
    path = write_wav(incoming / "fan" / "section_00_0000.wav", np.concatenate(waves))  # bad from 2 s on
    result = run("watch", incoming, "--banks", setup.banks, "--once", "--poll", POLL)
    assert result.exit_code == 0 and result.stdout.startswith("ANOMALY"), result.output
    bank = load_bank(setup.banks / "bank_fan_section_00.npz")
    windows = score_recording(path, bank, load_embedder(bank_embed_config(bank, device="cpu")), WindowSpec(1.0))
    assert len(windows.scores) == 3
    logged = float(_log_rows(incoming / "asd-watch.csv")[0]["score"])
    assert logged == pytest.approx(float(windows.scores.max()), rel=1e-6) and windows.scores.argmax() == 2


def test_a_torn_last_log_row_is_ignored_and_fenced_off(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text(",".join(LOG_COLUMNS) + "\n2026-01-01T00:00:00+00:00,a.wav,0.5,0.4,1,1,1,1\n2026-01-01T00:0")
    opened = ScoreLog.open(log)
    assert opened.names == {"a.wav"}
    opened.append("b.wav", 0.1, 0.4, np.zeros(1, np.int8))
    assert [r["filename"] for r in _log_rows(log)][-1] == "b.wav"
    assert ScoreLog.open(log).names == {"a.wav", "b.wav"}


def test_ctrl_c_exits_0_and_bad_options(setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Watcher, *args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(Watcher, "run", interrupted)
    result = run("watch", tmp_path, "--banks", setup.banks)
    assert result.exit_code == 0 and "Stopped" in result.stderr
    for args, message in (
        (("--banks", setup.banks, "--bank", "b.npz"), "exactly one of"),
        (("--banks", setup.banks, "--on-anomaly", "'unclosed"), "cannot be split"),
        (("--banks", setup.banks, "--min-consecutive", 0), "--min-consecutive"),
        (("--banks", setup.banks, "--min-windows", 0), "--min-windows must be at least 1"),
        (("--banks", setup.banks, "--min-windows", 3, "--min-consecutive", 2), "not both"),
    ):
        bad = run("watch", tmp_path, *args)
        assert bad.exit_code == 1 and bad.stderr.startswith("Error: ") and message in bad.stderr, bad.stderr
    missing = run("watch", tmp_path / "nope", "--banks", setup.banks)
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
