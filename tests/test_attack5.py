"""Adversarial cases of a fifth tester pass: ONNX embedding options, fuse weight edge cases, the
package meta of a fused folder; through the real CLI.

Each test states the promised behaviour. Those still failing are marked ``xfail(strict=True)``:
when a fix lands the test passes, the strict xfail turns red, and the marker is removed. Tiny
random BEATs, 1 s clips.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The tiny BEATs exported as an fp32 ONNX model (1 s example clips)."""
    out = tmp_path_factory.mktemp("attack5-onnx") / "tiny.onnx"
    _assert_ok(_asd("export", "--checkpoint", tiny_checkpoint, "--seconds", 1, "--out", out))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    """An `asd run --no-finetune` folder of the tiny dataset (frozen tiny BEATs, 1 s clips)."""
    out = tmp_path_factory.mktemp("attack5-run") / "run"
    result = _asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--no-finetune", "--seconds", 1,
                  "--device", "cpu", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _scores(folder: Path) -> dict[str, float]:
    with (folder / "anomaly_score_fan_section_00_test.csv").open(newline="") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f)}


# ------------------------------------------------------------------------- asd embed --onnx


def test_embed_onnx_with_window_is_windowed_or_refused(synth_root: Path, onnx_model: Path, tmp_path: Path) -> None:
    """`asd embed --onnx M --window 0.5` either writes a row per window (start_s/end_s) or refuses
    the combination in one line; it never writes one row per clip as if --window was not given."""
    out = tmp_path / "w.npz"
    result = _asd("embed", synth_root / "fan" / "test", "--onnx", onnx_model, "--seconds", 1, "--window", 0.5,
                  "--out", out)  # fmt: skip
    if result.exit_code == 1:
        _assert_error(result, "--window")
        assert not out.exists()
        return
    _assert_ok(result)
    with np.load(out, allow_pickle=False) as z:
        assert "start_s" in z.files and "end_s" in z.files


def test_embed_onnx_with_layers_is_refused(synth_root: Path, onnx_model: Path, tmp_path: Path) -> None:
    """The ONNX model holds its layer choice: `--layers 1` with `--onnx` is refused as --checkpoint
    and --precision are, not silently replaced by the model's 'last'."""
    out = tmp_path / "l.npz"
    result = _asd("embed", synth_root / "fan" / "test", "--onnx", onnx_model, "--seconds", 1, "--layers", 1,
                  "--out", out)  # fmt: skip
    _assert_error(result, "--layers")
    assert not out.exists()


# ------------------------------------------------------------------------- asd fuse --weights


def test_fuse_huge_finite_weights_are_one_error_line_or_scale_invariant(run_dir: Path, tmp_path: Path) -> None:
    """--weights 1e308,1e308 are finite and >= 0: equal weights (the fusion is the same as 1,1), or
    one `Error:` line; never a traceback."""
    result = _asd("fuse", run_dir, run_dir, "--weights", "1e308,1e308", "--out", tmp_path / "fused")
    if result.exit_code == 1:
        _assert_error(result, "--weights")
        return
    _assert_ok(result)
    _assert_ok(_asd("fuse", run_dir, run_dir, "--out", tmp_path / "equal"))
    assert _scores(tmp_path / "fused") == pytest.approx(_scores(tmp_path / "equal"), abs=1e-6)


def test_fuse_tiny_weights_give_the_same_fusion(run_dir: Path, tmp_path: Path) -> None:
    """Weights only matter relative to each other: --weights 5e-324,0 fuses as --weights 1,0 (the
    first system alone), or is one `Error:` line; never scores rounded to whole numbers."""
    result = _asd("fuse", run_dir, run_dir, "--weights", "5e-324,0", "--out", tmp_path / "tiny")
    if result.exit_code == 1:
        _assert_error(result, "--weights")
        return
    _assert_ok(result)
    _assert_ok(_asd("fuse", run_dir, run_dir, "--weights", "1,0", "--out", tmp_path / "one"))
    assert _scores(tmp_path / "tiny") == pytest.approx(_scores(tmp_path / "one"), abs=1e-6)


def test_fuse_refuses_a_condensed_bank(run_dir: Path, tmp_path: Path) -> None:
    """A --condense-source bank holds k-means centres, no train leave-one-out scores: refused."""
    banks, sub = tmp_path / "banks", tmp_path / "sub"
    _assert_ok(_asd("fit-bank", run_dir / "embeddings" / "train.npz", "--condense-source", 2, "--out-dir", banks))
    _assert_ok(_asd("score", "--banks", banks, "--embeddings", run_dir / "embeddings" / "test.npz",
                    "--submission-dir", sub))  # fmt: skip
    _assert_error(_asd("fuse", run_dir, f"{sub}:{banks}", "--out", tmp_path / "fused"), "--condense-source")
    assert not (tmp_path / "fused").exists()


# ------------------------------------------------------------------------- asd package of a fused folder


def test_package_of_a_fused_folder_does_not_invent_a_single_system(
    run_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    """The meta YAML holds what the run records and FILL IN for the rest: a folder of `asd fuse`
    (no run records) is not described as one frozen-BEATs KNN system with 0 trainable parameters."""
    fused = tmp_path / "fused"
    _assert_ok(_asd("fuse", run_dir, run_dir, "--out", fused))
    _assert_ok(_asd("package", fused, "--team", "Doe_ACME", "--out", tmp_path / "pkg", "--data", synth_root))
    meta = (tmp_path / "pkg" / "task2" / "Doe_ACME_task2_1" / "Doe_ACME_task2_1.meta.yaml").read_text()
    assert "ensemble_method_subsystem_count: 1\n" not in meta
    assert "KNN cosine distance" not in meta


# ------------------------------------------------------------------------- windowed embeddings


def test_score_windowed_embeddings_names_the_windows(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`asd score --embeddings` of an `asd embed --window` file (several rows per recording, with
    start_s/end_s) is one actionable line about the windows, not 'holds the same clip twice (P and P):
    embed each clip once', which names one path twice and tells the user to do what they did."""
    train, test, banks = tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "banks"
    for split, out in (("train", train), ("test", test)):
        _assert_ok(_asd("embed", synth_root / "fan" / split, "--checkpoint", tiny_checkpoint, "--seconds", 1,
                        "--device", "cpu", "--window", 0.5, "--out", out))  # fmt: skip
    _assert_ok(_asd("fit-bank", train, "--out-dir", banks))
    line = _assert_error(_asd("score", "--bank", banks / "bank_fan_section_00.npz", "--embeddings", test), "--window")
    assert "twice" not in line
