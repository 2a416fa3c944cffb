"""Adversarial cases of a sixth tester pass: memory-mapped checkpoints changed under a running
command, the fast process exit of the `asd` entry point (`python -m asdcli` as a subprocess),
and artifacts that do not belong together; through the real CLI where the user meets them.

Each test states the promised behaviour. Those still failing are marked ``xfail(strict=True)``:
when a fix lands the test passes, the strict xfail turns red, and the marker is removed. Tiny
random BEATs, 1 s clips.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok
from conftest import TINY_SYNTH

from asdcli.artifacts import sha256_file
from asdcli.frontend.beats.checkpoint import load_beats, make_tiny_checkpoint
from asdcli.synth.dataset import make_dataset

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=timeout)


# ------------------------------------------------------------------------- load_beats: mapped files


def test_a_checkpoint_overwritten_in_place_after_loading_leaves_the_model_unchanged(tmp_path: Path) -> None:
    """`cp other.pt ckpt.pt` or `curl -o ckpt.pt` rewrites the file in place (same inode) while
    `asd watch` or a long `asd run` holds the model: its weights must stay the ones loaded (and
    hashed), not silently become the new file's where the mapping was not yet copied."""
    path = make_tiny_checkpoint(tmp_path / "ckpt.pt", seed=0)
    other = make_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    loaded = load_beats(path)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with open(path, "r+b") as f:  # same size, same layout, other values
        f.write(other.read_bytes())
    after = loaded.model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_a_checkpoint_truncated_after_loading_does_not_crash_the_process(tmp_path: Path) -> None:
    """A checkpoint truncated in place (a download restarted over it) while a command runs must not
    kill the process with SIGBUS (no `Error:` line, temp files left) when it next uses a weight."""
    path = make_tiny_checkpoint(tmp_path / "ckpt.pt", seed=0)
    code = (
        "import torch\n"
        "from asdcli.frontend.beats.checkpoint import load_beats\n"
        f"loaded = load_beats({str(path)!r})\n"
        f"open({str(path)!r}, 'r+b').truncate(100)\n"
        "print(sum(float(v.float().sum()) for v in loaded.model.state_dict().values()) == "
        "sum(float(v.float().sum()) for v in loaded.model.state_dict().values()))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", (proc.returncode, proc.stderr[-2000:])


def test_full_finetune_never_modifies_the_checkpoint_file(synth_root: Path, tmp_path: Path) -> None:
    """--full-finetune trains every backbone weight in place: the mapped checkpoint's pages must be
    private copies, never written back to the user's file."""
    path = make_tiny_checkpoint(tmp_path / "ckpt.pt", seed=0)
    digest = sha256_file(path)
    result = _asd("finetune", synth_root, "--checkpoint", path, "--full-finetune", "--epochs", 1, "--seconds", 1,
                  "--batch-size", 8, "--device", "cpu", "--out", tmp_path / "ft")  # fmt: skip
    _assert_ok(result)
    assert sha256_file(path) == digest
    assert load_beats(path).sha256 == digest


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_a_checkpoint_with_a_sparse_or_meta_tensor_is_one_error_line(
    kind: str, synth_root: Path, tmp_path: Path
) -> None:
    """A converted or pruned checkpoint may hold a sparse tensor, or a meta one (no values: saved
    from a model never materialized): one `Error:` line naming the file and the key, not a
    NotImplementedError traceback from the finite check."""
    path = make_tiny_checkpoint(tmp_path / "ckpt.pt", seed=0)
    raw = torch.load(path, weights_only=True)
    key = next(k for k, v in raw["model"].items() if v.dim() == 2)
    value = raw["model"][key]
    raw["model"][key] = value.to_sparse() if kind == "sparse" else torch.empty_like(value, device="meta")
    bad = tmp_path / f"{kind}.pt"
    torch.save(raw, bad)
    out = tmp_path / "emb.npz"
    _assert_error(_asd("embed", synth_root / "fan" / "test", "--checkpoint", bad, "--out", out), str(bad), key)
    assert not out.exists()


# ------------------------------------------------------------------------- the fast process exit


def test_the_fast_exit_does_not_hang_on_an_idle_thread_pool() -> None:
    """A ThreadPoolExecutor left alive (a library's module-level pool) must not keep the process
    from ending: the interpreter's own exit wakes its idle workers before joining them."""
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from asdcli.cli.process_exit import exit_without_teardown\n"
        "POOL = ThreadPoolExecutor(2)\n"
        "print(POOL.submit(lambda: 42).result())\n"
        "exit_without_teardown(5)\n"
    )
    try:
        proc = _python(code, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("exit_without_teardown hung joining an idle ThreadPoolExecutor worker")
    assert proc.returncode == 5 and proc.stdout.strip() == "42"


def test_a_closed_stdout_is_not_a_traceback(fan_bank: dict[str, Path], synth_root: Path, tmp_path: Path) -> None:
    """`asd ... >&-` (stdout closed, as some daemons and cron setups start commands): Python then
    has no sys.stdout; the command must run (its data going nowhere, as print's would), not end in
    an AttributeError traceback. Checked for --version and a report table."""
    scores = _asd("score", "--bank", fan_bank["bank"], synth_root / "fan" / "test")
    _assert_ok(scores)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "anomaly_score_fan_section_00_test.csv").write_text(scores.stdout)
    for args in (["--version"], ["report", str(sub), "--data", str(synth_root), "--format", "csv"]):
        proc = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-m", "asdcli", *args],
                              capture_output=False, stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)  # fmt: skip
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])


