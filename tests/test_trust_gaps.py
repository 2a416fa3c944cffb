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
        assert_ok(asd("embed", synth_root / "fan" / split, "--checkpoint", tiny_checkpoint, *EMBED, "--out", parts[split]))
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
