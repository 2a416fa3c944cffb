"""Adversarial cases of a third tester pass, driven through the real CLI.

Each test states the promised behaviour. Those still failing are marked ``xfail(strict=True)``:
when a fix lands the test passes, the strict xfail turns red, and the marker is removed. Tiny
random BEATs, 1 s clips.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    """A folder of banks (fan, gearbox, bearing; section 00) from the tiny BEATs."""
    root = tmp_path_factory.mktemp("attack3")
    train = root / "train.npz"
    folders = [synth_root / m / "train" for m in ("fan", "gearbox", "bearing")]
    _assert_ok(_asd("embed", *folders, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu",
                    "--out", train))  # fmt: skip
    _assert_ok(_asd("fit-bank", train, "--out-dir", root / "banks"))
    return root / "banks"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    """An `asd run --no-finetune` folder (seed recipe) on the tiny dataset."""
    out = tmp_path_factory.mktemp("attack3_run") / "run"
    _assert_ok(_asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--no-finetune", "--seconds", 1,
                    "--device", "cpu", "--out", out))  # fmt: skip
    return out


def _test_clip(synth_root: Path, machine: str, pattern: str = "section_00_*_normal_*.wav") -> Path:
    return sorted((synth_root / machine / "test").glob(pattern))[0]


# ------------------------------------------------------------------------------------ asd watch


@pytest.mark.parametrize("poll", ["inf", "1e300"])
def test_watch_infinite_poll_is_one_error_line(poll: str, banks: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    _assert_error(_asd("watch", incoming, "--banks", banks, "--poll", poll), "--poll")


@pytest.mark.parametrize("timeout", ["inf", "1e300"])
def test_watch_infinite_command_timeout_is_one_error_line(
    timeout: str, banks: Path, synth_root: Path, tmp_path: Path
) -> None:
    always = tmp_path / "always.npz"  # threshold at a tiny quantile: every file is an anomaly
    train = banks.parent / "train.npz"
    _assert_ok(_asd("fit-bank", train, "--machine", "fan", "--threshold-quantile", 1e-9, "--out", always))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(_test_clip(synth_root, "fan"), incoming)
    result = _asd("watch", incoming, "--bank", always, "--once", "--device", "cpu", "--on-anomaly", "true",
                  "--command-timeout", timeout)  # fmt: skip
    _assert_error(result, "--command-timeout")


def test_watch_single_bank_folder_does_not_score_other_machines_or_sections(
    banks: Path, synth_root: Path, tmp_path: Path
) -> None:
    """`asd score --bank fan.npz gearbox/...wav` refuses the clip; a banks folder that happens to hold
    only the fan bank must not score a gearbox/ file or a section_01 file against it either."""
    only_fan = tmp_path / "banks"
    only_fan.mkdir()
    shutil.copy(banks / "bank_fan_section_00.npz", only_fan)
    incoming = tmp_path / "incoming"
    (incoming / "gearbox").mkdir(parents=True)
    (incoming / "fan").mkdir()
    gearbox = _test_clip(synth_root, "gearbox")
    shutil.copy(gearbox, incoming / "gearbox" / gearbox.name)
    fan = _test_clip(synth_root, "fan")
    other_section = fan.name.replace("section_00", "section_01")
    shutil.copy(fan, incoming / "fan" / other_section)
    log = tmp_path / "log.csv"
    result = _asd("watch", incoming, "--banks", only_fan, "--once", "--device", "cpu", "--log", log)
    assert result.exit_code in (0, 1), result.output
    logged = log.read_text(encoding="utf-8") if log.exists() else ""
    assert gearbox.name not in logged, "a gearbox file was scored against the fan bank"
    assert other_section not in logged, "a section 01 file was scored against the section 00 bank"


# ------------------------------------------------------------------------------------ asd enrol


@pytest.mark.parametrize("victim", ["clip", "clip-in-folder", "train"])
def test_enrol_out_never_overwrites_an_input(
    victim: str, banks: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`asd embed --out` and `asd score --decisions` refuse an input; `asd enrol --out` must too."""
    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    for clip in sorted((synth_root / "fan" / "test").glob("section_00_target_test_normal_*.wav")):
        shutil.copy(clip, folder / clip.name)
    clip = sorted(folder.glob("*.wav"))[0]
    train = tmp_path / "train.npz"
    shutil.copy(banks.parent / "train.npz", train)
    args: tuple[object, ...] = (banks / "bank_fan_section_00.npz",)
    if victim == "clip":
        args += (clip, "--out", clip)
    elif victim == "clip-in-folder":
        args += (folder, "--out", clip)
    else:
        args += (clip, "--restandardize", "--train", train, "--out", train)
    target = train if victim == "train" else clip
    before = target.read_bytes()
    result = _asd("enrol", *args, "--domain", "target", "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert target.read_bytes() == before, f"enrol --out overwrote its input {target.name}"
    _assert_error(result, "--out")


# ---------------------------------------------------------------------------------- asd package


def _jsonl_scores(run: Path) -> None:
    path = run / "submission" / "anomaly_score_fan_section_00_test.csv"
    bank = run / "banks" / "bank_fan_section_00.npz"
    result = _asd("score", "--bank", bank, "--embeddings", run / "embeddings" / "test.npz", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    path.write_text(result.stdout, encoding="utf-8")


def _header_scores(run: Path) -> None:
    path = run / "submission" / "anomaly_score_fan_section_00_test.csv"
    path.write_text("filename,score\n" + path.read_text(encoding="utf-8"), encoding="utf-8")


@pytest.mark.parametrize("edit", [_jsonl_scores, _header_scores], ids=["jsonl", "header"])
def test_package_uploads_plain_headerless_csv(edit: object, run_dir: Path, tmp_path: Path) -> None:
    """The challenge's score files are 'filename,score' rows without a header; a submission file in
    another form is refused or rewritten, never packed as it is."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    edit(run)  # type: ignore[operator]
    out = tmp_path / "pkg"
    result = _asd("package", run, "--team", "Doe_X", "--out", out)
    if result.exit_code != 0:
        _assert_error(result, "anomaly_score_fan_section_00_test.csv")
        return
    with zipfile.ZipFile(out / "Doe_X_task2_1.zip") as archive:
        text = archive.read("task2/Doe_X_task2_1/anomaly_score_fan_section_00_test.csv").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows and all(len(r) == 2 for r in rows), text[:200]
    assert rows[0][0] != "filename", "the upload starts with a header line"
    assert all(math.isfinite(float(r[1])) for r in rows), text[:200]


# ------------------------------------------------------------------------------------- asd fuse


def test_fuse_never_writes_a_non_finite_score(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    path = run / "submission" / "anomaly_score_fan_section_00_test.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].rsplit(",", 1)[0] + ",1e308"  # finite, so every reader accepts it
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "fused"
    result = _asd("fuse", run, run_dir, "--out", out)
    if result.exit_code != 0:
        _assert_error(result)
        return
    for score_file in out.glob("anomaly_score_*.csv"):
        for name, value in csv.reader(io.StringIO(score_file.read_text(encoding="utf-8"))):
            assert math.isfinite(float(value)), f"{score_file.name}: {name} has score {value}"


# ------------------------------------------------------------------------- seeds and learning rates


@pytest.mark.parametrize("command", ["finetune", "run", "demo"])
@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_out_of_range_seed_is_one_error_line(
    command: str, seed: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`asd fit-bank --seed -1` is already one error line; the training seeds must be too."""
    out = tmp_path / "out"
    if command == "demo":
        args: tuple[object, ...] = ("demo", "--out", out, "--seconds", 1, "--epochs", 1)
    else:
        args = (command, synth_root, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--epochs", 1,
                "--device", "cpu", "--out", out)  # fmt: skip
    _assert_error(_asd(*args, "--seed", seed), "--seed")


def test_lr_beyond_float32_is_one_error_line(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    result = _asd("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--epochs", 1,
                  "--batch-size", 12, "--lora-rank", 2, "--embedding-dim", 8, "--device", "cpu", "--lr", "1e39",
                  "--out", out)  # fmt: skip
    _assert_error(result, "--lr")


# ------------------------------------------------------------------- file names that are not UTF-8


def _non_utf8_clip(synth_root: Path, folder: Path) -> bytes:
    folder.mkdir(parents=True)
    raw = b"section_00_source_test_normal_0099_\xff\xfe.wav"
    with open(os.path.join(os.fsencode(folder), raw), "wb") as f:
        f.write(_test_clip(synth_root, "fan").read_bytes())
    return raw


@pytest.mark.parametrize("command", ["score", "embed", "watch"])
def test_windowed_paths_read_a_file_name_that_is_not_utf8(
    command: str, banks: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming" / "fan" / "test"
    raw = _non_utf8_clip(synth_root, folder)
    bank = banks / "bank_fan_section_00.npz"
    if command == "score":
        result = _asd("score", "--bank", bank, folder, "--window", 1, "--device", "cpu")
        _assert_ok(result)
        assert result.stdout_bytes.startswith(raw + b",")
    elif command == "embed":
        out = tmp_path / "windows.npz"
        _assert_ok(_asd("embed", folder, "--window", 1, "--checkpoint", tiny_checkpoint, "--seconds", 1,
                        "--device", "cpu", "--out", out))  # fmt: skip
        assert out.is_file()
    else:
        log = tmp_path / "log.csv"
        _assert_ok(_asd("watch", tmp_path / "incoming", "--bank", bank, "--once", "--device", "cpu", "--log", log))
        assert raw in log.read_bytes()


# ------------------------------------------------------------------------------ asd demo --make-data


@pytest.mark.parametrize("marker", ["earlier-dataset", "foreign-marker"])
def test_make_data_never_deletes_a_clip_it_did_not_write(marker: str, synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    if marker == "earlier-dataset":
        _assert_ok(_asd("demo", "--make-data", root, "--seconds", 1))
    else:
        root.mkdir()
        (root / "asd-synth.json").write_text('{"mine": true}\n', encoding="utf-8")
    mine = [root / "fan" / "test" / "my_own_recording.wav", root / "pump" / "train" / "section_00_real.wav"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_test_clip(synth_root, "fan"), path)
    result = _asd("demo", "--make-data", root, "--seconds", 1)
    assert all(path.is_file() for path in mine), "make-data deleted the user's clips"
    if result.exit_code != 0:
        _assert_error(result, str(root))


# ------------------------------------------------------------------------------------ asd score


@pytest.mark.parametrize("how", ["clip", "embeddings"])
def test_scoring_a_clip_of_the_bank_itself_is_not_a_silent_zero(
    how: str, banks: Path, synth_root: Path, tmp_path: Path
) -> None:
    bank = banks / "bank_fan_section_00.npz"
    if how == "clip":
        clip = sorted((synth_root / "fan" / "train").glob("*.wav"))[0]
        result = _asd("score", "--bank", bank, clip, "--device", "cpu")
    else:
        result = _asd("score", "--bank", bank, "--embeddings", banks.parent / "train.npz", "--all")
    if result.exit_code != 0:
        _assert_error(result, "bank")
        return
    assert "bank" in result.stderr, "scores of the bank's own clips (0 distance) came without a word"


# --------------------------------------------------------------------------------- asd fit-bank


def test_fit_bank_refuses_a_clip_embedded_twice(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`asd score` already refuses embeddings holding one clip twice; the bank's threshold would be 0."""
    folders = []
    for copy in ("a", "b"):
        folder = tmp_path / copy / "fan" / "train"
        shutil.copytree(synth_root / "fan" / "train", folder)
        folders.append(folder)
    train = tmp_path / "train.npz"
    _assert_ok(_asd("embed", *folders, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu",
                    "--out", train))  # fmt: skip
    out = tmp_path / "bank.npz"
    _assert_error(_asd("fit-bank", train, "--out", out), "twice")
    assert not out.exists()


@pytest.fixture(scope="module")
def density_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("attack3_density") / "run"
    _assert_ok(_asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--no-finetune", "--seconds", 1,
                    "--device", "cpu", "--recipe", "density", "--out", out))  # fmt: skip
    return out


def test_fuse_of_a_near_constant_leave_one_out_is_not_blown_up(
    run_dir: Path, density_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fused"
    result = _asd("fuse", run_dir, density_run, "--out", out)
    if result.exit_code != 0:
        _assert_error(result, "spread")
        return
    for score_file in out.glob("anomaly_score_*.csv"):
        for name, value in csv.reader(io.StringIO(score_file.read_text(encoding="utf-8"))):
            assert abs(float(value)) < 1e3, f"{score_file.name}: {name} has fused z-score {value}"


def test_two_watchers_on_one_log_score_each_file_once(banks: Path, synth_root: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    (incoming / "fan").mkdir(parents=True)
    log = tmp_path / "log.csv"
    cmd = [sys.executable, "-m", "asdcli", "watch", str(incoming), "--banks", str(banks), "--log", str(log),
           "--poll", "0.3", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    watchers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(5)  # both have opened the log (or the second has stopped)
        clips = sorted((synth_root / "fan" / "test").glob("*.wav"))[:3]
        for clip in clips:
            shutil.copy(clip, incoming / "fan" / clip.name)
        deadline = time.monotonic() + 120  # scoring's own time: the start-up may have used most of the first
        while time.monotonic() < deadline:
            rows = log.read_text(encoding="utf-8").splitlines()[1:]
            if len(rows) >= 2 * len(clips) or (len(rows) >= len(clips) and any(w.poll() is not None for w in watchers)):
                break
            time.sleep(0.3)
        time.sleep(2)
    finally:
        for w in watchers:
            w.terminate()
            w.wait(timeout=30)
    names = [row.split(",")[1] for row in log.read_text(encoding="utf-8").splitlines()[1:]]
    assert len(names) == len(set(names)) == len(clips), names


# ------------------------------------------------------------- outputs over the model files


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("attack3_adapter") / "ft"
    _assert_ok(_asd("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--epochs", 1,
                    "--seconds", 1, "--batch-size", 12, "--lora-rank", 2, "--embedding-dim", 8,
                    "--device", "cpu", "--val-fraction", 0))  # fmt: skip
    return out


MODEL_VICTIMS = [
    pytest.param("embed", "checkpoint", id="embed-out-is-the-checkpoint"),
    pytest.param("embed", "onnx", id="embed-out-is-the-onnx-model"),
    pytest.param("embed", "head", id="embed-out-is-the-adapter-head"),
    pytest.param("score", "checkpoint", id="score-decisions-is-the-checkpoint"),
    pytest.param("export", "checkpoint", id="export-out-is-the-checkpoint"),
    pytest.param("export", "adapter", id="export-out-is-the-adapter-weights"),
]


@pytest.mark.parametrize("command,victim", MODEL_VICTIMS)
def test_outputs_never_overwrite_the_model_files(
    command: str, victim: str, banks: Path, adapter: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """README: an output that is one of the inputs is an error and the input is untouched; the
    checkpoint, the adapter run's files and an ONNX model are inputs as much as the clips."""
    if command == "export" or victim == "onnx":
        pytest.importorskip("onnxruntime")
    checkpoint = tmp_path / "beats.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    run = tmp_path / "ft"
    shutil.copytree(adapter, run)
    clips = synth_root / "fan" / "test"
    frozen = ("--checkpoint", checkpoint, "--seconds", 1, "--device", "cpu")
    onnx = tmp_path / "model.onnx"
    if victim == "onnx":
        _assert_ok(_asd("export", "--checkpoint", checkpoint, "--seconds", 1, "--out", onnx))
    target = {"checkpoint": checkpoint, "onnx": onnx, "head": run / "head.safetensors",
              "adapter": run / "adapter" / "adapter_model.safetensors"}[victim]  # fmt: skip
    if command == "embed" and victim == "onnx":
        args: tuple[object, ...] = ("embed", clips, "--onnx", onnx, "--seconds", 1, "--out", target)
    elif command == "embed" and victim == "head":
        args = ("embed", clips, "--adapter", run, "--checkpoint", checkpoint, "--seconds", 1, "--device", "cpu",
                "--out", target)  # fmt: skip
    elif command == "embed":
        args = ("embed", clips, *frozen, "--out", target)
    elif command == "score":
        args = ("score", "--bank", banks / "bank_fan_section_00.npz", clips, "--checkpoint", checkpoint,
                "--device", "cpu", "--decisions", target)  # fmt: skip
    elif victim == "adapter":
        args = ("export", "--adapter", run, "--checkpoint", checkpoint, "--seconds", 1, "--out", target)
    else:
        args = ("export", "--checkpoint", checkpoint, "--seconds", 1, "--out", target)
    before = target.read_bytes()
    result = _asd(*args)
    assert target.read_bytes() == before, f"asd {command} overwrote {target.name}"
    _assert_error(result, str(target))


def test_watch_log_that_is_a_folder_is_one_error_line(banks: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    folder = tmp_path / "logs"
    folder.mkdir()
    _assert_error(_asd("watch", incoming, "--banks", banks, "--once", "--log", folder), "--log")


@pytest.mark.parametrize("option", [("--window", "nan"), ("--hop", "0"), ("--window", "0.1")])
def test_watch_checks_window_options_at_start(option: tuple[str, str], banks: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    _assert_error(_asd("watch", incoming, "--banks", banks, "--once", *option), option[0])


def test_enrol_domain_that_contradicts_the_clip_name_is_flagged(
    banks: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    clip = _test_clip(synth_root, "fan", "section_00_target_test_normal_*.wav")
    out = tmp_path / "v2.npz"
    result = _asd("enrol", banks / "bank_fan_section_00.npz", clip, "--domain", "source", "--out", out,
                  "--checkpoint", tiny_checkpoint, "--device", "cpu")  # fmt: skip
    if result.exit_code != 0:
        _assert_error(result, "target")
        assert not out.exists()
        return
    notes = [line for line in result.stderr.splitlines() if not line.startswith("fan section 00: enrolled")]
    assert any("target" in line for line in notes), result.stderr
