"""Attack on the checks that tie banks to what they scored (banks beside a submission, window
records, the threshold floor at load): legitimate workflows still pass, mismatched parts are
refused. Through the real CLI; tiny random BEATs, the fan machine of the synthetic dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_checks import asd, assert_error, assert_ok

BANK = "bank_fan_section_00.npz"
SCORES = "anomaly_score_fan_section_00_test.csv"
DECISIONS = "decision_result_fan_section_00_test.csv"
CPU = ("--device", "cpu")


# ------------------------------------------------------------------------- windows and whole clips


@pytest.fixture(scope="module")
def cuts(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Banks of the fan train clips as whole 0.5 s clips, as windows of 0.5 s every 0.5 s, every
    0.25 s and every 0.75 s (apart); two target clips not in them embedded the same four ways."""
    root = tmp_path_factory.mktemp("attack8-cuts")
    new = root / "new"
    new.mkdir()
    for clip in sorted((synth_root / "fan" / "test").glob("*_target_test_normal_*.wav"))[:2]:
        shutil.copy(clip, new / clip.name)
    ways = {
        "clips": ("--seconds", 0.5),
        "half": ("--window", 0.5, "--hop", 0.5),
        "quarter": ("--window", 0.5, "--hop", 0.25),
        "apart": ("--window", 0.5, "--hop", 0.75),
    }
    parts: dict[str, Path] = {}
    for way, options in ways.items():
        for name, source in (("train", synth_root / "fan" / "train"), ("new", new)):
            parts[f"{name}_{way}"] = root / f"{name}_{way}.npz"
            assert_ok(
                asd("embed", source, "--checkpoint", tiny_checkpoint, *CPU, *options, "--out", parts[f"{name}_{way}"])
            )
        parts[f"bank_{way}"] = root / f"bank_{way}.npz"
        assert_ok(asd("fit-bank", parts[f"train_{way}"], "--out", parts[f"bank_{way}"]))
    return parts


def _enrol(cuts: dict[str, Path], bank: str, new: str, out: Path) -> object:
    return asd("enrol", cuts[f"bank_{bank}"], cuts[f"new_{new}"], "--domain", "target", "--out", out)


def test_enrol_refuses_overlapping_windows_into_a_bank_of_whole_clips(cuts: dict[str, Path], tmp_path: Path) -> None:
    """Whole clips are windows of their length every their length: windows every 0.25 s overlap
    (near-duplicates, closer neighbours), so they were mixed into the clips' threshold silently."""
    out = tmp_path / "enrolled.npz"
    line = assert_error(_enrol(cuts, "clips", "quarter", out), "whole clips", "every 0.25 s", "--hop 0.5")
    assert str(cuts["new_quarter"]) in line
    assert not out.exists()
    assert_ok(_enrol(cuts, "clips", "half", out))  # windows every their length are whole clips