# ------------------------------------------------------------------------- artifacts that do not belong together


@pytest.fixture(scope="module")
def fan_bank(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fan train embeddings and their bank, and the fan train embeddings of a second synthetic
    dataset (seed 1) whose clips have the same names but other audio."""
    folder = tmp_path_factory.mktemp("attack6-fan")
    other = folder / "other-data"
    make_dataset(other, dataclasses.replace(TINY_SYNTH, seed=1, machines=("fan",)))
    for name, root in (("train", synth_root), ("other", other)):
        _assert_ok(_asd("embed", root / "fan" / "train", "--out", folder / f"{name}.npz",
                        "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu"))  # fmt: skip
    _assert_ok(_asd("fit-bank", folder / "train.npz", "--out", folder / "bank.npz"))
    third = folder / "third-data"  # the new condition's clips: audio of neither dataset
    make_dataset(third, dataclasses.replace(TINY_SYNTH, seed=2, machines=("fan",)))
    new = folder / "new"
    new.mkdir()
    for clip in sorted((third / "fan" / "train").glob("*_target_*.wav"))[:2]:
        shutil.copy(clip, new / clip.name.replace("_normal_", "_normal_9"))
    return {"train": folder / "train.npz", "other": folder / "other.npz", "bank": folder / "bank.npz", "new": new}


def test_enrol_restandardize_refuses_train_embeddings_of_other_audio(fan_bank: dict[str, Path], tmp_path: Path) -> None:
    """`asd enrol --restandardize --train T`: DCASE names repeat across years and datasets, so T
    holding the bank's clip names is not enough; its vectors must be the ones the bank was fitted
    on, else the new bank is silently made of other clips."""
    out = tmp_path / "enrolled.npz"
    args = ("enrol", fan_bank["bank"], fan_bank["new"], "--domain", "target", "--out", out, "--restandardize")
    _assert_error(_asd(*args, "--train", fan_bank["other"]), str(fan_bank["other"]))
    assert not out.exists()
    _assert_ok(_asd(*args, "--train", fan_bank["train"]))
    assert out.is_file()


def test_enrol_restandardize_of_a_windowed_bank_matches_each_window(
    fan_bank: dict[str, Path], synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A bank made from `asd embed --window` repeats each recording's name once per window: the
    check of --train must pair the windows in order, not refuse the very embeddings of the bank."""
    train, bank, out = tmp_path / "windows.npz", tmp_path / "bank.npz", tmp_path / "enrolled.npz"
    _assert_ok(_asd("embed", synth_root / "fan" / "train", "--checkpoint", tiny_checkpoint, "--seconds", 1,
                    "--window", 0.5, "--device", "cpu", "--out", train))  # fmt: skip
    _assert_ok(_asd("fit-bank", train, "--out", bank))
    _assert_ok(_asd("enrol", bank, fan_bank["new"], "--domain", "target", "--out", out, "--restandardize",
                    "--train", train))  # fmt: skip


@pytest.mark.parametrize("where", ["split sub-folder", "machine folder"])
def test_clips_the_layout_does_not_read_are_an_error_not_dropped(
    where: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`test/normal/*.wav` (a layout of other datasets) or a clip left beside `train/` and `test/`
    was skipped without a word: the machine's outputs silently lacked those clips."""
    data = tmp_path / "data"
    shutil.copytree(synth_root / "fan", data / "fan")
    clip = sorted((data / "fan" / "test").glob("*.wav"))[0]
    moved = data / "fan" / "test" / "normal" / clip.name if where == "split sub-folder" else data / "fan" / clip.name
    moved.parent.mkdir(exist_ok=True)
    clip.rename(moved)
    out = tmp_path / "emb.npz"
    for given in (data, data / "fan", data / "fan" / "test"):
        if where == "machine folder" and given.name == "test":
            continue  # a clip beside the split folders is outside test/
        _assert_error(_asd("embed", given, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--out", out),
                      str(moved.parent), clip.name)  # fmt: skip
        assert not out.exists()


# ------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("failure", ["enospc", "short"])
def test_watch_log_on_a_full_disk_is_one_error_line(
    failure: str, fan_bank: dict[str, Path], synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk of the watch log fills up: the append fails (ENOSPC) or writes part of the row.
    One `Error:` line naming the log, not a traceback; no torn row followed by more rows; the lock
    released and no temp file left."""
    watched, logs = tmp_path / "incoming", tmp_path / "logs"
    watched.mkdir()
    logs.mkdir()
    for clip in sorted((synth_root / "fan" / "test").glob("*.wav"))[:3]:
        shutil.copy(clip, watched / clip.name)
    log = logs / "watch.csv"
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if not log.exists() or os.fstat(fd).st_ino != log.stat().st_ino or log.stat().st_size == 0:
            return real_write(fd, data)  # not the log, or its header
        if failure == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", full_disk)
    result = _asd("watch", watched, "--bank", fan_bank["bank"], "--log", log, "--once")
    monkeypatch.undo()
    _assert_error(result, str(log))
    assert sorted(p.name for p in logs.iterdir()) == ["watch.csv"]
    assert log.read_text().count("\n") <= 2  # the header, and at most one torn row: never a row after it


def test_a_lock_that_cannot_be_written_leaves_no_temp_file(
    fan_bank: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file is written beside its place first; when the disk is full that write fails after
    the file was created: the error is one line and the empty temp file does not stay behind."""
    watched = tmp_path / "incoming"
    watched.mkdir()
    real_write_text = Path.write_text

    def full_disk(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if ".lock." in self.name:
            self.touch()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    result = _asd("watch", watched, "--bank", fan_bank["bank"], "--once")
    monkeypatch.undo()
    _assert_error(result, "No space left")
    assert list(watched.iterdir()) == []


def test_finetune_adapter_save_on_a_full_disk_is_one_error_line(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """peft writes the adapter itself (into a temp folder beside adapter/): on a full disk its
    safetensors error must be one `Error:` line naming the run folder, with no temp folder left."""
    from safetensors import SafetensorError

    def full_disk(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("peft.peft_model.safe_save_file", full_disk)
    out = tmp_path / "ft"
    result = _asd("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--epochs", 1, "--seconds", 1,
                  "--lora-rank", 2, "--device", "cpu", "--out", out)  # fmt: skip
    monkeypatch.undo()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.stderr.strip().splitlines()[-1]  # after the per-epoch lines
    assert last.startswith("Error: ") and str(out) in last and "No space left" in last, last
    assert not list(out.glob(".adapter.*"))


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_export_on_a_full_disk_is_one_error_line(
    int8: bool, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`asd export` saves the model (and its int8 copy) into a temp folder beside --out: a full
    disk there is one `Error:` line naming --out, and nothing is left beside it."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    real_save = onnx.save_model
    calls = []

    def full_disk(proto: object, path: str, *args: object, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == (2 if int8 else 1):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(proto, path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx, "save_model", full_disk)
    out = tmp_path / "out" / "model.onnx"
    result = _asd(
        "export", "--checkpoint", tiny_checkpoint, "--seconds", 1, "--out", out, *(["--int8"] if int8 else [])
    )
    monkeypatch.undo()
    _assert_error(result, str(out), "No space left")
    assert list(out.parent.iterdir()) == []
