"""`asd score --window` and `asd embed --window` on synthetic long recordings, through the CLI."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_checks import asd, assert_error
from monitor_synth import long_recording, write_wav
from typer.testing import CliRunner, Result

from asdcli.artifacts import load_embeddings
from asdcli.backend.bank import load_bank
from asdcli.cli.main import app
from asdcli.monitor.windowed import load_window_times

runner = CliRunner()
ANOMALY_AT = 12.0  # seconds into the anomalous recording


def run(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class Plant:
    root: Path
    checkpoint: Path
    train: Path  # windowed embeddings of the long normal recording
    bank: Path
    normal: Path  # 20 s, normal throughout
    anomalous: Path  # 20 s, anomalous from ANOMALY_AT


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Plant:
    """A bank fitted on 1 s windows of a 40 s normal recording, and two recordings to score."""
    root = tmp_path_factory.mktemp("plant")
    write_wav(root / "data/fan/train/section_00_source_train_normal_0000_long.wav", long_recording(40, (1,)))
    train, bank = root / "train.npz", root / "bank.npz"
    result = run("embed", root / "data", "--window", 1, "--checkpoint", tiny_checkpoint, "--out", train)
    assert result.exit_code == 0, result.output
    assert run("fit-bank", train, "--out", bank).exit_code == 0
    normal = write_wav(root / "rec/section_00_normal_run.wav", long_recording(20, (2,)))
    anomalous = write_wav(root / "rec/section_00_bad_run.wav", long_recording(20, (3,), anomaly_from=ANOMALY_AT))
    return Plant(root, tiny_checkpoint, train, bank, normal, anomalous)


def _windows(path: Path) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["filename"], []).append(row)
    return rows


def test_embed_window_writes_a_row_per_window_with_times(plant: Plant) -> None:
    emb = load_embeddings(plant.train)
    start, end = load_window_times(plant.train)
    assert len(emb) == 40 and start.shape == end.shape == (40,)
    np.testing.assert_allclose(start, np.arange(40.0))
    np.testing.assert_allclose(end - start, 1.0)
    assert set(emb.split) == {"train"} and set(emb.machine) == {"fan"}
    assert emb.meta["window"] == {"window_s": 1.0, "hop_s": 1.0} and emb.meta["frontend"]["clip_seconds"] == 1.0
    assert load_bank(plant.bank).embedding_meta["frontend"]["clip_seconds"] == 1.0


def test_windows_covering_the_anomaly_score_highest(plant: Plant, tmp_path: Path) -> None:
    windows, timeline = tmp_path / "w.csv", tmp_path / "timeline.png"
    result = run("score", "--bank", plant.bank, plant.normal, plant.anomalous, "--window", 1,
                 "--windows", windows, "--plot", timeline)  # fmt: skip
    assert result.exit_code == 0, result.output
    clip_scores = dict(line.split(",") for line in result.stdout.splitlines())
    rows = _windows(windows)
    assert set(clip_scores) == set(rows) == {plant.normal.name, plant.anomalous.name}
    bad = rows[plant.anomalous.name]
    assert len(bad) == 20 and [float(r["start_s"]) for r in bad] == list(range(20))
    scores = np.array([float(r["score"]) for r in bad])
    after = np.array([float(r["start_s"]) >= ANOMALY_AT for r in bad])
    top = np.argsort(-scores)[:5]
    assert after[top].all(), f"top windows at {top} s"
    assert scores[after].mean() > scores[~after].mean() + 0.1
    threshold = load_bank(plant.bank).threshold
    assert all(int(r["decision"]) == int(float(r["score"]) > threshold) for r in bad)
    # the clip row carries the max of its windows
    for name, ws in rows.items():
        assert float(clip_scores[name]) == pytest.approx(max(float(r["score"]) for r in ws), abs=1e-8)
    assert float(clip_scores[plant.anomalous.name]) > float(clip_scores[plant.normal.name])
    assert timeline.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_aggregate_and_hop(plant: Plant, tmp_path: Path) -> None:
    windows = tmp_path / "w.csv"
    result = run("score", "--bank", plant.bank, plant.anomalous, "--window", 1, "--hop", 0.5,
                 "--aggregate", "mean", "--windows", windows, "--format", "jsonl")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = _windows(windows)[plant.anomalous.name]
    assert len(rows) == 39 and float(rows[1]["start_s"]) == 0.5
    import json

    rec = json.loads(result.stdout)
    assert rec["score"] == pytest.approx(np.mean([float(r["score"]) for r in rows]), rel=1e-6)


def test_blockwise_reading_gives_identical_window_scores(plant: Plant) -> None:
    from asdcli.backend.score import bank_embed_config
    from asdcli.monitor.embedder import load_embedder
    from asdcli.monitor.recording import score_recording
    from asdcli.monitor.windows import WindowSpec

    bank = load_bank(plant.bank)
    embedder = load_embedder(bank_embed_config(bank, device="cpu"))
    spec = WindowSpec(1.0, 0.5)
    small = score_recording(plant.anomalous, bank, embedder, spec, block_seconds=0.3)
    whole = score_recording(plant.anomalous, bank, embedder, spec, block_seconds=1e6)
    np.testing.assert_array_equal(small.start_s, whole.start_s)
    np.testing.assert_array_equal(small.scores, whole.scores)


def test_a_window_length_clip_scores_as_asd_score_does(plant: Plant, tmp_path: Path) -> None:
    # A 1 s clip is one window: the same samples through the same model as the clip path
    # (both batches of one), so only float32 rounding may differ.
    clip = write_wav(tmp_path / "section_00_one.wav", long_recording(1, (4,)))
    plain = run("score", "--bank", plant.bank, clip)
    windowed = run("score", "--bank", plant.bank, clip, "--window", 1)
    assert plain.exit_code == windowed.exit_code == 0, plain.output + windowed.output
    a, b = float(plain.stdout.split(",")[1]), float(windowed.stdout.split(",")[1])
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hop", "1"], "--hop needs --window"),
        (["--plot", "x.png"], "--plot needs --window"),
        (["--aggregate", "mean"], "--aggregate needs --window"),
        (["--window", "1", "--aggregate", "median"], "--aggregate must be one of max, mean"),
        (["--window", "0.01"], "--window must be from 0.175 to 60 s"),
        (["--window", "1", "--hop", "1e-9"], "--hop must be from one sample"),
    ],
)
def test_window_option_errors(plant: Plant, args: list[str], message: str) -> None:
    result = run("score", "--bank", plant.bank, plant.normal, *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr


def test_a_window_of_another_length_than_the_bank_is_an_error(plant: Plant) -> None:
    result = run("score", "--bank", plant.bank, plant.normal, "--window", 2)
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert result.stderr.startswith("Error: --window 2 s differs from the 1 s clips the bank of")
    assert "use --window 1" in result.stderr
    assert run("score", "--bank", plant.bank, plant.normal, "--window", 1).exit_code == 0


def test_window_with_embeddings_is_an_error(plant: Plant) -> None:
    result = run("score", "--bank", plant.bank, "--embeddings", plant.train, "--all", "--window", 1)
    assert result.exit_code == 1 and "give clips instead of --embeddings" in result.stderr


def test_terminal_gets_a_table_with_verdicts(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    from asdcli.cli import score_cmd

    piped = run("score", "--bank", plant.bank, plant.anomalous, "--window", 1)
    assert piped.stdout.count(",") == 1 and "verdict" not in piped.stdout
    monkeypatch.setattr(score_cmd, "is_terminal", lambda: True)
    shown = run("score", "--bank", plant.bank, plant.normal, plant.anomalous, "--window", 1)
    assert shown.exit_code == 0, shown.output
    assert "verdict" in shown.stdout and "threshold" in shown.stdout
    assert "ANOMALY" in shown.stdout and plant.anomalous.name in shown.stdout


def test_recordings_of_another_machine_or_section_are_refused_or_skipped(plant: Plant, tmp_path: Path) -> None:
    # as without --window: a recording whose name (section) or DCASE layout (machine) says it is not
    # the bank's is an error, or skipped and counted with --skip-other-sections; never scored
    other_section = write_wav(tmp_path / "rec/section_01_other.wav", long_recording(2, (5,)))
    other_machine = write_wav(tmp_path / "data/gearbox/test/section_00_gear.wav", long_recording(2, (6,)))
    for wrong in (other_section, other_machine):
        result = asd("score", "--bank", plant.bank, plant.normal, wrong, "--window", 1)
        assert_error(result, "1 clip(s) are not of the bank's fan section 00", str(wrong), "--skip-other-sections")
    windows = tmp_path / "w.csv"
    result = asd("score", "--bank", plant.bank, plant.normal, other_section, tmp_path / "data", "--window", 1,
                 "--skip-other-sections", "--windows", windows)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in result.stdout.splitlines()] == [plant.normal.name]
    assert "Skipped 2 clip(s) of other machines/sections than fan section 00." in result.stderr
    assert set(_windows(windows)) == {plant.normal.name}
    only_others = asd("score", "--bank", plant.bank, other_section, "--window", 1, "--skip-other-sections")
    assert_error(only_others, "None of the 1 clip(s) is of the bank's fan section 00")


def test_min_windows_reports_each_run_of_anomalous_windows(plant: Plant, tmp_path: Path) -> None:
    from asdcli.monitor.windows import anomalous_runs

    windows = tmp_path / "w.csv"
    plain = asd("score", "--bank", plant.bank, plant.normal, plant.anomalous, "--window", 1, "--windows", windows)
    assert plain.exit_code == 0 and "Alarm" not in plain.stderr, plain.output
    runs = {
        name: [(i, j, rows[i]["start_s"], rows[j - 1]["end_s"]) for i, j in anomalous_runs(
            np.array([int(r["decision"]) for r in rows]))]
        for name, rows in _windows(windows).items()
    }  # fmt: skip
    longest = max((j - i for rs in runs.values() for i, j, _, _ in rs), default=0)
    assert longest >= 2, runs  # the anomaly from 12 s on is a stretch of windows above the threshold
    result = asd("score", "--bank", plant.bank, plant.normal, plant.anomalous, "--window", 1, "--min-windows", longest)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain.stdout  # the scores and their CSV are unchanged
    expected = sorted(
        f"Alarm: {name}: {j - i} windows in a row above the threshold, {a} s to {b} s."
        for name, rs in runs.items()
        for i, j, a, b in rs
        if j - i >= longest
    )
    assert sorted(line for line in result.stderr.splitlines() if line.startswith("Alarm")) == expected
    quiet = asd("score", "--bank", plant.bank, plant.anomalous, "--window", 1, "--min-windows", longest + 1)
    assert quiet.exit_code == 0 and f"No alarm: no recording has {longest + 1} windows in a row" in quiet.stderr
    assert_error(asd("score", "--bank", plant.bank, plant.normal, "--min-windows", 2), "--min-windows needs --window")
    assert_error(asd("score", "--bank", plant.bank, plant.normal, "--window", 1, "--min-windows", 0), "at least 1")
