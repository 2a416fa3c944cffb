"""Trust gaps closed after a review: no score or bank is silently made from parts that do not
belong together, and each refusal is one actionable `Error:` line. Through the real CLI; tiny
random BEATs, the fan machine of the synthetic dataset, 1 s clips.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_checks import asd, assert_error, assert_ok

BANK = "bank_fan_section_00.npz"
EMBED = ("--seconds", 1, "--device", "cpu")


@pytest.fixture(scope="module")
def windows(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bank of 0.5 s windows every 0.5 s of the fan train clips, and two target clips that are
    not in it, embedded in windows every 0.5 s and every 0.25 s."""
    root = tmp_path_factory.mktemp("trust-windows")
    new = root / "new"
    new.mkdir()
    for clip in sorted((synth_root / "fan" / "test").glob("*_target_test_normal_*.wav"))[:2]:
        shutil.copy(clip, new / clip.name)
    parts = {"bank": root / "bank.npz"}
    for name, source, hop in (("train", synth_root / "fan" / "train", 0.5), ("train_quarter", synth_root / "fan" / "train", 0.25),
                              ("new", new, 0.5), ("new_quarter", new, 0.25)):  # fmt: skip
        parts[name] = root / f"{name}.npz"
        assert_ok(asd("embed", source, "--checkpoint", tiny_checkpoint, *EMBED, "--window", 0.5, "--hop", hop,
                      "--out", parts[name]))  # fmt: skip
    assert_ok(asd("fit-bank", parts["train"], "--out", parts["bank"]))
    return parts


# ------------------------------------------------------------------------- 1. window and hop


def test_enrol_refuses_windows_cut_with_another_hop(windows: dict[str, Path], tmp_path: Path) -> None:
    """A bank of windows every 0.5 s: windows every 0.25 s overlap (closer neighbours, another
    leave-one-out threshold), so enrolling them is refused naming both, before anything is written."""
    out = tmp_path / "enrolled.npz"
    line = assert_error(asd("enrol", windows["bank"], windows["new_quarter"], "--domain", "target", "--out", out),
                        "every 0.5 s", "every 0.25 s", "--hop 0.5")  # fmt: skip
    assert str(windows["new_quarter"]) in line
    assert not out.exists()
    assert_ok(asd("enrol", windows["bank"], windows["new"], "--domain", "target", "--out", out))


