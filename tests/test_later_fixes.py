"""Trust gaps closed after the restructuring: bounded --workers for fine-tuning, a decision
threshold never below the scores it was fitted on, a resume refusal that names what differs, and
a run's banks and fine-tuning record checked against its stage records; through the real CLI.
Tiny random BEATs, 1 s clips.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error

from asdcli.workers import usable_cpus

# ------------------------------------------------------------------------- --workers


@pytest.mark.parametrize("command", ["finetune", "run"])
def test_workers_beyond_the_cpus_is_one_error_before_any_work(
    command: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """One more worker than CPUs (a safe stand-in for a typo like 100000, which would fork that
    many processes) is refused in one line, as `asd embed --workers` is, and nothing is written."""
    out = tmp_path / "out"
    for workers in (usable_cpus() + 1, 10**9, -1):
        result = _asd(command, synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--epochs", 1,
                      "--seconds", 1, "--device", "cpu", "--workers", workers)  # fmt: skip
        _assert_error(result, "--workers must be from 0 to this machine's", f"{usable_cpus()} CPUs", f"got {workers}")
        assert not out.exists()


# ------------------------------------------------------------------------- threshold quantile


def _gaussian_embeddings(path: Path, n: int = 24, seed: int = 0, n_target: int = 4) -> Path:
    """Train rows of fan section 00 whose nearest-neighbour distances are bell-shaped: a gamma
    fit to them puts its location far below the smallest one (below 0 for a quantile of 1e-12)."""
    from test_bank import make_embeddings
    from test_score import META

    from asdcli.artifacts import save_embeddings

    emb = make_embeddings(groups=(("fan", "00"),), n_train=n, n_target=n_target, n_test=0, dim=12, seed=seed)
    names = np.char.replace(emb.filenames, ".wav", f"_{seed}.wav")
    save_embeddings(path, dataclasses.replace(emb, filenames=names, meta=dict(META)))  # `asd enrol` checks META
    return path


@pytest.mark.parametrize("quantile", ["1e-12", "0.01"])
def test_a_tiny_threshold_quantile_never_puts_the_threshold_below_the_normal_scores(
    quantile: str, tmp_path: Path
) -> None:
    """`asd fit-bank --threshold-quantile 1e-12` used to store a negative threshold for cosine
    distances (>= 0): every clip flagged. The threshold is now at least the smallest leave-one-out
    score, the fit-bank line says so, and `asd enrol` (which refits the threshold) agrees."""
    from asdcli.backend.bank import load_bank
    from asdcli.backend.bank_fit import fit_threshold

    emb = _gaussian_embeddings(tmp_path / "train.npz")
    out = tmp_path / "fan.npz"
    result = _asd("fit-bank", emb, "--machine", "fan", "--out", out, "--threshold-quantile", quantile)
    assert result.exit_code == 0, result.output
    bank = load_bank(out)
    lowest = float(bank.loo_scores.min())
    assert bank.threshold == lowest and bank.threshold >= 0.0
    assert bank.threshold_info["method"] == "min"
    assert bank.threshold_info["gamma_threshold"] < lowest  # the case: the raw gamma quantile is below the data
    assert "lies below every normal leave-one-out score" in result.stderr
    grown_path = tmp_path / "grown.npz"
    more = _gaussian_embeddings(tmp_path / "more.npz", n=12, seed=1, n_target=0)
    result = _asd("enrol", out, more, "--domain", "source", "--out", grown_path)
    assert result.exit_code == 0, result.output
    grown = load_bank(grown_path)
    assert grown.threshold >= float(grown.loo_scores.min()) >= 0.0
    # fuse standardizes scores (negative values are fine there): the floor is the smallest score, not 0
    threshold, info = fit_threshold(bank.loo_scores - 5.0, float(quantile))
    assert threshold == pytest.approx(lowest - 5.0, abs=1e-6) and info["method"] == "min"


def test_an_ordinary_quantile_keeps_the_gamma_threshold(tmp_path: Path) -> None:
    from asdcli.backend.bank import load_bank

    out = tmp_path / "fan.npz"
    result = _asd("fit-bank", _gaussian_embeddings(tmp_path / "train.npz"), "--machine", "fan", "--out", out)
    assert result.exit_code == 0, result.output
    bank = load_bank(out)
    assert bank.threshold_info["method"] == "gamma" and "gamma_threshold" not in bank.threshold_info
    assert float(bank.loo_scores.min()) < bank.threshold


@pytest.mark.parametrize("command", ["fit-bank", "fuse"])
@pytest.mark.parametrize("quantile", ["0", "1", "nan", "-0.5"])
def test_a_quantile_outside_0_1_is_one_error(command: str, quantile: str, tmp_path: Path) -> None:
    args = ("fit-bank", tmp_path / "x.npz", "--out-dir", tmp_path / "b") if command == "fit-bank" else (
        "fuse", tmp_path / "a", "--out", tmp_path / "f")  # fmt: skip
    _assert_error(_asd(*args, "--threshold-quantile", quantile), "--threshold-quantile must be in (0, 1)")


# ------------------------------------------------------------------------- resuming with other options


def _finetune(data: Path, ckpt: Path, out: Path, *extra: object):  # type: ignore[no-untyped-def]
    return _asd("finetune", data, "--checkpoint", ckpt, "--out", out, "--seconds", 1, "--batch-size", 8,
                "--device", "cpu", *extra)  # fmt: skip


def test_resuming_with_other_options_names_them_with_old_and_new_values(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    result = _finetune(synth_root, tiny_checkpoint, out, "--epochs", 1)
    assert result.exit_code == 0, result.output
    state = (out / "state" / "state.safetensors").read_bytes()
    line = _assert_error(_finetune(synth_root, tiny_checkpoint, out, "--resume", "--epochs", 1, "--lr", "0.002"),
                         "state.safetensors was made with --lr 0.0001 (now 0.002);",
                         "resume with the same options, clips and checkpoint", "or choose a new --out folder")  # fmt: skip
    assert "--epochs" not in line  # only what differs
    many = ("--epochs", 2, "--lr", "0.002", "--specaugment", "--mixup", "0.2", "--seed", 3)
    _assert_error(_finetune(synth_root, tiny_checkpoint, out, "--resume", *many),  # + specaugment, mixup, split
                  "made with --epochs 1 (now 2), --lr 0.0001 (now 0.002), --seed 0 (now 3) and 3 more;")  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    sorted((data / "fan" / "train").glob("*.wav"))[0].unlink()
    _assert_error(_finetune(data, tiny_checkpoint, out, "--resume", "--epochs", 1),
                  "made with the training clips (21, now 20);")  # fmt: skip
    assert (out / "state" / "state.safetensors").read_bytes() == state  # refused: nothing touched


def test_asd_run_says_which_fine_tuning_options_changed(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--seconds", 1, "--epochs", 1,
            "--batch-size", 8, "--device", "cpu")  # fmt: skip
    assert _asd(*args).exit_code == 0
    result = _asd(*args, "--lr", "0.002")
    assert result.exit_code == 0, result.output
    assert f"fine-tuning run from {out / 'finetune'}: it was made with --lr 0.0001 (now 0.002)." in result.stderr


# ------------------------------------------------------------------------- a run's banks and run.json


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    """An `asd run` folder of the tiny dataset, fine-tuned for one epoch (read-only: copy it)."""
    out = tmp_path_factory.mktemp("later-run") / "run"
    result = _asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--seconds", 1, "--epochs", 1,
                  "--batch-size", 8, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _score_banks(banks: Path, run: Path, out: Path):  # type: ignore[no-untyped-def]
    return _asd("score", "--banks", banks, "--embeddings", run / "embeddings" / "test.npz", "--submission-dir", out)


def test_score_banks_of_a_run_are_checked_against_its_records(finetuned_run: Path, tmp_path: Path) -> None:
    run = _copy(finetuned_run, tmp_path)
    result = _score_banks(run / "banks", run, tmp_path / "sub")
    assert result.exit_code == 0, result.output  # the run's own banks, unchanged
    assert (tmp_path / "sub" / "anomaly_score_fan_section_00_test.csv").read_bytes() == (
        run / "submission" / "anomaly_score_fan_section_00_test.csv"
    ).read_bytes()
    fan = run / "banks" / "bank_fan_section_00.npz"
    result = _asd("fit-bank", run / "embeddings" / "train.npz", "--machine", "fan", "--k", 2, "--out", fan)
    assert result.exit_code == 0, result.output  # a bank replaced after the run
    out = tmp_path / "sub2"
    _assert_error(_score_banks(run / "banks", run, out), str(fan), "is not the bank that `asd run` wrote",
                  "records another size or SHA-256", "copy the banks out of the run folder")  # fmt: skip
    assert not out.exists()
    shutil.copytree(run / "banks", tmp_path / "mine")  # outside a run folder: used as they are
    result = _score_banks(tmp_path / "mine", run, out)
    assert result.exit_code == 0, result.output
    fan.unlink()
    _assert_error(_score_banks(run / "banks", run, out), str(fan), "a bank of the run, is missing")


def test_score_banks_with_an_added_bank_is_refused(finetuned_run: Path, tmp_path: Path) -> None:
    run = _copy(finetuned_run, tmp_path)
    extra = run / "banks" / "bank_valve_section_00.npz"
    shutil.copyfile(run / "banks" / "bank_fan_section_00.npz", extra)
    _assert_error(_score_banks(run / "banks", run, tmp_path / "sub"), str(extra), "does not list it")


def test_one_bank_of_a_run_and_watch_on_its_banks_are_checked_too(finetuned_run: Path, tmp_path: Path) -> None:
    """`asd score --bank RUN/banks/x.npz` and `asd watch --banks RUN/banks` (or --bank) read the
    run's banks like `asd score --banks`: a bank replaced after the run is refused by each."""
    run = _copy(finetuned_run, tmp_path)
    fan = run / "banks" / "bank_fan_section_00.npz"
    test = run / "embeddings" / "test.npz"
    assert _asd("score", "--bank", fan, "--embeddings", test).exit_code == 0
    result = _asd("fit-bank", run / "embeddings" / "train.npz", "--machine", "fan", "--k", 2, "--out", fan)
    assert result.exit_code == 0, result.output
    _assert_error(_asd("score", "--bank", fan, "--embeddings", test), str(fan), "is not the bank that `asd run` wrote")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for how in (["--banks", run / "banks"], ["--bank", fan]):
        result = _asd("watch", incoming, *how, "--once", "--log", tmp_path / "watch.csv")
        _assert_error(result, str(fan), "is not the bank that `asd run` wrote")
    assert not (tmp_path / "watch.csv").exists()


