"""Adversarial cases (issue 11) that still fail in this snapshot, driven through the real `asd` CLI.

Each test states the promised behaviour and is marked ``xfail(strict=True)``: when a fix lands the
test passes, the strict xfail turns red, and the marker is removed. Tiny random BEATs, 1 s clips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def fan(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Backbone embeddings of fan train and test clips and the bank fitted on the train ones."""
    folder = tmp_path_factory.mktemp("attack_fan")
    for split in ("train", "test"):
        _assert_ok(_asd("embed", synth_root / "fan" / split, "--out", folder / f"{split}.npz",
                        "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu"))  # fmt: skip
    _assert_ok(_asd("fit-bank", folder / "train.npz", "--out", folder / "bank.npz"))
    return {"train": folder / "train.npz", "test": folder / "test.npz", "bank": folder / "bank.npz"}


@pytest.fixture(scope="module")
def adapter_run(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("attack_adapter") / "run"
    _assert_ok(_asd("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--epochs", 1,
                    "--seconds", 1, "--batch-size", 12, "--lora-rank", 2, "--embedding-dim", 8,
                    "--device", "cpu", "--val-fraction", 0))  # fmt: skip
    return out


Change = Callable[[dict[str, np.ndarray], dict[str, object]], None]


def _edit_npz(src: Path, dst: Path, change: Change) -> Path:
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    change(arrays, meta)
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(dst, **arrays)
    return dst


def _set_array(key: str, value: Callable[[np.ndarray], np.ndarray]) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
        arrays[key] = value(arrays[key])

    return change


def _set_meta(key: str, value: object) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
        meta[key] = value

    return change


def _set_config(key: str, value: object) -> Change:
    def change(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
        meta["config"][key] = value  # type: ignore[index]

    return change


def _nan_first(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[0] = np.nan
    return a


# ---------------------------------------------------------------------------------------------
# a tampered bank gives silent NaN scores / all-0 decisions (issue 11 section 3)

SILENT_NAN_BANKS = [
    pytest.param(_set_array("vectors", _nan_first), "vectors", id="nan-bank-vector"),
    pytest.param(_set_array("std", np.zeros_like), "std", id="zero-std"),
    pytest.param(_set_array("mean", _nan_first), "mean", id="nan-mean"),
    pytest.param(_set_array("mean", lambda a: a.astype(str)), "mean", id="string-mean"),
]


@pytest.mark.parametrize("change,needle", SILENT_NAN_BANKS)
def test_tampered_bank_is_an_error_not_nan_scores(
    change: Change, needle: str, fan: dict[str, Path], tmp_path: Path
) -> None:
    bank = _edit_npz(fan["bank"], tmp_path / "bank.npz", change)
    _assert_error(_asd("score", "--bank", bank, "--embeddings", fan["test"]), str(bank), needle)


def test_nan_threshold_is_an_error_not_all_zero_decisions(fan: dict[str, Path], tmp_path: Path) -> None:
    bank = _edit_npz(fan["bank"], tmp_path / "bank.npz", _set_array("threshold", lambda a: np.asarray(np.nan)))
    decisions = tmp_path / "decisions.csv"
    _assert_error(_asd("score", "--bank", bank, "--embeddings", fan["test"], "--decisions", decisions),
                  str(bank), "threshold")  # fmt: skip
    assert not decisions.exists()


# ---------------------------------------------------------------------------------------------
# malformed bank meta / arrays end in a traceback (issue 11 section 7)

TRACEBACK_BANKS = [
    pytest.param(_set_array("threshold", lambda a: np.array([0.1, 0.2])), id="threshold-array"),
    pytest.param(_set_array("threshold", lambda a: np.asarray("abc")), id="threshold-string"),
    pytest.param(_set_meta("threshold", "x"), id="meta-threshold-string"),
    pytest.param(_set_meta("embedding", [1]), id="meta-embedding-list"),
    pytest.param(_set_config("k", "two"), id="config-k-string"),
    pytest.param(_set_config("k", 1000), id="config-k-larger-than-bank"),
]


@pytest.mark.parametrize("change", TRACEBACK_BANKS)
def test_malformed_bank_is_one_error_line(change: Change, fan: dict[str, Path], tmp_path: Path) -> None:
    bank = _edit_npz(fan["bank"], tmp_path / "bank.npz", change)
    _assert_error(_asd("score", "--bank", bank, "--embeddings", fan["test"]), str(bank))


# ---------------------------------------------------------------------------------------------
# an unexpected exception is masked by an AttributeError in AsdGroup.main


def test_unexpected_exception_is_not_masked_by_missing_abort(fan: dict[str, Path], tmp_path: Path) -> None:
    """Any exception that escapes a command passes through AsdGroup.main's except clauses; with
    typer's bundled click, evaluating ``click_exceptions.Abort`` raises AttributeError instead."""
    bank = _edit_npz(fan["bank"], tmp_path / "bank.npz", _set_array("threshold", lambda a: np.array([0.1, 0.2])))
    result = _asd("score", "--bank", bank, "--embeddings", fan["test"])
    assert not isinstance(result.exception, AttributeError), repr(result.exception)


# ---------------------------------------------------------------------------------------------
# adapter_config.json that peft rejects: a traceback (issue 11 section 7)

ADAPTER_CONFIGS = [
    pytest.param("target_modules", "q_proj", id="target-modules-string"),
    pytest.param("r", 0, id="rank-0"),
    pytest.param("peft_type", "IA3", id="other-peft-type"),
]


@pytest.mark.parametrize("key,value", ADAPTER_CONFIGS)
def test_malformed_adapter_config_is_one_error_line(key: str, value: object, adapter_run: Path, synth_root: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(adapter_run, run)
    config_path = run / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    out = tmp_path / "emb.npz"
    _assert_error(_asd("embed", synth_root / "fan" / "test", "--adapter", run, "--out", out,
                       "--seconds", 1, "--device", "cpu"), "adapter_config.json")  # fmt: skip
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# file names (issue 11 section 5)


def test_non_utf8_clip_names_round_trip_through_the_submission_folder(fan: dict[str, Path], synth_root: Path,
                                                                      tiny_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    """`asd score --submission-dir` writes the name's bytes (as stdout does); `asd report` on that
    folder must read them back (stdout -> `asd report -` already works)."""
    data = tmp_path / "data" / "fan" / "test"
    data.mkdir(parents=True)
    for i, clip in enumerate(sorted((synth_root / "fan" / "test").glob("*.wav"))):
        name = os.fsencode(clip.name) if i else os.fsencode(clip.stem) + b"_\xff.wav"
        shutil.copy(clip, os.path.join(os.fsencode(data), name))
    emb = tmp_path / "test.npz"
    _assert_ok(_asd("embed", data, "--out", emb, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu"))
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    submission = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", banks, "--embeddings", emb, "--submission-dir", submission))
    result = _asd("report", submission, "--data", tmp_path / "data", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "fan,00,clips," in result.stdout


# ---------------------------------------------------------------------------------------------
# stderr holds one Error line only


def test_mismatched_embeddings_error_is_the_only_stderr_line(fan: dict[str, Path], tmp_path: Path) -> None:
    """A failed score says only why it failed; a line saying clips were 'Scored' is false."""

    def longer_clips(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
        meta["frontend"]["clip_seconds"] = 2.0  # type: ignore[index]

    # a mixed file (train + test rows) is what triggers the 'skipped other rows' line
    mixed = tmp_path / "mixed.npz"
    with np.load(fan["train"]) as a, np.load(fan["test"]) as b:
        arrays = {k: (a[k] if k == "meta" else np.concatenate([a[k], b[k]])) for k in a.files}
    np.savez(mixed, **arrays)
    other = _edit_npz(mixed, tmp_path / "other.npz", longer_clips)
    _assert_error(_asd("score", "--bank", fan["bank"], "--embeddings", other), "clip_seconds")


def test_overflowing_embeddings_are_one_error_line(fan: dict[str, Path], tmp_path: Path) -> None:
    """Run as a process: pytest would capture the warning that a user sees on stderr."""
    emb = _edit_npz(fan["test"], tmp_path / "big.npz", _set_array("embeddings", lambda a: a.astype(np.float64) * 1e300))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "asdcli", "score", "--bank", str(fan["bank"]), "--embeddings", str(emb)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "NaN or Inf" in lines[0], proc.stderr


def test_report_warning_has_no_literal_markup(fan: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    """A submission covering fewer machines than the ground truth warns in plain words."""
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    submission = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", banks, "--embeddings", fan["test"], "--submission-dir", submission))
    result = _asd("report", submission, "--data", synth_root, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "Warning" in result.stderr
    assert "[yellow]" not in result.stderr and "[/]" not in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# absurd options and long names (issue 11 section 7)


@pytest.mark.parametrize("seconds", ["inf", "1e9"])
def test_absurd_clip_length_is_one_error_line(
    seconds: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    clip = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    _assert_error(_asd("embed", clip, "--out", tmp_path / "e.npz", "--checkpoint", tiny_checkpoint,
                       "--seconds", seconds, "--device", "cpu"), "--seconds")  # fmt: skip


@pytest.mark.parametrize("seconds", ["0", "-1"])
def test_too_short_clip_length_is_only_an_error(
    seconds: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    clip = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    _assert_error(_asd("embed", clip, "--out", tmp_path / "e.npz", "--checkpoint", tiny_checkpoint,
                       "--seconds", seconds, "--device", "cpu"), "0.175")  # fmt: skip


def test_long_out_names_work(fan: dict[str, Path], synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A 250-character output name is a valid file name: every output works with one, although the
    temp and parts names derived from it (``.<name>.<pid>-<hex>.tmp``, ``.<name>.parts-...``,
    tempfile's ``.<name>.XXXXXXXX.tmp`` folders) would be longer than a file name may be."""
    clip = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    out = tmp_path / ("a" * 246 + ".npz")
    _assert_ok(_asd("embed", clip, "--out", out, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu"))
    assert out.is_file()
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    submission = tmp_path / ("s" * 250)
    for _ in range(2):  # the second run replaces the first folder (its own temp name: `.old`)
        _assert_ok(_asd("score", "--banks", banks, "--embeddings", fan["test"], "--submission-dir", submission))
    assert sorted(p.name for p in submission.iterdir()) == ["anomaly_score_fan_section_00_test.csv",
                                                            "decision_result_fan_section_00_test.csv"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, "banks", submission.name])


@pytest.mark.parametrize("command", ["embed", "submission"])
def test_too_long_out_name_is_one_error_line(
    command: str, fan: dict[str, Path], synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    clip = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    out = tmp_path / "out" / ("a" * 252 + ".npz")
    args = {
        "embed": ("embed", clip, "--out", out, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu"),
        "submission": ("score", "--banks", banks, "--embeddings", fan["test"], "--submission-dir", out),
    }
    _assert_error(_asd(*args[command]), "256 bytes long")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# asd report / asd package: outputs that do not say what they hold


def test_report_systems_have_distinct_labels(fan: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    """Each tidy row is keyed by (system, machine, section, metric); two systems must not share a label."""
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    submission = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", banks, "--embeddings", fan["test"], "--submission-dir", submission))
    result = _asd("report", submission, submission, "--data", synth_root / "fan", "--format", "json")
    if result.exit_code == 1:  # refusing the duplicate is fine too
        _assert_error(result, str(submission))
        return
    rows = json.loads(result.stdout)
    keys = [(r["system"], r["machine"], r["section"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "two systems share a label"


def test_package_folder_holds_what_the_zip_holds(fan: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    """The folder OUT/task2/<label>/ and the zip must hold the same files: a stale score file of an
    earlier package in the folder would be uploaded from the folder but not be in the zip."""
    import zipfile

    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    submission = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", banks, "--embeddings", fan["test"], "--submission-dir", submission))
    out = tmp_path / "pkg"
    _assert_ok(_asd("package", submission, "--team", "Doe_ACME", "--out", out, "--data", synth_root / "fan"))
    folder = out / "task2" / "Doe_ACME_task2_1"
    stale = folder / "anomaly_score_valve_section_00_test.csv"  # as an earlier package with valve left it
    stale.write_text("section_00_test_normal_0000.wav,0.5\n")
    result = _asd("package", submission, "--team", "Doe_ACME", "--out", out, "--data", synth_root / "fan")
    if result.exit_code == 1:  # refusing a folder with files it would not pack is fine too
        _assert_error(result, str(folder))
        return
    zipped = {Path(n).name for n in zipfile.ZipFile(out / "Doe_ACME_task2_1.zip").namelist()}
    assert {p.name for p in folder.iterdir()} == zipped


# ---------------------------------------------------------------------------------------------
# score files read back by `asd report` (issue 11 section 5)


def _fan_scores(fan: dict[str, Path]) -> str:
    result = _asd("score", "--bank", fan["bank"], "--embeddings", fan["test"])
    _assert_ok(result)
    return result.stdout


def test_leading_space_clip_name_round_trips(fan: dict[str, Path], synth_root: Path, tiny_checkpoint: Path,
                                            tmp_path: Path) -> None:  # fmt: skip
    data = tmp_path / "data" / "fan" / "test"
    data.mkdir(parents=True)
    for i, clip in enumerate(sorted((synth_root / "fan" / "test").glob("*.wav"))):
        shutil.copy(clip, data / ((" " if i == 0 else "") + clip.name))
    scored = _asd("score", "--bank", fan["bank"], data, "--checkpoint", tiny_checkpoint, "--device", "cpu")
    _assert_ok(scored)
    assert scored.stdout.startswith(" section_00")  # the name as written, leading space kept
    result = _asd(
        "report", "-", "--machine", "fan", "--data", tmp_path / "data", "--format", "csv", input=scored.stdout
    )
    assert result.exit_code == 0, result.output


def test_score_rows_with_extra_columns_are_an_error(fan: dict[str, Path], synth_root: Path) -> None:
    """`filename,label,score` (a common hand-made layout) must not be evaluated as if column 2
    were the score: that gives a perfect AUC from the labels, a silent wrong number."""
    rows = []
    for line in _fan_scores(fan).splitlines():
        name, score = line.rsplit(",", 1)
        rows.append(f"{name},{1 if '_anomaly_' in name else 0},{score}")
    _assert_error(_asd("report", "-", "--machine", "fan", "--data", synth_root, "--format", "csv",
                       input="\n".join(rows) + "\n"), "stdin line 1")  # fmt: skip


def _score_args(fan: dict[str, Path], what: str) -> list[str]:
    args = {"data": ["score", "--bank", str(fan["bank"]), "--embeddings", str(fan["test"])],
            "help": ["score", "--help"], "version": ["--version"], "no-args": []}  # fmt: skip
    return [sys.executable, "-m", "asdcli", *args[what]]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("what", ["data", "help", "version", "no-args"])
def test_full_stdout_is_one_error_line(what: str, fan: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open("/dev/full", "w") as full:
        proc = subprocess.run(_score_args(fan, what), stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=120)  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[-2000:]
    assert "standard output" in lines[0] and "No space left" in lines[0]


@pytest.mark.parametrize("what", ["data", "help", "no-args"])
def test_closed_stdout_pipe_is_a_quiet_exit(what: str, fan: dict[str, Path], tmp_path: Path) -> None:
    """`asd score ... | head -1`: the reader has gone, so there is nothing to say and no traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    read, write = os.pipe()
    os.close(read)  # before the command writes: its first write fails with EPIPE
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.run(_score_args(fan, what), stdout=write, stderr=err, env=env, timeout=120)
    os.close(write)
    assert proc.returncode == 1 and (tmp_path / "stderr").read_text() == ""


@pytest.mark.parametrize("option", ["--embeddings", "--bank"])
def test_npy_file_instead_of_npz_is_one_error_line(option: str, fan: dict[str, Path], tmp_path: Path) -> None:
    npy = tmp_path / "vectors.npy"
    np.save(npy, np.zeros((3, 4), np.float32))
    args = {
        "--embeddings": ("--bank", fan["bank"], "--embeddings", npy),
        "--bank": ("--bank", npy, "--embeddings", fan["test"]),
    }
    _assert_error(_asd("score", *args[option]), str(npy))


@pytest.mark.parametrize("option", ["--embeddings", "--bank"])
def test_folder_instead_of_npz_says_it_is_a_folder(option: str, fan: dict[str, Path], tmp_path: Path) -> None:
    args = {"--embeddings": ("--bank", fan["bank"], "--embeddings", tmp_path),
            "--bank": ("--bank", tmp_path, "--embeddings", fan["test"])}  # fmt: skip
    line = _assert_error(_asd("score", *args[option]), str(tmp_path), "is a folder")
    assert "does not exist" not in line


def test_a_bank_given_as_embeddings_is_an_error_in_plain_english(fan: dict[str, Path]) -> None:
    _assert_error(_asd("score", "--bank", fan["bank"], "--embeddings", fan["bank"]), "is not an embeddings file")


# ---------------------------------------------------------------------------------------------
# `asd report` overwrites its other inputs (issue 11 section 2: an output that is an input)


def _fan_submission(fan: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    banks = tmp_path / "banks"
    banks.mkdir()
    shutil.copy(fan["bank"], banks / "bank_fan_section_00.npz")
    submission = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", banks, "--embeddings", fan["test"], "--submission-dir", submission))
    return submission, banks / "bank_fan_section_00.npz"


@pytest.mark.parametrize("option,target", [("--out", "clip"), ("--html", "clip"), ("--out", "bank")])
def test_report_output_never_overwrites_a_data_clip_or_bank(option: str, target: str, fan: dict[str, Path],
                                                           synth_root: Path, tmp_path: Path) -> None:  # fmt: skip
    """The clips under --data (their names are the ground truth) and the banks under --banks are
    inputs of the report as much as the score files: writing the report over one destroys it."""
    submission, bank = _fan_submission(fan, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(synth_root / "fan", data / "fan")
    victim = bank if target == "bank" else sorted((data / "fan" / "test").glob("*.wav"))[0]
    before = victim.read_bytes()
    result = _asd("report", submission, "--data", data, "--banks", bank.parent, option, victim, "--format", "csv")
    assert victim.read_bytes() == before, f"{option} overwrote {victim.name}"
    _assert_error(result, str(victim))


def test_failed_report_writes_no_ground_truth(fan: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    submission, _ = _fan_submission(fan, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(synth_root / "bearing", data / "bearing")  # no ground truth for the submission's fan
    out = tmp_path / "gt"
    _assert_error(_asd("report", submission, "--data", data, "--ground-truth-out", out), "fan section 00")
    assert not out.exists()


def test_score_decisions_never_overwrite_a_clip_found_in_a_folder(fan: dict[str, Path], synth_root: Path,
                                                                 tiny_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    """`asd embed --out` already refuses a clip found in an input folder; `score --decisions` must too."""
    test = tmp_path / "fan" / "test"
    shutil.copytree(synth_root / "fan" / "test", test)
    victim = sorted(test.glob("*.wav"))[0]
    before = victim.read_bytes()
    result = _asd("score", "--bank", fan["bank"], test, "--decisions", victim, "--checkpoint", tiny_checkpoint,
                  "--device", "cpu")  # fmt: skip
    assert victim.read_bytes() == before, "--decisions overwrote a scored clip"
    _assert_error(result, "--decisions")


@pytest.mark.parametrize("option", ["--windows", "--plot"])
def test_window_outputs_never_overwrite_a_clip_found_in_a_folder(option: str, fan: dict[str, Path], synth_root: Path,
                                                                 tiny_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    test = tmp_path / "fan" / "test"
    shutil.copytree(synth_root / "fan" / "test", test)
    victim = sorted(test.glob("*.wav"))[0]
    before = victim.read_bytes()
    result = _asd("score", "--bank", fan["bank"], test, "--window", 1, option, victim, "--checkpoint", tiny_checkpoint,
                  "--device", "cpu")  # fmt: skip
    assert victim.read_bytes() == before, f"{option} overwrote a scored clip"
    _assert_error(result, option, str(victim))
