"""The bad-input matrix (issue 6), driven through the real `asd` CLI.

Every messy input ends in one of two ways:

* success with the documented conversion (asserted: the embedding exists, the warning is shown), or
* exit code 1 and one line ``Error: ...`` on stderr that names the file and says what to do,
  with nothing on stdout, an existing output byte-identical and no temp file left beside it.

Tiny random BEATs checkpoints and 1 s clips keep the whole file to a few seconds.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner, Result

from asdcli.artifacts import Embeddings, load_embeddings, save_embeddings
from asdcli.cli.main import app
from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint

SR = 16000
DIM = 64  # embedding width of tiny_beats_config
OLD = b"an earlier artifact that must survive\n"
Writer = Callable[[Path], None]
runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# helpers


def _asd(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def _embed(inputs: list[Path], out: Path, checkpoint: Path | None, *extra: object) -> Result:
    ckpt = ("--checkpoint", checkpoint) if checkpoint is not None else ()
    return _asd("embed", *inputs, "--out", out, *ckpt, "--seconds", 1, "--device", "cpu", *extra)


def _guard(path: Path) -> Path:
    """Put a known earlier artifact at ``path`` (alone in its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(OLD)
    return path


def _assert_kept(path: Path) -> None:
    """The earlier artifact is byte-identical and no temp file was left beside it."""
    assert path.read_bytes() == OLD
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _assert_error(result: Result, *needles: str) -> str:
    """Exit 1, nothing on stdout, exactly one `Error: ...` line on stderr holding every needle."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Error" not in result.output


def _tone(seconds: float = 1.0, rate: int = SR, channels: int = 1) -> np.ndarray:
    """(N,) or (N, C) float32: a 440 Hz tone plus a little noise, channel c scaled by (c + 1) / C."""
    n = round(seconds * rate)
    x = 0.4 * np.sin(2 * np.pi * 440.0 * np.arange(n) / rate) + 0.02 * np.random.default_rng(0).standard_normal(n)
    if channels == 1:
        return x.astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def _wav(data: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> Writer:
    return lambda path: sf.write(str(path), data, rate, subtype=subtype)


def _bytes(make: Callable[[], bytes]) -> Writer:
    return lambda path: path.write_bytes(make())


def _header_only() -> bytes:
    """A canonical 44-byte PCM WAV header (16 kHz mono 16-bit) whose data chunk is empty."""
    fmt = struct.pack("<HHIIHH", 1, 1, SR, 2 * SR, 2, 16)
    return b"RIFF" + struct.pack("<I", 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 0)


def _corrupt(path: Path) -> None:
    """A 1 s WAV whose fmt chunk was overwritten with garbage (channels 0, rate 0, ...)."""
    sf.write(str(path), _tone(), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[20:36] = b"\x00" * 16
    path.write_bytes(bytes(data))


def _with(value: float) -> np.ndarray:
    x = _tone()
    x[SR // 2] = value
    return x


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny checkpoint (other weights, same shapes): 'checkpoint B'."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt_b") / "beats_b.pt", seed=1)


@pytest.fixture(scope="module")
def adapter_run(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch `asd finetune` run on the shared synthetic dataset, from ``tiny_checkpoint``."""
    out = tmp_path_factory.mktemp("adapter") / "run"
    result = _asd("finetune", synth_root, "--checkpoint", tiny_checkpoint, "--out", out, "--epochs", 1,
                  "--seconds", 1, "--batch-size", 12, "--lora-rank", 2, "--embedding-dim", 8,
                  "--device", "cpu", "--val-fraction", 0)  # fmt: skip
    _assert_ok(result)
    return out


@pytest.fixture(scope="module")
def fan_bank(synth_root: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bank of fan section 00 fitted on backbone (64-d) embeddings of its train clips."""
    folder = tmp_path_factory.mktemp("bank")
    _assert_ok(_embed([synth_root / "fan" / "train"], folder / "train.npz", tiny_checkpoint))
    _assert_ok(_asd("fit-bank", folder / "train.npz", "--out", folder / "bank.npz"))
    return folder / "bank.npz"


# ---------------------------------------------------------------------------------------------
# audio files: one `asd embed` of one clip per row


@dataclass(frozen=True)
class Fails:
    """The row fails with one error line holding the clip's path and these phrases."""

    needles: tuple[str, ...]


@dataclass(frozen=True)
class Works:
    """The row succeeds; optionally a warning is shown and the vector equals that of ``same_as``."""

    warning: str | None = None
    same_as: Writer | None = None


EIGHT = _tone(channels=8)
AUDIO_ROWS = [
    pytest.param(_corrupt, (), Fails(("Cannot read", "as audio", "re-copy it or remove it")), id="corrupt-wav"),
    pytest.param(_bytes(bytes), (), Fails(("is empty (0 bytes)", "re-copy or delete it")), id="0-byte"),
    pytest.param(_bytes(_header_only), (), Fails(("has no samples (header only)", "re-copy or delete it")),
                 id="header-only"),
    pytest.param(_wav(_with(np.nan), subtype="FLOAT"), (), Fails(("contains NaN or Inf", "re-export it")), id="nan"),
    pytest.param(_wav(_with(np.inf), subtype="FLOAT"), (), Fails(("contains NaN or Inf", "re-export it")), id="inf"),
    pytest.param(_wav(np.zeros(SR)), (), Works(warning="is all zeros"), id="all-zero"),
    pytest.param(_wav(_tone(0.1)), (), Fails(("is 0.100 s long, shorter than the 0.175 s", "remove it")),
                 id="shorter-than-0.175s"),
    pytest.param(_wav(_tone(0.175)), (), Works(same_as=_wav(np.pad(_tone(0.175), (0, SR - 2800)))),
                 id="exactly-0.175s-padded"),
    pytest.param(_wav(_tone(60.0)), (), Works(same_as=_wav(_tone(60.0)[:SR])), id="60s-cut-to-seconds"),
    pytest.param(_wav(EIGHT, subtype="FLOAT"), (), Works(same_as=_wav(EIGHT.mean(axis=1), subtype="FLOAT")),
                 id="8-channel-mean"),
    pytest.param(_wav(EIGHT, subtype="FLOAT"), ("--channel", "3"), Works(same_as=_wav(EIGHT[:, 3], subtype="FLOAT")),
                 id="8-channel-pick"),
    pytest.param(_wav(EIGHT), ("--channel", "8"), Fails(("has 8 channel(s), so --channel 8 does not exist", "use 0..7")),
                 id="8-channel-pick-missing"),
    pytest.param(_wav(_tone(), subtype="PCM_U8"), (), Works(), id="8-bit"),
    pytest.param(_wav(_tone(), subtype="PCM_24"), (), Works(), id="24-bit"),
    pytest.param(_wav(_tone(), subtype="FLOAT"), (), Works(same_as=_wav(_tone(), subtype="DOUBLE")), id="float"),
    pytest.param(_wav(_tone(rate=44100), rate=44100), (), Works(), id="44.1kHz"),
    pytest.param(_wav(_tone(rate=104755), rate=104755), (), Works(), id="104755Hz"),
    pytest.param(_bytes(lambda: b"this is a text file, not audio\n" * 40), (),
                 Fails(("Cannot read", "as audio", "re-copy it or remove it")), id="text-named-wav"),
]


@pytest.mark.parametrize(("write", "args", "expect"), AUDIO_ROWS)
def test_audio_row(write: Writer, args: tuple[str, ...], expect: Fails | Works, tmp_path: Path,
                   tiny_checkpoint: Path) -> None:  # fmt: skip
    clip = tmp_path / "in" / "clip.wav"
    clip.parent.mkdir()
    write(clip)
    out = _guard(tmp_path / "out" / "emb.npz")
    result = _embed([clip], out, tiny_checkpoint, *args)
    if isinstance(expect, Fails):
        _assert_error(result, str(clip), *expect.needles)
        _assert_kept(out)
        return
    _assert_ok(result)
    emb = load_embeddings(out)
    assert emb.vectors.shape == (1, DIM) and np.isfinite(emb.vectors).all()
    assert not [p for p in out.parent.iterdir() if p != out]
    if expect.warning is not None:
        assert f"Warning: {clip} {expect.warning}" in result.stderr
    else:
        assert "Warning" not in result.stderr
    if expect.same_as is not None:
        ref = tmp_path / "ref" / "clip.wav"
        ref.parent.mkdir()
        expect.same_as(ref)
        _assert_ok(_embed([ref], tmp_path / "ref.npz", tiny_checkpoint))
        np.testing.assert_allclose(emb.vectors, load_embeddings(tmp_path / "ref.npz").vectors, rtol=1e-4, atol=1e-5)


def test_a_bad_clip_among_good_ones_fails_the_run_and_names_it(synth_root: Path, tiny_checkpoint: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """One empty file in a folder stops `asd embed` before anything is written (no silent gaps)."""
    folder = tmp_path / "fan" / "train"
    folder.mkdir(parents=True)
    for src in sorted((synth_root / "fan" / "train").iterdir())[:2]:
        (folder / src.name).write_bytes(src.read_bytes())
    bad = folder / "section_00_source_train_normal_0099_vel_20_loc_A.wav"
    bad.write_bytes(b"")
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([tmp_path / "fan"], out, tiny_checkpoint), str(bad), "is empty (0 bytes)")
    _assert_kept(out)


# ---------------------------------------------------------------------------------------------
# dataset layout and file names


def test_a_folder_with_no_clips(tmp_path: Path, tiny_checkpoint: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here\n")
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([empty], out, tiny_checkpoint), f"No audio clips found in {empty}", "expected DATA/<machine>/")
    _assert_kept(out)


def test_a_machine_folder_without_train_clips(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """finetune and fit-bank both say there are no train clips, and where they looked."""
    fan = tmp_path / "fan"
    (fan / "test").mkdir(parents=True)
    for src in sorted((synth_root / "fan" / "test").iterdir())[:3]:
        (fan / "test" / src.name).write_bytes(src.read_bytes())
    run = _guard(tmp_path / "run" / "run.json").parent
    _assert_error(_asd("finetune", fan, "--checkpoint", tiny_checkpoint, "--out", run, "--device", "cpu"),
                  str(fan), "no train clips", "train/")  # fmt: skip
    _assert_kept(run / "run.json")
    _assert_ok(_embed([fan], tmp_path / "test.npz", tiny_checkpoint))
    bank = _guard(tmp_path / "bank" / "bank.npz")
    _assert_error(_asd("fit-bank", tmp_path / "test.npz", "--out", bank),
                  str(tmp_path / "test.npz"), "has no train clips (splits found: test)", "embed the train folder")
    _assert_kept(bank)


def test_finetune_with_only_supplemental_clips_says_there_is_no_train_clip(synth_root: Path, tiny_checkpoint: Path,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    fan = tmp_path / "fan"
    (fan / "supplemental").mkdir(parents=True)
    for src in (synth_root / "fan" / "supplemental").iterdir():
        (fan / "supplemental" / src.name).write_bytes(src.read_bytes())
    _assert_error(_asd("finetune", fan, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "run", "--device", "cpu"),
                  str(fan), "no train clips", "train/")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def odd_names(synth_root: Path, tmp_path: Path) -> Path:
    """fan/{train,test} with clips whose names follow no DCASE form (machine and split from folders)."""
    srcs = sorted((synth_root / "fan" / "train").iterdir())
    for split, names in (("train", ["take 1.wav", "take2.WAV", "rec-03.wav"]), ("test", ["mystery.wav"])):
        (tmp_path / "odd" / "fan" / split).mkdir(parents=True)
        for src, name in zip(srcs, names):
            (tmp_path / "odd" / "fan" / split / name).write_bytes(src.read_bytes())
    return tmp_path / "odd"


def test_unknown_file_names_are_kept_with_unknown_fields(odd_names: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    _assert_ok(_embed([odd_names], tmp_path / "emb.npz", tiny_checkpoint))
    emb = load_embeddings(tmp_path / "emb.npz")
    assert sorted(emb.filenames) == ["mystery.wav", "rec-03.wav", "take 1.wav", "take2.WAV"]
    assert set(emb.machine) == {"fan"} and set(emb.split) == {"train", "test"}
    assert set(emb.section) == {""} and set(emb.domain) == {""} and set(emb.label) == {""}


def test_a_bank_of_unknown_section_scores_its_own_clips(odd_names: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """fit-bank keeps an unknown section as its own group ("fan section ?"); score --bank uses it."""
    _assert_ok(_embed([odd_names], tmp_path / "emb.npz", tiny_checkpoint))
    result = _asd("fit-bank", tmp_path / "emb.npz", "--out", tmp_path / "bank.npz")
    _assert_ok(result)
    assert "fan section ?: 3 vectors (3 unknown)" in result.stderr
    result = _asd("score", "--bank", tmp_path / "bank.npz", "--embeddings", tmp_path / "emb.npz")
    _assert_ok(result)
    assert result.stdout.startswith("mystery.wav,") and len(result.stdout.splitlines()) == 1


def test_stages_that_need_a_field_name_the_files_without_it(odd_names: Path, fan_bank: Path, tiny_checkpoint: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """The submission needs sections (they are in its file names); finetune needs machines."""
    _assert_ok(_embed([odd_names / "fan" / "test"], tmp_path / "test.npz", tiny_checkpoint))
    banks = tmp_path / "banks"
    banks.mkdir()
    (banks / "bank_fan_section_00.npz").write_bytes(fan_bank.read_bytes())
    sub = tmp_path / "submission"
    _assert_error(_asd("score", "--banks", banks, "--embeddings", tmp_path / "test.npz", "--submission-dir", sub),
                  "needs the section of every clip", str(odd_names / "fan" / "test" / "mystery.wav"), "section_00_")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["banks", "odd", "test.npz"]
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.wav").write_bytes((odd_names / "fan" / "train" / "take 1.wav").read_bytes())
    _assert_error(_asd("finetune", loose, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "run", "--device", "cpu"),
                  str(loose), "no train clips (only 1 unsplit)", "DATA/<machine>/train/")  # fmt: skip
    dcase = tmp_path / "dcase-named"
    dcase.mkdir()
    named = dcase / "section_00_source_train_normal_0000_a_1.wav"
    named.write_bytes((loose / "a.wav").read_bytes())
    _assert_error(_asd("finetune", dcase, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "run", "--device", "cpu"),
                  "asd finetune needs the machine of every clip", str(named), "DATA/<machine>/")  # fmt: skip
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# artifacts that do not belong together


def test_a_bank_of_another_dimension(fan_bank: Path, synth_root: Path, tiny_checkpoint: Path, adapter_run: Path,
                                     tmp_path: Path) -> None:  # fmt: skip
    test8 = tmp_path / "test8.npz"
    _assert_ok(_embed([synth_root / "fan" / "test"], test8, tiny_checkpoint, "--adapter", adapter_run))
    assert load_embeddings(test8).dim == 8
    decisions = _guard(tmp_path / "out" / "decisions.csv")
    _assert_error(_asd("score", "--bank", fan_bank, "--embeddings", test8, "--decisions", decisions),
                  "has dimension 64", f"{test8} has 8", "embed the test clips with the checkpoint and adapter")
    _assert_kept(decisions)


def test_an_adapter_for_another_checkpoint(adapter_run: Path, tiny_checkpoint: Path, other_checkpoint: Path,
                                           synth_root: Path, tmp_path: Path) -> None:  # fmt: skip
    out = _guard(tmp_path / "out" / "emb.npz")
    result = _embed([synth_root / "fan" / "test"], out, other_checkpoint, "--adapter", adapter_run)
    _assert_error(result, f"Adapter {adapter_run} was fine-tuned from checkpoint {tiny_checkpoint}",
                  f"not {other_checkpoint}", "Pass the same --checkpoint that `asd finetune` used")
    _assert_kept(out)


# ---------------------------------------------------------------------------------------------
# checkpoints


CHECKPOINT_ROWS = [
    pytest.param("truncated", ("is not a readable BEATs checkpoint", "re-download it"), id="truncated"),
    pytest.param("foreign", ("is not a BEATs checkpoint", "BEATs_iter3.pt"), id="torch-save-of-other-dict"),
    pytest.param("random", ("is not a readable BEATs checkpoint", "BEATs_iter3.pt"), id="random-bytes"),
    pytest.param("missing", ("does not exist", "--checkpoint", "$ASD_CHECKPOINT", "~/.cache/asdcli/BEATs_iter3.pt"),
                 id="missing-given"),
]


@pytest.mark.parametrize(("kind", "needles"), CHECKPOINT_ROWS)
def test_checkpoint_row(kind: str, needles: tuple[str, ...], tiny_checkpoint: Path, synth_root: Path,
                        tmp_path: Path) -> None:  # fmt: skip
    ckpt = tmp_path / "ckpt" / "model.pt"
    ckpt.parent.mkdir()
    if kind == "truncated":
        ckpt.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    elif kind == "foreign":
        torch.save({"foo": torch.zeros(3)}, ckpt)
    elif kind == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([synth_root / "fan" / "test"], out, ckpt), str(ckpt), *needles)
    _assert_kept(out)


def test_no_checkpoint_anywhere_says_where_to_put_it(synth_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("ASD_CHECKPOINT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = _guard(tmp_path / "out" / "emb.npz")
    default = tmp_path / "home" / ".cache" / "asdcli" / "BEATs_iter3.pt"
    _assert_error(_embed([synth_root / "fan" / "test"], out, None),
                  f"{default} (default) does not exist", "$ASD_CHECKPOINT", "~/.cache/asdcli/BEATs_iter3.pt")
    monkeypatch.setenv("ASD_CHECKPOINT", str(tmp_path / "nowhere.pt"))
    _assert_error(_embed([synth_root / "fan" / "test"], out, None), f"{tmp_path / 'nowhere.pt'} (from $ASD_CHECKPOINT)")
    _assert_kept(out)


# ---------------------------------------------------------------------------------------------
# output paths


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root (or non-POSIX) ignores folder permissions")
def test_an_output_in_a_read_only_folder(synth_root: Path, tiny_checkpoint: Path, fan_bank: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    folder = tmp_path / "read-only"
    out = _guard(folder / "emb.npz")
    folder.chmod(0o555)
    try:
        _assert_error(_embed([synth_root / "fan" / "test"], out, tiny_checkpoint),
                      f"Cannot write in {folder}", "Choose a writable output path")  # fmt: skip
        _assert_kept(out)
        _assert_error(_asd("fit-bank", fan_bank.parent / "train.npz", "--out", folder / "bank.npz"),
                      f"Cannot write in {folder}")  # fmt: skip
        _assert_kept(out)
    finally:
        folder.chmod(0o755)


def test_an_output_path_that_is_a_folder(fan_bank: Path, tmp_path: Path) -> None:
    taken = tmp_path / "bank.npz"
    _guard(taken / "kept.txt")
    _assert_error(_asd("fit-bank", fan_bank.parent / "train.npz", "--out", taken),
                  f"Cannot write {taken}: Is a directory", "Choose another output path")  # fmt: skip
    _assert_kept(taken / "kept.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.npz"]


def test_paths_with_spaces_and_unicode(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The whole chain embed -> fit-bank -> score through odd folder and file names."""
    data = tmp_path / "my data ✓" / "fän ünï 01"
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
        for src in sorted((synth_root / "fan" / split).iterdir())[:4]:
            (data / split / src.name.replace("_loc_", "_lieu_é_")).write_bytes(src.read_bytes())
    out = tmp_path / "résultats [v1]" / "ëmb ✓.npz"
    result = _embed([data], out, tiny_checkpoint)
    _assert_ok(result)
    assert f"-> {out}" in result.stderr  # [v1] is not taken for markup
    assert set(load_embeddings(out).machine) == {"fän ünï 01"}
    bank = out.parent / "bänk ✓.npz"
    result = _asd("fit-bank", out, "--out", bank)
    _assert_ok(result)
    assert f"-> {bank}" in result.stderr
    result = _asd("score", "--bank", bank, "--embeddings", out)
    _assert_ok(result)
    assert len(result.stdout.splitlines()) == 4 and "_lieu_é_" in result.stdout


def test_an_embeddings_file_of_other_width_is_caught_before_scoring(fan_bank: Path, tmp_path: Path) -> None:
    """A hand-made embeddings file (e.g. from another tool) of the wrong width: same mismatch error."""
    n = 2
    fields = {f: np.asarray(["x"] * n) for f in Embeddings.FIELDS}
    fields.update(split=np.asarray(["test"] * n), machine=np.asarray(["fan"] * n), section=np.asarray(["00"] * n))
    other = tmp_path / "other.npz"
    save_embeddings(other, Embeddings(vectors=np.ones((n, 32), np.float32), meta={}, **fields))
    _assert_error(_asd("score", "--bank", fan_bank, "--embeddings", other), "has dimension 64", f"{other} has 32")


def test_error_messages_show_brackets_in_paths_verbatim(tmp_path: Path) -> None:
    """Rich markup in a path ('[old]', '[/x]') is printed as it is, never parsed or crashing."""
    data = tmp_path / "data [old] [/x]"
    data.mkdir(parents=True)
    result = runner.invoke(app, ["embed", str(data), "--out", str(tmp_path / "e.npz")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "data [old] [/x]" in result.output


# ---------------------------------------------------------------------------------------------
# tampered or foreign bank files: one `asd score --bank` per row


def _set(key: str, value: object) -> Callable[[dict, dict], None]:
    def tamper(arrays: dict, meta: dict) -> None:
        arrays[key] = np.asarray(value)
    return tamper


def _edit(key: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict, dict], None]:
    def tamper(arrays: dict, meta: dict) -> None:
        arrays[key] = make(np.array(arrays[key]))
    return tamper


def _config(**changes: object) -> Callable[[dict, dict], None]:
    def tamper(arrays: dict, meta: dict) -> None:
        meta["config"].update(changes)
    return tamper


def _meta(**changes: object) -> Callable[[dict, dict], None]:
    def tamper(arrays: dict, meta: dict) -> None:
        meta.update(changes)
    return tamper


def _at(index: tuple[int, ...], value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a
    return change


def _zero_columns(arrays: dict, meta: dict) -> None:
    m = arrays["vectors"].shape[0]
    arrays.update(vectors=np.zeros((m, 0), np.float32), mean=np.zeros(0, np.float32), std=np.zeros(0, np.float32))


BANK_ROWS = [
    pytest.param(_edit("vectors", _at((0, 0), np.nan)), "vectors contains NaN or Inf", id="nan-vector"),
    pytest.param(_edit("vectors", _at((1, 3), np.inf)), "vectors contains NaN or Inf", id="inf-vector"),
    pytest.param(_edit("vectors", lambda v: 2 * v), "vectors are not L2-normalized", id="unnormalized-vectors"),
    pytest.param(_edit("vectors", lambda v: v.astype(str)), "vectors has dtype <U", id="string-vectors"),
    pytest.param(_zero_columns, "non-empty 2-D array, got shape (", id="0-column-bank"),
    pytest.param(_edit("std", _at((0,), 0.0)), "std has zero or negative values", id="zero-std"),
    pytest.param(_edit("mean", _at((2,), np.nan)), "mean contains NaN or Inf", id="nan-mean"),
    pytest.param(_edit("radii", _at((0,), 0.0)), "radii has zero or negative values", id="zero-radius"),
    pytest.param(_set("threshold", np.nan), "threshold contains NaN or Inf", id="nan-threshold"),
    pytest.param(_set("threshold", "0.5"), "threshold has dtype <U", id="string-threshold"),
    pytest.param(_set("threshold", [0.1, 0.2]), "threshold has shape (2,)", id="array-threshold"),
    pytest.param(_config(k=10_000), "k = 10000 needs at least 10000 vectors", id="k-larger-than-bank"),
    pytest.param(_config(k="3"), "--k must be an integer", id="k-a-string"),
    pytest.param(_config(k=2.5), "--k must be an integer", id="k-not-an-int"),
    pytest.param(_config(score_norm="density"), "its density K is missing", id="density-without-radii-k"),
    pytest.param(_config(score_norm="domain-zscore"), "its source statistics are missing", id="zscore-without-statistics"),
    pytest.param(_meta(schema_version=1), "has bank schema 1, this asdcli reads 2", id="old-schema"),
    pytest.param(_meta(config=[1, 2]), "'config' is not a JSON object", id="config-a-list"),
    pytest.param(lambda arrays, meta: meta.clear() or meta.update(list_meta=True), "is not a bank file",
                 id="meta-without-kind"),
    pytest.param(_meta(loo_stats={"mean": "x", "std": 1.0}), "leave-one-out statistics are not finite",
                 id="string-loo-stats"),
]


@pytest.mark.parametrize(("tamper", "needle"), BANK_ROWS)
def test_bank_row(tamper: Callable[[dict, dict], None], needle: str, fan_bank: Path, tmp_path: Path) -> None:
    import json

    with np.load(fan_bank, allow_pickle=False) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    tamper(arrays, meta)
    arrays["meta"] = np.asarray(json.dumps(meta))
    bad = tmp_path / "bad bank.npz"
    np.savez(bad, **arrays)
    out = _guard(tmp_path / "out" / "decisions.csv")
    result = _asd("score", "--bank", bad, "--embeddings", fan_bank.parent / "train.npz", "--all", "--decisions", out)
    _assert_error(result, str(bad), needle)
    _assert_kept(out)


def test_bank_meta_that_is_not_an_object(fan_bank: Path, tmp_path: Path) -> None:
    with np.load(fan_bank, allow_pickle=False) as z:
        arrays = dict(z)
    bad = tmp_path / "bad.npz"
    for meta in ("[1, 2]", "3", '"text"'):
        np.savez(bad, **{**arrays, "meta": np.asarray(meta)})
        _assert_error(_asd("score", "--bank", bad, "--embeddings", fan_bank.parent / "train.npz", "--all"),
                      str(bad), "not a JSON object")


def test_a_bank_of_zero_column_embeddings_is_refused(tmp_path: Path) -> None:
    n = 4
    fields = {f: np.asarray([f"c{i}.wav" for i in range(n)]) for f in Embeddings.FIELDS}
    fields.update(split=np.asarray(["train"] * n), machine=np.asarray(["fan"] * n), section=np.asarray(["00"] * n),
                  domain=np.asarray(["source"] * n))
    emb = tmp_path / "emb.npz"
    save_embeddings(emb, Embeddings(vectors=np.zeros((n, 0), np.float32), meta={}, **fields))
    _assert_error(_asd("fit-bank", emb, "--out", tmp_path / "bank.npz"), "0 dimensions")