def _package(run: Path, out: Path):  # type: ignore[no-untyped-def]
    return _asd("package", run, "--team", "Doe_ACME", "--system", 1, "--out", out)


def test_package_refuses_a_fine_tuning_record_edited_after_the_run(finetuned_run: Path, tmp_path: Path) -> None:
    run = _copy(finetuned_run, tmp_path)
    result = _package(run, tmp_path / "pkg")
    assert result.exit_code == 0, result.output
    meta = (tmp_path / "pkg" / "task2" / "Doe_ACME_task2_1" / "Doe_ACME_task2_1.meta.yaml").read_text()
    assert "fine-tuned with LoRA" in meta
    record = run / "finetune" / "run.json"
    record.write_text(record.read_text().replace('"specaugment": false', '"specaugment": true'))
    _assert_error(_package(run, tmp_path / "pkg2"), str(record), "is not the fine-tuning record that `asd run` wrote")
    assert not (tmp_path / "pkg2").exists()


def test_package_of_a_frozen_run_over_a_fine_tuned_one_says_frozen(
    finetuned_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`asd run --no-finetune` into a fine-tuned run folder leaves finetune/run.json (asdcli never
    deletes what a later stage may reuse); the package meta describes the frozen system it scored."""
    run = _copy(finetuned_run, tmp_path)
    result = _asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", run, "--seconds", 1, "--no-finetune",
                  "--batch-size", 8, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run / "finetune" / "run.json").is_file()
    result = _package(run, tmp_path / "pkg")
    assert result.exit_code == 0, result.output
    meta = (tmp_path / "pkg" / "task2" / "Doe_ACME_task2_1" / "Doe_ACME_task2_1.meta.yaml").read_text()
    assert "fine-tuned" not in meta and "trainable_parameters: 0" in meta


def test_score_banks_spelled_as_dot_or_a_link_is_still_the_run_s(finetuned_run: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    run = _copy(finetuned_run, tmp_path)
    (run / "banks" / "bank_fan_section_00.npz").write_bytes(
        (run / "banks" / "bank_gearbox_section_00.npz").read_bytes()
    )
    (tmp_path / "link").symlink_to(run / "banks")
    _assert_error(_score_banks(tmp_path / "link", run, tmp_path / "sub"), "is not the bank that `asd run` wrote")
    monkeypatch.chdir(run / "banks")
    _assert_error(_score_banks(Path("."), run, tmp_path / "sub"), "is not the bank that `asd run` wrote")