def test_enrol_refuses_whole_clips_into_a_bank_of_overlapping_windows(cuts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "enrolled.npz"
    assert_error(_enrol(cuts, "quarter", "clips", out), "every 0.25 s", "whole clips", "--hop 0.25")
    assert not out.exists()
    assert_ok(_enrol(cuts, "half", "clips", out))
    assert_ok(_enrol(cuts, "apart", "clips", tmp_path / "apart.npz"))  # windows that do not overlap
    assert_ok(_enrol(cuts, "clips", "apart", tmp_path / "clips.npz"))
    assert_ok(_enrol(cuts, "quarter", "quarter", tmp_path / "same.npz"))


def test_score_embeddings_of_windows_says_to_score_the_recordings(cuts: dict[str, Path]) -> None:
    """Windows of another hop against a bank of windows: the error said to re-embed with the bank's
    hop, and that file is refused in turn (windows, several rows per file). Say what works at once."""
    for new in ("quarter", "half"):
        line = assert_error(asd("score", "--bank", cuts["bank_half"], "--embeddings", cuts[f"new_{new}"], "--all"),
                            "--window SECONDS")  # fmt: skip
        assert "--hop 0.5" not in line


def test_scoring_whole_clips_and_finer_hops_against_a_bank_of_windows(
    cuts: dict[str, Path], synth_root: Path, tmp_path: Path
) -> None:
    """The hop stays free in scoring: clips, and recordings at a finer hop than the bank's."""
    clips = sorted((synth_root / "fan" / "test").glob("*.wav"))[:2]
    assert_ok(asd("score", "--bank", cuts["bank_half"], *clips))
    assert_ok(asd("score", "--bank", cuts["bank_half"], *clips, "--window", 0.5, "--hop", 0.125, "--min-windows", 2,
                  "--windows", tmp_path / "w.csv", "--decisions", tmp_path / "d.csv"))  # fmt: skip
    assert_ok(asd("score", "--bank", cuts["bank_quarter"], *clips))


# ------------------------------------------------------------------------- banks beside a submission


@pytest.fixture(scope="module")
def run(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An `asd run` folder of fan (frozen, 1 s clips) and its data."""
    root = tmp_path_factory.mktemp("attack8-run")
    parts = {"data": root / "data", "run": root / "run"}
    shutil.copytree(synth_root / "fan", parts["data"] / "fan")
    assert_ok(asd("run", parts["data"], "--checkpoint", tiny_checkpoint, "--out", parts["run"], "--no-finetune",
                  "--seconds", 1, "--batch-size", 8, *CPU))  # fmt: skip
    return parts


def _rewrite_bank(bank: Path, out: Path, threshold: float | None = None, **meta_changes: object) -> None:
    """``bank`` saved to ``out`` with another stored threshold (a bank of an earlier asdcli) or meta."""
    from asdcli.artifacts import load_npz, save_npz_atomic

    arrays = load_npz(bank, what="bank")
    meta = {**json.loads(str(arrays["meta"])), **meta_changes}
    if threshold is not None:
        meta["threshold"] = {**meta["threshold"], "value": threshold, "method": "gamma"}
        meta["threshold"].pop("gamma_threshold", None)
        arrays = {**arrays, "threshold": np.asarray(threshold)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(out, {**arrays, "meta": np.asarray(json.dumps(meta))})


def _shown_threshold(stdout: str) -> float:
    rows = [line.split(",") for line in stdout.splitlines()]
    (shown,) = [float(r[4]) for r in rows if r[1] == "fan" and r[3] == "decision threshold"]
    return shown


@pytest.mark.parametrize(
    "options",
    [(), ("--k", 2), ("--score-norm", "density"), ("--score-norm", "domain-density"),
     ("--score-norm", "domain-zscore"), ("--threshold-quantile", 0.001), ("--threshold-quantile", 0.999)],
)  # fmt: skip
def test_each_fit_bank_option_reports_and_fuses_with_its_banks(
    run: dict[str, Path], tmp_path: Path, options: tuple[object, ...]
) -> None:
    """`asd score --banks B` then `asd report SUB --banks B` and `asd fuse RUN SUB:B`: no refusal
    (the density norms of 8 train clips have K = 1, whose leave-one-out scores fuse refuses)."""
    banks, sub = tmp_path / "banks", tmp_path / "sub"
    assert_ok(asd("fit-bank", run["run"] / "embeddings" / "train.npz", "--out-dir", banks, *options))
    assert_ok(asd("score", "--banks", banks, "--embeddings", run["run"] / "embeddings" / "test.npz",
                  "--submission-dir", sub))  # fmt: skip
    assert_ok(asd("report", sub, "--banks", banks, "--data", run["data"], "--format", "csv"))
    if "density" in str(options):
        return
    assert_ok(asd("fuse", run["run"], f"{sub}:{banks}", "--out", tmp_path / "fused"))
    assert_ok(asd("report", tmp_path / "fused", "--data", run["data"], "--format", "csv"))


def test_a_moved_run_copy_reports_and_fuses(run: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run["run"], moved)
    assert_ok(asd("report", moved / "submission", "--banks", moved / "banks", "--data", run["data"], "-f", "csv"))
    assert_ok(asd("report", moved / "submission", "--banks", run["run"] / "banks", "--data", run["data"], "-f", "csv"))
    assert_ok(asd("fuse", run["run"], f"{moved / 'submission'}:{moved / 'banks'}", "--out", tmp_path / "fused"))


def test_report_shows_the_threshold_an_old_bank_decided_with(run: dict[str, Path], tmp_path: Path) -> None:
    """A bank of an earlier asdcli with its threshold below the floor is raised at load; decisions
    an earlier asdcli made with the stored threshold (every clip anomalous) are accepted beside it,
    but the report drew the raised threshold beside them: a threshold that did not make them."""
    banks, old, sub = tmp_path / "banks", tmp_path / "old", tmp_path / "sub"
    assert_ok(asd("fit-bank", run["run"] / "embeddings" / "train.npz", "--out-dir", banks))
    _rewrite_bank(banks / BANK, old / BANK, threshold=-0.5)
    assert_ok(asd("score", "--banks", old, "--embeddings", run["run"] / "embeddings" / "test.npz",
                  "--submission-dir", sub))  # fmt: skip
    from asdcli.backend.bank import load_bank

    lowest = float(load_bank(banks / BANK).loo_scores.min())
    args = ("report", sub, "--banks", old, "--data", run["data"], "--format", "csv")
    result = asd(*args)
    assert result.exit_code == 0, result.output
    assert _shown_threshold(result.stdout) == pytest.approx(lowest, rel=1e-6)  # this asdcli's decisions
    decisions = sub / DECISIONS
    decisions.write_text("".join(line.rsplit(",", 1)[0] + ",1\n" for line in decisions.read_text().splitlines()))
    result = asd(*args)  # the decisions the earlier asdcli wrote: score > -0.5 for every clip
    assert result.exit_code == 0, result.output
    assert _shown_threshold(result.stdout) == pytest.approx(-0.5)


def test_a_run_score_file_is_checked_against_the_run_record(run: dict[str, Path], tmp_path: Path) -> None:
    """`asd report RUN/submission/FILE --banks DIR` skipped the run's record of its banks that
    `asd report RUN/submission --banks DIR` and `asd fuse` check: a bank file the run did not
    write, with the same threshold, was drawn beside the run's decisions."""
    copy, other = tmp_path / "copy", tmp_path / "other"
    shutil.copytree(run["run"] / "banks", copy)
    _rewrite_bank(run["run"] / "banks" / BANK, other / BANK, tool_version="0.0.0")  # another file, same threshold
    score_file = run["run"] / "submission" / SCORES
    args = ("--data", run["data"], "--format", "csv")
    assert_ok(asd("report", score_file, "--banks", copy, *args))
    assert_error(asd("report", run["run"] / "submission", "--banks", other, *args), str(other / BANK), "fit-bank")
    assert_error(asd("report", score_file, "--banks", other, *args), str(other / BANK), "fit-bank")


def _set_first_clip(sub: Path, score: np.float32, decision: int) -> None:
    """The first clip of the fan score file given this score (written as `asd score` writes it) and decision."""
    from asdcli.backend.score import format_score

    lines = (sub / SCORES).read_text().splitlines()
    name = lines[0].rsplit(",", 1)[0]
    (sub / SCORES).write_text("\n".join([f"{name},{format_score(score)}", *lines[1:]]) + "\n")
    rows = (sub / DECISIONS).read_text().splitlines()
    (sub / DECISIONS).write_text(
        "\n".join(f"{name},{decision}" if r.startswith(name + ",") else r for r in rows) + "\n"
    )


def test_a_score_equal_to_the_threshold_is_normal(run: dict[str, Path], tmp_path: Path) -> None:
    """`asd score` decides score > threshold in float32: a score written equal to the threshold is
    decided 0. Read back in float64 its 9 digits lie a hair above the threshold, and the check
    refused the decision `asd score` made. One float32 step below, a 1 is still refused."""
    from asdcli.backend.bank import load_bank

    sub = tmp_path / "sub"
    shutil.copytree(run["run"] / "submission", sub)
    threshold = np.float32(load_bank(run["run"] / "banks" / BANK).threshold)
    args = ("report", sub, "--banks", run["run"] / "banks", "--data", run["data"], "--format", "csv")
    for score in (threshold, np.nextafter(threshold, np.float32(np.inf))):
        _set_first_clip(sub, score, int(score > threshold))
        result = asd(*args)
        assert result.exit_code == 0, result.output
    _set_first_clip(sub, np.nextafter(threshold, np.float32(0)), 1)
    assert_error(asd(*args), str(sub / DECISIONS), "1 clip(s)")


def test_a_warning_made_fatal_is_one_error_line(run: dict[str, Path], tmp_path: Path) -> None:
    """`python -W error::asdcli.errors.AsdWarning` makes the Warning of a bank raised at load fatal
    (as asdcli.errors documents): that was a traceback, not one `Error:` line."""
    import warnings

    from asdcli.errors import AsdWarning

    old = tmp_path / BANK
    _rewrite_bank(run["run"] / "banks" / BANK, old, threshold=-0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AsdWarning)
        result = asd("score", "--bank", old, "--embeddings", run["run"] / "embeddings" / "test.npz")
    assert_error(result, str(old), "asd fit-bank")


def test_report_compares_a_submission_and_its_banks_with_a_fused_folder(run: dict[str, Path], tmp_path: Path) -> None:
    """`asd report SUB FUSED --banks B X`: a fused folder has no banks, and any X is refused now
    (its thresholds did not make the fused decisions), so a submission with its banks could not be
    reported beside a fusion of it. `--banks -` gives that one none."""
    banks, sub, fused = tmp_path / "banks", tmp_path / "sub", tmp_path / "fused"
    assert_ok(asd("fit-bank", run["run"] / "embeddings" / "train.npz", "--out-dir", banks, "--k", 2))
    assert_ok(asd("score", "--banks", banks, "--embeddings", run["run"] / "embeddings" / "test.npz",
                  "--submission-dir", sub))  # fmt: skip
    assert_ok(asd("fuse", run["run"], f"{sub}:{banks}", "--out", fused))
    args = ("report", sub, fused, "--data", run["data"], "--format", "csv", "--banks", banks)
    assert_error(asd(*args, "--banks", banks), str(fused / DECISIONS), "--banks -")
    result = asd(*args, "--banks", "-")
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in result.stdout.splitlines()]
    shown = {r[0] for r in rows if r[3] == "decision threshold"}
    assert shown == {"sub"}, shown
