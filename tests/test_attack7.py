"""Adversarial cases of a seventh tester pass, through the real CLI: clips that the dataset layout
does not read (beside machine folders, in sub-folders of a loose folder, in another audio format),
the same audio enrolled twice, the mode of a submission folder, two fine-tunings on one folder.

Each test states the promised behaviour. Those still failing are marked ``xfail(strict=True)``.
Tiny random BEATs, 1 s clips.
"""

from __future__ import annotations

import csv
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok
from tolerances import fp32_tiny_model_atol

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _embed(inputs: list[Path], out: Path, checkpoint: Path, *extra: object) -> object:
    return _asd("embed", *inputs, "--out", out, "--checkpoint", checkpoint, "--seconds", 1, "--device", "cpu", *extra)


@pytest.fixture(scope="module")
def fan(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fan train and test embeddings, the fan section 00 bank and a banks folder holding it."""
    folder = tmp_path_factory.mktemp("attack7-fan")
    for split in ("train", "test"):
        _assert_ok(_embed([synth_root / "fan" / split], folder / f"{split}.npz", tiny_checkpoint))
    _assert_ok(_asd("fit-bank", folder / "train.npz", "--out-dir", folder / "banks"))
    banks = folder / "banks"
    return {"train": folder / "train.npz", "test": folder / "test.npz", "banks": banks,
            "bank": banks / "bank_fan_section_00.npz"}  # fmt: skip


# ------------------------------------------------------------------------- clips dropped without a word


def _dataset(synth_root: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(synth_root / "fan", data / "fan")
    return data


def _some_clip(synth_root: Path) -> Path:
    return sorted((synth_root / "gearbox" / "test").glob("*.wav"))[0]


@pytest.mark.parametrize("where", ["flat machine folder", "loose file in the root", "official root"])
def test_audio_beside_the_machine_folders_is_an_error_not_dropped(
    where: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`DATA/valve/*.wav` (a machine unzipped without its train/test folders) or a clip left in
    DATA itself was skipped without a word when other machines were found: every output silently
    lacked those clips."""
    data = _dataset(synth_root, tmp_path)
    clip = _some_clip(synth_root)
    if where == "flat machine folder":
        stray = data / "gearbox" / clip.name
    elif where == "loose file in the root":
        stray = data / clip.name
    else:  # ROOT/dev_data/raw/<machine>/..., with a clip in raw/
        data = tmp_path / "official"
        shutil.copytree(synth_root / "fan", data / "dev_data" / "raw" / "fan")
        stray = data / "dev_data" / "raw" / clip.name
    stray.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, stray)
    out = tmp_path / "emb.npz"
    _assert_error(_embed([data], out, tiny_checkpoint), str(stray.parent), stray.name)
    assert not out.exists()


def test_audio_in_sub_folders_of_a_loose_folder_is_an_error_not_dropped(
    fan: dict[str, Path], synth_root: Path, tmp_path: Path
) -> None:
    """`asd score --bank B recordings/` with recordings/x.wav and recordings/2026-11/y.wav scored
    x and silently dropped y (a loose folder is read one level deep)."""
    folder = tmp_path / "recordings"
    (folder / "2026-11").mkdir(parents=True)
    clips = sorted((synth_root / "fan" / "test").glob("*.wav"))
    shutil.copy(clips[0], folder / clips[0].name)
    shutil.copy(clips[1], folder / "2026-11" / clips[1].name)
    _assert_error(_asd("score", "--bank", fan["bank"], folder), str(folder / "2026-11"), clips[1].name)