def test_enrol_restandardize_refuses_train_windows_of_another_hop(windows: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "enrolled.npz"
    args = ("enrol", windows["bank"], windows["new"], "--domain", "target", "--out", out, "--restandardize")
    assert_error(asd(*args, "--train", windows["train_quarter"]), "every 0.5 s", "every 0.25 s")
    assert not out.exists()
    assert_ok(asd(*args, "--train", windows["train"]))


def test_a_malformed_window_record_is_one_error_line(windows: dict[str, Path], tmp_path: Path) -> None:
    from asdcli.artifacts import load_npz, save_npz_atomic

    arrays = load_npz(windows["new"], what="embeddings file")
    meta = json.loads(str(arrays["meta"]))
    meta["window"] = {"window_s": 0.5}  # no hop: cannot be checked
    bad = tmp_path / "bad.npz"
    save_npz_atomic(bad, {**arrays, "meta": np.asarray(json.dumps(meta))})
    assert_error(asd("enrol", windows["bank"], bad, "--domain", "target", "--out", tmp_path / "e.npz"),
                 "malformed window record")  # fmt: skip


# ------------------------------------------------------------------------- 4. the threshold floor


@pytest.fixture(scope="module")
def clip_bank(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fan train and test embeddings of 1 s clips, and the bank fitted on the train ones."""
    root = tmp_path_factory.mktemp("trust-clips")
    parts = {"banks": root / "banks"}
    for split in ("train", "test"):
        parts[split] = root / f"{split}.npz"
        assert_ok(
            asd("embed", synth_root / "fan" / split, "--checkpoint", tiny_checkpoint, *EMBED, "--out", parts[split])
        )
    assert_ok(asd("fit-bank", parts["train"], "--out-dir", parts["banks"]))
    return parts


def _rewrite_threshold(bank: Path, out: Path, threshold: float) -> None:
    """``bank`` saved to ``out`` with another stored threshold (as a bank of an earlier asdcli)."""
    from asdcli.artifacts import load_npz, save_npz_atomic

    arrays = load_npz(bank, what="bank")
    meta = json.loads(str(arrays["meta"]))
    meta["threshold"] = {**meta["threshold"], "value": threshold, "method": "gamma"}
    meta["threshold"].pop("gamma_threshold", None)
    save_npz_atomic(out, {**arrays, "threshold": np.asarray(threshold), "meta": np.asarray(json.dumps(meta))})


def test_a_bank_fitted_before_the_threshold_floor_decides_with_the_floor(
    clip_bank: dict[str, Path], tmp_path: Path
) -> None:
    """A bank of an earlier asdcli may store a gamma threshold below every normal leave-one-out
    score (even below 0, where no cosine distance is): every clip, the bank's own included, was an
    anomaly. It is raised to the lowest leave-one-out score, the threshold a refit gives, with one
    `Warning:` line saying to refit; the decisions are those of the raised threshold."""
    from asdcli.backend.bank import load_bank
    from asdcli.errors import AsdWarning

    old = tmp_path / BANK
    _rewrite_threshold(clip_bank["banks"] / BANK, old, -0.5)
    lowest = float(load_bank(clip_bank["banks"] / BANK).loo_scores.min())
    decisions = tmp_path / "decisions.csv"
    result = asd("score", "--bank", old, "--embeddings", clip_bank["test"], "--decisions", decisions)
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and str(old) in warnings[0] and "asd fit-bank" in warnings[0], result.stderr
    scores = {n: np.float32(v) for n, v in (line.rsplit(",", 1) for line in result.stdout.splitlines())}
    decided = {n: int(v) for n, v in (line.rsplit(",", 1) for line in decisions.read_text().splitlines())}
    assert decided == {n: int(s > np.float32(lowest)) for n, s in scores.items()}
    assert 0 in decided.values()  # with the stored -0.5 every clip was an anomaly
    with pytest.warns(AsdWarning, match="asd fit-bank"):
        assert load_bank(old).threshold == lowest


# ------------------------------------------------------------------------- 2, 3. banks given beside a submission


@pytest.fixture(scope="module")
def systems(
    clip_bank: dict[str, Path], synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Submission folders of the fan clip bank (plain folders, outside any run) and of a bank of
    the same clips fitted with another threshold quantile, and an `asd run` folder of fan."""
    root = tmp_path_factory.mktemp("trust-systems")
    parts = {"banks": clip_bank["banks"], "data": root / "data", "run": root / "run"}
    parts["banks_q5"] = root / "banks_q5"
    assert_ok(asd("fit-bank", clip_bank["train"], "--out-dir", parts["banks_q5"], "--threshold-quantile", 0.5))
    for name in ("banks", "banks_q5"):
        parts[f"sub_{name}"] = root / f"sub_{name}"
        assert_ok(asd("score", "--banks", parts[name], "--embeddings", clip_bank["test"], "--submission-dir",
                      parts[f"sub_{name}"]))  # fmt: skip
    shutil.copytree(synth_root / "fan", parts["data"] / "fan")
    assert_ok(asd("run", parts["data"], "--checkpoint", tiny_checkpoint, "--out", parts["run"], "--no-finetune",
                  "--seconds", 1, "--batch-size", 8, "--device", "cpu"))  # fmt: skip
    return parts


def test_the_systems_differ_in_their_decisions(systems: dict[str, Path]) -> None:
    """The premise of the tests below: the two banks' thresholds decide some test clip apart."""
    a = (systems["sub_banks"] / "decision_result_fan_section_00_test.csv").read_text()
    b = (systems["sub_banks_q5"] / "decision_result_fan_section_00_test.csv").read_text()
    assert a != b


def test_fuse_refuses_a_submission_paired_with_banks_that_did_not_score_it(
    systems: dict[str, Path], tmp_path: Path
) -> None:
    """SUBMISSION_DIR:BANKS_DIR with the banks of another threshold (same clips, same front end):
    the scores were standardized with the wrong bank's leave-one-out statistics without a word.
    The submission's decisions disagree with those banks' threshold: one error naming both."""
    out = tmp_path / "fused"
    wrong = f"{systems['sub_banks']}:{systems['banks_q5']}"
    line = assert_error(asd("fuse", wrong, f"{systems['sub_banks_q5']}:{systems['banks_q5']}", "--out", out),
                        "decision_result_fan_section_00_test.csv", BANK, "not the banks that scored it")  # fmt: skip
    assert str(systems["banks_q5"]) in line
    assert not out.exists()
    right = f"{systems['sub_banks']}:{systems['banks']}"
    assert_ok(asd("fuse", right, f"{systems['sub_banks_q5']}:{systems['banks_q5']}", "--out", out))


def test_fuse_checks_a_run_submission_against_the_run_record(systems: dict[str, Path], tmp_path: Path) -> None:
    """RUN/submission paired with another folder of banks: the run's fit-bank record says which
    bank files scored it; a copy of RUN/banks passes, other banks are refused by name."""
    run, out = systems["run"], tmp_path / "fused"
    copy = tmp_path / "copied-banks"
    shutil.copytree(run / "banks", copy)
    assert_ok(asd("fuse", f"{run / 'submission'}:{copy}", "--out", out))
    shutil.copy(systems["banks_q5"] / BANK, copy / BANK)
    assert_error(asd("fuse", f"{run / 'submission'}:{copy}", "--out", tmp_path / "fused2"),
                 str(copy / BANK), "fit-bank")  # fmt: skip
    assert not (tmp_path / "fused2").exists()


@pytest.mark.parametrize("submission", ["plain folder", "run folder"])
def test_report_refuses_banks_that_did_not_score_the_submission(
    systems: dict[str, Path], submission: str, synth_root: Path
) -> None:
    """`asd report SUB --banks DIR` drew DIR's thresholds beside decisions made with other ones."""
    sub = systems["sub_banks"] if submission == "plain folder" else systems["run"] / "submission"
    result = asd("report", sub, "--data", synth_root, "--banks", systems["banks_q5"], "--format", "csv")
    assert_error(result, str(systems["banks_q5"] / BANK))


def test_report_refuses_banks_without_the_scored_section(
    systems: dict[str, Path], synth_root: Path, tmp_path: Path
) -> None:
    """A folder of banks of other sections only: the report showed no threshold, without a word."""
    from asdcli.artifacts import load_npz, save_npz_atomic

    other = tmp_path / "other"
    other.mkdir()

    arrays = load_npz(systems["banks"] / BANK, what="bank")
    meta = json.loads(str(arrays["meta"]))
    meta["section"] = "01"
    save_npz_atomic(other / "bank_fan_section_01.npz", {**arrays, "meta": np.asarray(json.dumps(meta))})
    result = asd("report", systems["sub_banks"], "--data", synth_root, "--banks", other, "--format", "csv")
    assert_error(result, str(other), "fan section 00")


def test_report_with_the_banks_that_scored_it_shows_their_thresholds(
    systems: dict[str, Path], synth_root: Path
) -> None:
    from asdcli.backend.bank import load_bank

    result = asd("report", systems["sub_banks_q5"], "--data", synth_root, "--banks", systems["banks_q5"],
                 "--format", "csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in result.stdout.splitlines()]
    shown = [float(r[4]) for r in rows if r[1] == "fan" and r[3] == "decision threshold"]
    assert shown == [pytest.approx(load_bank(systems["banks_q5"] / BANK).threshold, rel=1e-6)]
