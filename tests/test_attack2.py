"""Adversarial cases (attack2) on this round's commands that still fail, driven through the real CLI.

Each test states the promised behaviour; a known bug is kept as ``xfail(strict=True)`` until its fix
lands (the test passes, the strict xfail turns red) and the marker is removed. Tiny random BEATs, 1 s clips.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def fan_bank(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> tuple[Path, Path]:
    """(fan section 00 bank, embeddings .npz of every machine's train clips) from the tiny BEATs."""
    root = tmp_path_factory.mktemp("attack2")
    train = root / "train.npz"
    folders = [synth_root / m / "train" for m in ("fan", "gearbox", "bearing")]
    result = _asd("embed", *folders, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--out", train)
    assert result.exit_code == 0, result.output
    banks = root / "banks"
    result = _asd("fit-bank", train, "--out-dir", banks)
    assert result.exit_code == 0, result.output
    return banks / "bank_fan_section_00.npz", train


def test_enrol_rejects_a_clip_of_another_machine(fan_bank: tuple[Path, Path], synth_root: Path, tmp_path: Path) -> None:
    """`asd score --bank fan.npz gearbox/.../x.wav` refuses the clip; `asd enrol` must refuse it too."""
    bank, _ = fan_bank
    clip = sorted((synth_root / "gearbox" / "test").glob("section_00_*_normal_*.wav"))[0]
    assert _asd("score", "--bank", bank, clip).exit_code == 1  # score already refuses it
    out = tmp_path / "fan_v2.npz"
    _assert_error(_asd("enrol", bank, clip, "--domain", "target", "--out", out), "gearbox")
    assert not out.exists()


def test_enrol_rejects_a_clip_of_another_section(fan_bank: tuple[Path, Path], synth_root: Path, tmp_path: Path) -> None:
    bank, _ = fan_bank
    clip = sorted((synth_root / "fan" / "train").glob("section_00_target_*.wav"))[0]
    loose = tmp_path / clip.name.replace("section_00", "section_01")
    shutil.copy(clip, loose)
    out = tmp_path / "fan_v2.npz"
    _assert_error(_asd("enrol", bank, loose, "--domain", "target", "--out", out), "section")
    assert not out.exists()


def test_enrol_embeddings_of_other_machines_is_refused(fan_bank: tuple[Path, Path], tmp_path: Path) -> None:
    """The .npz records machine and section per row; rows of gearbox/bearing do not belong in a fan bank,
    and rows whose filename is already in the bank would give zero leave-one-out distances."""
    bank, train = fan_bank
    out = tmp_path / "fan_v2.npz"
    result = _asd("enrol", bank, train, "--domain", "target", "--out", out)
    if result.exit_code == 0:
        before = np.load(bank, allow_pickle=False)
        after = np.load(out, allow_pickle=False)
        names = [str(n) for n in after["filenames"]]
        assert len(names) == len(set(names)), "the bank now holds the same clip twice"
        assert len(after["vectors"]) == len(before["vectors"]), "rows of other machines were enrolled"
    else:
        _assert_error(result)
        assert not out.exists()


def test_watch_a_machine_folder_itself(fan_bank: tuple[Path, Path], synth_root: Path, tmp_path: Path) -> None:
    bank, _ = fan_bank
    incoming = tmp_path / "fan"
    incoming.mkdir()
    clip = sorted((synth_root / "fan" / "test").glob("section_00_*_normal_*.wav"))[0]
    shutil.copy(clip, incoming / clip.name)
    log = tmp_path / "scores.csv"
    result = _asd("watch", incoming, "--banks", bank.parent, "--once", "--log", log)
    assert result.exit_code == 0, result.output
    assert "No bank" not in result.output, result.output
    assert clip.name in log.read_text(encoding="utf-8")


def test_fuse_refuses_a_run_folder_whose_banks_were_replaced(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    runs = {}
    for recipe in ("seed", "density"):
        out = tmp_path / recipe
        args = ("run", synth_root, "--checkpoint", tiny_checkpoint, "--no-finetune", "--seconds", 1)
        result = _asd(*args, "--recipe", recipe, "--out", out)
        assert result.exit_code == 0, result.output
        runs[recipe] = out
    for bank in (runs["density"] / "banks").glob("bank_*.npz"):
        shutil.copy(bank, runs["seed"] / "banks" / bank.name)  # seed's submission/, density's banks/
    fused = tmp_path / "fused"
    _assert_error(_asd("fuse", runs["seed"], runs["density"], "--out", fused), "banks")
    assert not fused.exists()


def test_full_finetune_with_lora_options_is_an_error(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    args = ("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--epochs", 1)
    _assert_error(_asd(*args, "--full-finetune", "--lora-rank", 4, "--out", out), "--lora-rank")


def test_watch_log_that_is_not_a_log_is_left_unchanged(
    fan_bank: tuple[Path, Path], synth_root: Path, tmp_path: Path
) -> None:
    bank, _ = fan_bank
    incoming = tmp_path / "incoming" / "fan"
    incoming.mkdir(parents=True)
    clip = sorted((synth_root / "fan" / "test").glob("section_00_*_normal_*.wav"))[0]
    shutil.copy(clip, incoming / clip.name)
    victims = [tmp_path / "bank_copy.npz", incoming / clip.name]
    shutil.copy(bank, victims[0])
    before = [v.read_bytes() for v in victims]
    for victim in victims:
        result = _asd("watch", incoming.parent, "--banks", bank.parent, "--once", "--log", victim)
        _assert_error(result, "--log")
    assert [v.read_bytes() for v in victims] == before, "a file that is not a log was modified"


def test_package_keeps_a_zip_it_did_not_write(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ("run", synth_root, "--checkpoint", tiny_checkpoint, "--no-finetune", "--seconds", 1, "--out", run_dir)
    result = _asd(*args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "pkg"
    out.mkdir()
    mine = out / "Doe_X_task2_1.zip"
    mine.write_bytes(b"the user's own archive")
    result = _asd("package", run_dir, "--team", "Doe_X", "--out", out)
    assert mine.read_bytes() == b"the user's own archive"
    _assert_error(result, "Doe_X_task2_1.zip")