@pytest.mark.parametrize("suffix", [".ogg", ".mp3", ".aiff"])
def test_audio_of_another_format_in_a_split_folder_is_an_error_not_dropped(
    suffix: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """soundfile reads OGG, MP3 and AIFF, but the layout reads only .wav and .flac: a test clip
    converted to OGG beside the WAV ones was skipped without a word."""
    data = _dataset(synth_root, tmp_path)
    clip = sorted((data / "fan" / "test").glob("*.wav"))[0]
    wave, rate = sf.read(str(clip))
    other = clip.with_suffix(suffix)
    sf.write(str(other), wave, rate)
    clip.unlink()
    out = tmp_path / "emb.npz"
    for given in (data, data / "fan", data / "fan" / "test"):
        _assert_error(_embed([given], out, tiny_checkpoint), other.name, ".wav")
    assert not out.exists()


# ------------------------------------------------------------------------- silent wrong thresholds


@pytest.mark.parametrize("how", ["copy of a bank clip", "two copies of a new clip"])
def test_enrol_refuses_the_same_audio_twice(how: str, fan: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    """`asd fit-bank` refuses an embedding that is in the train rows twice (its leave-one-out
    distance, and so the threshold, would be 0); `asd enrol` of the same audio under a new name
    put the very same vector into the bank a second time and refitted the threshold on it."""
    new = tmp_path / "new"
    new.mkdir()
    if how == "copy of a bank clip":
        source = sorted((synth_root / "fan" / "train").glob("*_target_*.wav"))[0]
        names = [source.name, "section_00_target_train_normal_0900_copy.wav"]
        shutil.copy(source, new / names[1])
    else:
        source = sorted((synth_root / "fan" / "supplemental").glob("*_machine_*.wav"))[0]
        names = ["section_00_target_train_normal_0901_a.wav", "section_00_target_train_normal_0902_b.wav"]
        for name in names:
            shutil.copy(source, new / name)
    out = tmp_path / "enrolled.npz"
    _assert_error(_asd("enrol", fan["bank"], new, "--domain", "target", "--out", out), "the same audio", *names)
    assert not out.exists()


# ------------------------------------------------------------------------- outputs


def _new_folder_mode(parent: Path) -> int:
    probe = parent / "probe"
    probe.mkdir()
    mode = probe.stat().st_mode & 0o777
    probe.rmdir()
    return mode


def test_submission_folder_has_the_mode_of_a_new_folder(fan: dict[str, Path], tmp_path: Path) -> None:
    """Every file asdcli writes gets the mode `open()` would give it (0o666 less the umask); the
    submission folder was built with tempfile.mkdtemp and renamed into place, so it was 0o700:
    a colleague, the group or a web server could not read the challenge folder."""
    out = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", fan["banks"], "--embeddings", fan["test"], "--submission-dir", out))
    assert out.stat().st_mode & 0o777 == _new_folder_mode(tmp_path)


def test_a_second_finetune_on_a_folder_in_use_is_an_error(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Two `asd finetune` on one --out (the default runs/finetune, from two terminals) both
    passed the 'already holds a run' check and then wrote the adapter, head, run.json and resume
    state over each other: the folder could end up with one run's adapter and the other's head.
    A second one while the first runs is an error, as for `asd run` and `asd watch`."""
    out = tmp_path / "ft"
    args = ("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--seconds", 1,
            "--batch-size", 12, "--lora-rank", 2, "--embedding-dim", 8, "--device", "cpu", "--val-fraction", 0)  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "asdcli", *map(str, args), "--epochs", "100000"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        assert first.stderr is not None
        for line in first.stderr:  # the folder is taken once training starts
            if line.startswith("Fine-tuning on ") or time.monotonic() > deadline:
                break
        assert first.poll() is None, "the first fine-tuning stopped early"
        first.send_signal(signal.SIGSTOP)  # it holds the folder, but leaves the CPUs to the second one
        _assert_error(_asd(*args, "--epochs", 1), str(out), str(first.pid))
    finally:
        first.kill()
        first.wait()


def test_watch_says_it_skips_audio_of_another_format(fan: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    """`asd watch` scores every audio file under its folder: an OGG file from the recorder was
    never scored and never mentioned."""
    incoming = tmp_path / "incoming"
    (incoming / "fan").mkdir(parents=True)
    clip = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    wave, rate = sf.read(str(clip))
    sf.write(str(incoming / "fan" / clip.with_suffix(".ogg").name), wave, rate)
    result = _asd("watch", incoming, "--banks", fan["banks"], "--once", "--poll", 0.1)
    assert result.exit_code == 0, result.output
    assert f"Warning: Skipped fan/{clip.with_suffix('.ogg').name}: asdcli reads .wav and .flac" in result.stderr


# ------------------------------------------------------------------------- asd run with --full-finetune


def _run_args(synth_root: Path, tiny_checkpoint: Path, run: Path) -> tuple[object, ...]:
    return ("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", run, "--seconds", 1, "--epochs", 1,
            "--batch-size", 12, "--embedding-dim", 8, "--val-fraction", 0, "--device", "cpu")  # fmt: skip


@pytest.fixture(scope="module")
def full_run(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `asd run --full-finetune` folder (1 epoch); copy it before changing it."""
    run = tmp_path_factory.mktemp("attack7-full") / "full"
    _assert_ok(_asd(*_run_args(synth_root, tiny_checkpoint, run), "--full-finetune"))
    return run


def test_run_full_finetune_finishes_and_a_switch_to_lora_leaves_no_stale_backbone(
    full_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`asd run` takes every fine-tuning option, --full-finetune included; its fine-tuning stage
    listed the LoRA adapter files as its outputs, so every such run ended in a traceback after
    training (and again on each re-run). Redoing the stage as LoRA removed fine-tuning's files but
    not backbone.safetensors, and a run folder holding one is read as a full fine-tuning."""
    assert (full_run / "finetune" / "backbone.safetensors").is_file() and (full_run / "report.csv").is_file()
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    args = _run_args(synth_root, tiny_checkpoint, run)
    again = _asd(*args, "--full-finetune")
    _assert_ok(again)
    assert "finetune: up to date, skipped" in again.stderr
    _assert_ok(_asd(*args, "--lora-rank", 2))
    assert sorted(p.name for p in (run / "finetune").iterdir()) == ["adapter", "head.safetensors", "run.json", "state"]


def _report_name(run: Path, data: Path) -> str:
    result = _asd("report", run, "--data", data, "--format", "csv")
    _assert_ok(result)
    return {row[0] for row in list(csv.reader(io.StringIO(result.stdout)))[1:]}.pop()


def test_report_names_a_run_by_the_front_end_of_its_banks(
    full_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A run's default report name says how its embeddings were made: a full fine-tuning was
    named `(LoRA, machine labels)`, and so was a `--no-finetune` run in a folder that still holds
    an earlier fine-tuning (its finetune/ is kept), whose banks are of frozen BEATs."""
    assert _report_name(full_run, synth_root) == "full (full fine-tuning, machine labels)"
    run = tmp_path / "full"
    shutil.copytree(full_run, run)
    _assert_ok(_asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", run, "--seconds", 1,
                    "--no-finetune", "--device", "cpu"))  # fmt: skip
    assert (run / "finetune" / "run.json").is_file()
    assert _report_name(run, synth_root) == "full (frozen BEATs)"


def test_watch_never_passes_a_file_name_as_an_option_of_the_alarm_command(
    fan: dict[str, Path], synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`asd watch . --on-anomaly CMD`: a file `-d.wav` in the watched folder was passed to CMD as
    `-d.wav`, an option (`ls -d.wav`: invalid option), so the alarm never named the file."""
    arrays = dict(np.load(fan["bank"], allow_pickle=False))
    arrays["threshold"] = np.asarray(-1.0)  # every file is anomalous: one alarm per file
    bank = tmp_path / "bank.npz"
    np.savez(bank, **arrays)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(sorted((synth_root / "fan" / "test").glob("*.wav"))[0], incoming / "-d.wav")
    record, script = tmp_path / "argv.txt", tmp_path / "record.py"
    script.write_text(f"import sys\nopen({str(record)!r}, 'a').write(repr(sys.argv[1:]))\n")
    monkeypatch.chdir(incoming)
    result = _asd("watch", ".", "--bank", bank, "--once", "--poll", 0.1, "--on-anomaly",
                  f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert record.read_text() == repr([os.path.join(os.curdir, "-d.wav")])


def test_run_says_it_rewrites_a_bank_enrolled_in_place(
    full_run: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """README: `asd enrol BANK CLIPS --out BANK` enrols in place; a bank replaced in RUN/banks makes
    the next `asd run` fit it again, so the enrolment was overwritten without a word."""
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    bank = run / "banks" / "bank_fan_section_00.npz"
    clip = sorted((synth_root / "fan" / "supplemental").glob("*_machine_*.wav"))[0]
    _assert_ok(_asd("enrol", bank, clip, "--domain", "target", "--out", bank))
    result = _asd(*_run_args(synth_root, tiny_checkpoint, run), "--full-finetune")
    _assert_ok(result)
    assert f"Notice: {bank} changed since this stage wrote it" in result.stderr.replace("\n", " ")


def test_enrol_in_place_never_loses_an_enrolment_written_meanwhile(
    fan: dict[str, Path], synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `asd enrol BANK ... --out BANK` at once (two new conditions, two operators): each read
    the bank, and the one that finished last replaced the other's enrolment without a word."""
    import asdcli.monitor.enrol

    bank = tmp_path / "bank.npz"
    shutil.copy(fan["bank"], bank)
    clips = sorted((synth_root / "fan" / "supplemental").glob("*_machine_*.wav"))[:1]
    original = asdcli.monitor.enrol.enrol

    def meanwhile(*args: object, **kwargs: object) -> object:
        grown = original(*args, **kwargs)  # type: ignore[arg-type]
        shutil.copy(fan["bank"], bank)  # the other enrolment's bank lands first
        os.utime(bank, ns=(1, 1))
        return grown

    monkeypatch.setattr(asdcli.monitor.enrol, "enrol", meanwhile)
    _assert_error(_asd("enrol", bank, *clips, "--domain", "target", "--out", bank), str(bank), "changed while")
    assert bank.read_bytes() == fan["bank"].read_bytes()


@pytest.mark.parametrize(
    "args",
    [
        ("fit-bank", "{train}", "--out-dir", ""),
        ("fit-bank", "{train}", "--out-dir="),
        ("score", "--banks", "{banks}", "--embeddings", "{test}", "--submission-dir", ""),
        ("report", "{submission}", "--plots", ""),
        ("embed", "", "--out", "{out}"),
        ("run", "", "--no-finetune"),
    ],
    ids=[
        "fit-bank --out-dir",
        "fit-bank --out-dir=",
        "score --submission-dir",
        "report --plots",
        "embed DATA",
        "run DATA",
    ],
)
def test_an_empty_path_is_a_usage_error(
    args: tuple[str, ...], fan: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out-dir "$OUT"` with OUT unset is `Path("")`, the current folder: `asd fit-bank` and
    `asd report --plots` wrote into it, `asd score --submission-dir` failed with 'Cannot replace
    submission folder .: Device or resource busy', an empty DATA read the current folder."""
    submission = tmp_path / "submission"
    _assert_ok(_asd("score", "--banks", fan["banks"], "--embeddings", fan["test"], "--submission-dir", submission))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    names = {"train": fan["train"], "banks": fan["banks"], "test": fan["test"], "submission": submission,
             "out": tmp_path / "emb.npz"}  # fmt: skip
    result = _asd(*(a.format(**names) for a in args))
    assert result.exit_code == 2, result.output
    assert "is empty; give a path." in result.stderr and "Traceback" not in result.output
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------------- interrupted and resumed jobs


def test_a_damaged_saved_part_is_embedded_again_not_an_error_for_ever(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`asd embed` resumes from its saved parts (`.EMB.npz.parts-KEY/NNNNN.npz`); a part that
    cannot be read (a disk error, an asdcli of another schema) stopped every later run of the same
    command with 'Re-create it', naming a hidden file the user never made."""
    import asdcli.pipeline.cleanup

    out = tmp_path / "emb.npz"
    with monkeypatch.context() as patch:  # keep the parts of a finished job, as an interrupted one leaves them
        patch.setattr(asdcli.pipeline.cleanup, "remove_parts", lambda parts: 0)
        _assert_ok(_embed([synth_root / "fan" / "test"], out, tiny_checkpoint))
    want = dict(np.load(out, allow_pickle=False))["embeddings"]
    (part,) = tmp_path.glob(".emb.npz.parts-*/00000.npz")
    part.write_bytes(b"not an npz any more")
    out.unlink()
    _assert_ok(_embed([synth_root / "fan" / "test"], out, tiny_checkpoint))
    got = dict(np.load(out, allow_pickle=False))["embeddings"]
    np.testing.assert_allclose(got, want, rtol=0, atol=fp32_tiny_model_atol(want))
    assert not list(tmp_path.glob(".emb.npz.parts-*"))


@pytest.mark.parametrize("inside", ["submission", "submission/pkg", "banks"])
def test_package_out_inside_the_folders_it_reads_is_an_error(
    inside: str, full_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    """`asd package RUN --out RUN/submission` wrote task2/ and the zip among the score files: a
    later `asd run` that scores again then fails on the submission folder holding other files."""
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    out = run / inside
    result = _asd("package", run, "--team", "Doe_ACME", "--out", out, "--data", synth_root)
    _assert_error(result, f"--out {out}", "choose another --out")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_a_submission_folder_that_is_a_symlink_is_written_through(fan: dict[str, Path], tmp_path: Path) -> None:
    """`asd score --submission-dir latest` with `latest -> runs/2026-12-01/submission`: the folder
    swap replaced the user's link by a new folder and left the linked folder's old scores."""
    target, link = tmp_path / "store" / "submission", tmp_path / "latest"
    target.mkdir(parents=True)
    link.symlink_to(target, target_is_directory=True)
    _assert_ok(_asd("score", "--banks", fan["banks"], "--embeddings", fan["test"], "--submission-dir", link))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert sorted(p.name for p in target.iterdir()) == ["anomaly_score_fan_section_00_test.csv",
                                                        "decision_result_fan_section_00_test.csv"]  # fmt: skip
    assert sorted(p.name for p in target.parent.iterdir()) == ["submission"]


@pytest.mark.parametrize("command", ["embed", "enrol in place"])
def test_an_output_that_is_a_symlink_is_written_through(
    command: str, fan: dict[str, Path], synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`current.npz -> bank_v3.npz`, then `asd enrol current.npz ... --out current.npz`: the
    atomic rename replaced the user's link by a file, and bank_v3.npz (what `asd watch --bank`
    reads) stayed the old bank. An output link is written through; it stays a link."""
    target, link = tmp_path / "store" / "v3.npz", tmp_path / "current.npz"
    target.parent.mkdir()
    shutil.copy(fan["bank"], target)
    link.symlink_to(target)
    clip = sorted((synth_root / "fan" / "supplemental").glob("*_machine_*.wav"))[0]
    if command == "embed":
        _assert_ok(_embed([clip], link, tiny_checkpoint))
    else:
        _assert_ok(_asd("enrol", link, clip, "--domain", "target", "--out", link))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_bytes() != fan["bank"].read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["v3.npz"]


@pytest.mark.slow  # an export traces and verifies the model: ~20 s on 2 busy cores
def test_export_out_that_is_a_symlink_is_written_through(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`asd export --out current.onnx` with `current.onnx -> models/v3.onnx` replaced the link."""
    pytest.importorskip("onnxruntime")
    target, link = tmp_path / "models" / "v3.onnx", tmp_path / "current.onnx"
    target.parent.mkdir()
    target.write_bytes(b"an older model")
    link.symlink_to(target)
    _assert_ok(_asd("export", "--out", link, "--checkpoint", tiny_checkpoint, "--seconds", 1))
    assert link.is_symlink() and target.read_bytes() != b"an older model"
    assert sorted(p.name for p in target.parent.iterdir()) == ["v3.onnx"]
