"""The bad-input matrix (issue 6), driven through the real `asd` CLI.

Every messy input ends in one of two ways:

* success with the documented conversion (asserted: the embedding exists, the warning is shown), or
* exit code 1 and one line ``Error: ...`` on stderr that names the file and says what to do,
  with nothing on stdout, an existing output byte-identical and no temp file left beside it.

Tiny random BEATs checkpoints and 1 s clips keep the whole file to a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_checks import asd as _asd
from cli_checks import assert_error as _assert_error
from cli_checks import assert_ok as _assert_ok
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
    return (
        b"RIFF"
        + struct.pack("<I", 36)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", 0)
    )


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
    pytest.param(
        _bytes(_header_only), (), Fails(("has no samples (header only)", "re-copy or delete it")), id="header-only"
    ),
    pytest.param(_wav(_with(np.nan), subtype="FLOAT"), (), Fails(("contains NaN or Inf", "re-export it")), id="nan"),
    pytest.param(_wav(_with(np.inf), subtype="FLOAT"), (), Fails(("contains NaN or Inf", "re-export it")), id="inf"),
    pytest.param(_wav(np.zeros(SR)), (), Works(warning="is all zeros"), id="all-zero"),
    pytest.param(
        _wav(_tone(0.1)),
        (),
        Fails(("is 0.100 s long, shorter than the 0.175 s", "remove it")),
        id="shorter-than-0.175s",
    ),
    pytest.param(
        _wav(_tone(0.175)), (), Works(same_as=_wav(np.pad(_tone(0.175), (0, SR - 2800)))), id="exactly-0.175s-padded"
    ),
    pytest.param(_wav(_tone(60.0)), (), Works(same_as=_wav(_tone(60.0)[:SR])), id="60s-cut-to-seconds"),
    pytest.param(
        _wav(EIGHT, subtype="FLOAT"), (), Works(same_as=_wav(EIGHT.mean(axis=1), subtype="FLOAT")), id="8-channel-mean"
    ),
    pytest.param(
        _wav(EIGHT, subtype="FLOAT"),
        ("--channel", "3"),
        Works(same_as=_wav(EIGHT[:, 3], subtype="FLOAT")),
        id="8-channel-pick",
    ),
    pytest.param(
        _wav(EIGHT),
        ("--channel", "8"),
        Fails(("has 8 channel(s), so --channel 8 does not exist", "use 0..7")),
        id="8-channel-pick-missing",
    ),
    pytest.param(_wav(_tone(), subtype="PCM_U8"), (), Works(), id="8-bit"),
    pytest.param(_wav(_tone(), subtype="PCM_24"), (), Works(), id="24-bit"),
    pytest.param(_wav(_tone(), subtype="FLOAT"), (), Works(same_as=_wav(_tone(), subtype="DOUBLE")), id="float"),
    pytest.param(_wav(_tone(rate=44100), rate=44100), (), Works(), id="44.1kHz"),
    pytest.param(_wav(_tone(rate=104755), rate=104755), (), Works(), id="104755Hz"),
    pytest.param(
        _bytes(lambda: b"this is a text file, not audio\n" * 40),
        (),
        Fails(("Cannot read", "as audio", "re-copy it or remove it")),
        id="text-named-wav",
    ),
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
    _assert_error(
        _asd("fit-bank", tmp_path / "test.npz", "--out", bank),
        str(tmp_path / "test.npz"),
        "has no train clips (splits found: test)",
        "embed the train folder",
    )
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


def test_unknown_file_names_are_kept_with_unknown_fields(
    odd_names: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
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
    _assert_error(
        _asd("score", "--banks", banks, "--embeddings", tmp_path / "test.npz", "--submission-dir", sub),
        "needs the section of every clip",
        str(odd_names / "fan" / "test" / "mystery.wav"),
        "section_00_",
    )
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
    _assert_error(
        _asd("score", "--bank", fan_bank, "--embeddings", test8, "--decisions", decisions),
        "has dimension 64",
        f"{test8} has 8",
        "embed the test clips with the checkpoint and adapter",
    )
    _assert_kept(decisions)


def test_an_adapter_for_another_checkpoint(adapter_run: Path, tiny_checkpoint: Path, other_checkpoint: Path,
                                           synth_root: Path, tmp_path: Path) -> None:  # fmt: skip
    out = _guard(tmp_path / "out" / "emb.npz")
    result = _embed([synth_root / "fan" / "test"], out, other_checkpoint, "--adapter", adapter_run)
    _assert_error(
        result,
        f"Adapter {adapter_run} was fine-tuned from checkpoint {tiny_checkpoint}",
        f"not {other_checkpoint}",
        "Pass the same --checkpoint that `asd finetune` used",
    )
    _assert_kept(out)


# ---------------------------------------------------------------------------------------------
# checkpoints


CHECKPOINT_ROWS = [
    pytest.param("truncated", ("is not a readable BEATs checkpoint", "re-download it"), id="truncated"),
    pytest.param("foreign", ("is not a BEATs checkpoint", "BEATs_iter3.pt"), id="torch-save-of-other-dict"),
    pytest.param("random", ("is not a readable BEATs checkpoint", "BEATs_iter3.pt"), id="random-bytes"),
    pytest.param(
        "missing",
        ("does not exist", "--checkpoint", "$ASD_CHECKPOINT", "~/.cache/asdcli/BEATs_iter3.pt"),
        id="missing-given",
    ),
    pytest.param("nan-weights", ("holds NaN or Inf values", "re-download it"), id="nan-weights"),
    pytest.param("int-dtype", ("holds torch.int64 values, not floating point",), id="integer-tensor"),
    pytest.param(
        "huge-cfg",
        ("its cfg describes a model of at least", "GB), but the file is", "re-download it"),
        id="cfg-of-a-huge-model",
    ),
]


def _tampered_checkpoint(source: Path, kind: str) -> dict[str, object]:
    """The tiny checkpoint with one tensor made NaN or integer, or a cfg asking for a 4096-wide model."""
    ckpt = torch.load(source, weights_only=True)
    name = "encoder.layers.0.fc1.weight"
    if kind == "nan-weights":
        ckpt["model"][name] = ckpt["model"][name].clone().fill_(float("nan"))
    elif kind == "int-dtype":
        ckpt["model"][name] = ckpt["model"][name].round().long()
    else:
        ckpt["cfg"] = {**ckpt["cfg"], "encoder_embed_dim": 64 * 1024, "encoder_ffn_embed_dim": 4 * 64 * 1024}
    return ckpt


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
    elif kind in ("nan-weights", "int-dtype", "huge-cfg"):
        torch.save(_tampered_checkpoint(tiny_checkpoint, kind), ckpt)
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([synth_root / "fan" / "test"], out, ckpt), str(ckpt), *needles)
    _assert_kept(out)


def test_no_checkpoint_anywhere_says_where_to_put_it(synth_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("ASD_CHECKPOINT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = _guard(tmp_path / "out" / "emb.npz")
    default = tmp_path / "home" / ".cache" / "asdcli" / "BEATs_iter3.pt"
    _assert_error(
        _embed([synth_root / "fan" / "test"], out, None),
        f"{default} (default) does not exist",
        "$ASD_CHECKPOINT",
        "~/.cache/asdcli/BEATs_iter3.pt",
    )
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
# the artifact contract: embeddings made another way than the bank's are refused, field named
# (fan_bank: frozen tiny_checkpoint, --seconds 1, mean of channels, last layer)


FRONTEND_ROWS = [
    pytest.param(("--seconds", 2), "clip_seconds 1.0 vs 2.0", id="other-seconds"),
    pytest.param(("--channel", 0), "channel null vs 0", id="other-channel"),
    pytest.param(("--layers", "1"), 'layers "last" vs "1"', id="other-layers"),
    pytest.param(("--checkpoint", "OTHER"), "checkpoint_sha256", id="other-checkpoint"),
]


@pytest.mark.parametrize(("args", "needle"), FRONTEND_ROWS)
def test_frontend_row(args: tuple[object, ...], needle: str, fan_bank: Path, synth_root: Path, tiny_checkpoint: Path,
                      other_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    args = tuple(other_checkpoint if a == "OTHER" else a for a in args)
    test = tmp_path / "test.npz"
    ckpt = None if "--checkpoint" in args else tiny_checkpoint
    _assert_ok(_embed([synth_root / "fan" / "test"], test, ckpt, *args))
    decisions = _guard(tmp_path / "out" / "decisions.csv")
    _assert_error(_asd("score", "--bank", fan_bank, "--embeddings", test, "--decisions", decisions),
                  "different front ends", needle, str(test))  # fmt: skip
    _assert_kept(decisions)


def _edit_npz(src: Path, dst: Path, change: Callable[[dict[str, np.ndarray], dict[str, object]], None]) -> None:
    """Copy an npz artifact with ``change(arrays, meta)`` applied (meta written back unless replaced)."""
    import json

    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    change(arrays, meta)
    if isinstance(arrays["meta"], np.ndarray) and arrays["meta"].ndim == 0 and str(arrays["meta"]).startswith("{"):
        arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(dst, **arrays)


def _set(key: str, value: object) -> Callable[[dict[str, np.ndarray], dict[str, object]], None]:
    return lambda arrays, meta: arrays.__setitem__(key, np.asarray(value))


def _nan_row(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    arrays["embeddings"] = arrays["embeddings"].copy()
    arrays["embeddings"][1, 3] = np.nan


def _drop_spec_field(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    del meta["frontend"]["checkpoint_sha256"]  # type: ignore[attr-defined]


EMBEDDINGS_FILE_ROWS = [
    pytest.param(_nan_row, ("holds NaN or Inf embeddings (1 rows, first", ".wav"), id="nan-vector"),
    pytest.param(_set("embeddings", [["x"] * DIM] * 18), ("must be a numeric 2-D array", "<U1"), id="string-vectors"),
    pytest.param(_set("embeddings", np.zeros((18, 0), np.float32)), ("at least one column", "(18, 0)"), id="0-columns"),
    pytest.param(_set("meta", "[1, 2]"), ("malformed meta record (a JSON list, not an object)",), id="meta-a-list"),
    pytest.param(_set("meta", "42"), ("malformed meta record (a JSON int",), id="meta-a-number"),
    pytest.param(lambda a, m: m.update(schema_version=1), ("embeddings schema 1", "re-create it"), id="old-schema"),
    pytest.param(lambda a, m: m.pop("frontend"), ("does not record its front end",), id="no-front-end-record"),
    pytest.param(_drop_spec_field, ("checkpoint_sha256", "vs missing"), id="front-end-field-missing"),
]


@pytest.mark.parametrize(("change", "needles"), EMBEDDINGS_FILE_ROWS)
def test_embeddings_file_row(change: Callable[[dict[str, np.ndarray], dict[str, object]], None],
                             needles: tuple[str, ...], fan_bank: Path, synth_root: Path, tiny_checkpoint: Path,
                             tmp_path: Path) -> None:  # fmt: skip
    good = fan_bank.parent / "test.npz"
    if not good.is_file():
        _assert_ok(_embed([synth_root / "fan" / "test"], good, tiny_checkpoint))
    bad = tmp_path / "bad.npz"
    _edit_npz(good, bad, change)
    decisions = _guard(tmp_path / "out" / "decisions.csv")
    _assert_error(_asd("score", "--bank", fan_bank, "--embeddings", bad, "--decisions", decisions), *needles)
    _assert_kept(decisions)


def test_an_edited_or_replaced_adapter_is_another_front_end(
    adapter_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    """The adapter's identity is the bytes of its config, weights and head, not what run.json says."""
    import json
    import shutil

    _assert_ok(_embed([synth_root / "fan" / "train"], tmp_path / "train.npz", None, "--adapter", adapter_run))
    _assert_ok(_asd("fit-bank", tmp_path / "train.npz", "--out", tmp_path / "bank.npz"))
    edited = tmp_path / "edited"
    shutil.copytree(adapter_run, edited)
    config = edited / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lora_alpha": 3}))
    _assert_ok(_embed([synth_root / "fan" / "test"], tmp_path / "test.npz", None, "--adapter", edited))
    _assert_error(_asd("score", "--bank", tmp_path / "bank.npz", "--embeddings", tmp_path / "test.npz"),
                  "different front ends (adapter_sha256")  # fmt: skip


def test_adapter_without_checkpoint_uses_the_recorded_one_sha_checked(adapter_run: Path, tiny_checkpoint: Path,
                                                                       other_checkpoint: Path, synth_root: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    import json
    import shutil

    clips = [synth_root / "fan" / "test"]
    _assert_ok(_embed(clips, tmp_path / "a.npz", None, "--adapter", adapter_run))
    _assert_ok(_embed(clips, tmp_path / "b.npz", tiny_checkpoint, "--adapter", adapter_run))
    np.testing.assert_array_equal(
        load_embeddings(tmp_path / "a.npz").vectors, load_embeddings(tmp_path / "b.npz").vectors
    )
    run = tmp_path / "run"
    shutil.copytree(adapter_run, run)
    record = json.loads((run / "run.json").read_text())
    out = _guard(tmp_path / "out" / "emb.npz")
    for path, needles in (
        (tmp_path / "moved.pt", ("moved.pt, which does not exist any more", "pass --checkpoint")),
        (other_checkpoint, (f"was fine-tuned from checkpoint {other_checkpoint}", "SHA-256")),
    ):
        (run / "run.json").write_text(json.dumps({**record, "checkpoint": {**record["checkpoint"], "path": str(path)}}))
        _assert_error(_embed(clips, out, None, "--adapter", run), str(run), *needles)
        _assert_kept(out)


# ---------------------------------------------------------------------------------------------
# the clips scored are the ones meant


def test_clips_of_another_machine_or_section_than_the_bank(fan_bank: Path, synth_root: Path) -> None:
    _assert_error(_asd("score", "--bank", fan_bank, synth_root / "gearbox" / "test", "--device", "cpu"),
                  "clip(s) are not of the bank's fan section 00", str(synth_root / "gearbox" / "test"),
                  "--skip-other-sections")  # fmt: skip
    result = _asd("score", "--bank", fan_bank, synth_root, "--device", "cpu", "--skip-other-sections")
    _assert_ok(result)
    n_fan = len(list((synth_root / "fan" / "test").glob("*.wav")))
    assert len(result.stdout.splitlines()) == n_fan
    assert f"Skipped {len(list(synth_root.glob('*/test/*.wav'))) - n_fan} clip(s) of other machines" in result.stderr
    _assert_error(_asd("score", "--bank", fan_bank, synth_root / "gearbox", "--device", "cpu", "--skip-other-sections"),
                  "None of the 12 clip(s) is of the bank's fan section 00")  # fmt: skip


def test_clips_longer_than_seconds_are_cut_with_a_notice(fan_bank: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    for i, seconds in enumerate((3.0, 1.0, 2.5)):
        _wav(_tone(seconds))(folder / f"section_00_source_test_normal_{i:04d}_a_1.wav")
    notice = "Notice: 2 clip(s) are longer than --seconds 1; only their first 1 s are used, 3.5 s of audio in all is ignored."
    result = _embed([folder], tmp_path / "emb.npz", tiny_checkpoint)
    _assert_ok(result)
    assert notice in result.stderr
    result = _asd("score", "--bank", fan_bank, folder, "--device", "cpu")
    _assert_ok(result)
    assert notice in result.stderr and len(result.stdout.splitlines()) == 3


def test_an_output_that_is_one_of_the_inputs(fan_bank: Path, synth_root: Path, tiny_checkpoint: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    clip = tmp_path / "fan" / "test" / "section_00_source_test_normal_0000_a_1.wav"
    clip.parent.mkdir(parents=True)
    _wav(_tone())(clip)
    before = clip.read_bytes()
    _assert_error(_embed([clip], clip, tiny_checkpoint), f"--out {clip} is one of the inputs")
    emb = fan_bank.parent / "train.npz"
    emb_bytes, bank_bytes = emb.read_bytes(), fan_bank.read_bytes()
    _assert_error(_asd("fit-bank", emb, "--out", emb), f"--out {emb} is one of the inputs")
    _assert_error(_asd("score", "--bank", fan_bank, "--embeddings", emb, "--all", "--decisions", fan_bank),
                  f"--decisions {fan_bank} is one of the inputs")  # fmt: skip
    _assert_error(_asd("score", "--bank", fan_bank, clip, "--decisions", clip), f"--decisions {clip} is one of")
    assert clip.read_bytes() == before and emb.read_bytes() == emb_bytes and fan_bank.read_bytes() == bank_bytes


# ---------------------------------------------------------------------------------------------
# outputs stay parseable and unambiguous


def test_names_with_commas_quotes_and_newlines_round_trip_through_the_csv(fan_bank: Path, synth_root: Path,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    import csv
    import io

    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    names = ['odd, "quoted".wav', "two\nlines.wav", "plain.wav"]
    src = sorted((synth_root / "fan" / "test").iterdir())[0]
    for name in names:
        (folder / name).write_bytes(src.read_bytes())
    decisions = tmp_path / "decisions.csv"
    result = _asd("score", "--bank", fan_bank, folder, "--device", "cpu", "--decisions", decisions)
    _assert_ok(result)
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert sorted(r[0] for r in rows) == sorted(names) and len({r[1] for r in rows}) == 1  # same audio, same score
    assert sorted(r[0] for r in csv.reader(decisions.open(newline=""))) == sorted(names)


def test_two_clips_with_one_name_from_different_folders(fan_bank: Path, synth_root: Path, tmp_path: Path) -> None:
    src = sorted((synth_root / "fan" / "test").iterdir())[0]
    a, b = tmp_path / "a" / "fan" / "test" / src.name, tmp_path / "b" / "fan" / "test" / src.name
    for p in (a, b):
        p.parent.mkdir(parents=True)
        p.write_bytes(src.read_bytes())
    _assert_error(_asd("score", "--bank", fan_bank, a.parent, b.parent, "--device", "cpu"),
                  f"two clips named {src.name}", str(a), str(b))  # fmt: skip


@pytest.mark.skipif(os.name != "posix", reason="file names as bytes are POSIX")
def test_a_file_name_that_is_not_utf8(fan_bank: Path, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    src = sorted((synth_root / "fan" / "test").iterdir())[0]
    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    raw = b"section_00_source_test_normal_0099_\xff\xfe.wav"
    with open(os.path.join(os.fsencode(folder), raw), "wb") as f:
        f.write(src.read_bytes())
    result = _asd("score", "--bank", fan_bank, folder, "--device", "cpu")
    _assert_ok(result)
    assert result.stdout_bytes.startswith(raw + b",")
    _assert_ok(_embed([folder], tmp_path / "test.npz", tiny_checkpoint))
    banks = tmp_path / "banks"
    banks.mkdir()
    (banks / "bank_fan_section_00.npz").write_bytes(fan_bank.read_bytes())
    _assert_ok(
        _asd("score", "--banks", banks, "--embeddings", tmp_path / "test.npz", "--submission-dir", tmp_path / "sub")
    )
    assert (tmp_path / "sub" / "anomaly_score_fan_section_00_test.csv").read_bytes().startswith(raw + b",")


LAYERS_ROWS = [  # the tiny checkpoint has 2 transformer layers
    pytest.param(("--layers", "0"), ("--layers must be 'last' or distinct layer numbers from 1", "'0'"), id="layer-0"),
    pytest.param(("--layers", "1,1"), ("--layers must be", "'1,1'"), id="layer-twice"),
    pytest.param(("--layers", "2,x"), ("--layers must be", "'2,x'"), id="layer-not-a-number"),
    pytest.param(("--layers", "3"), ("--layers 3:", "has 2 transformer layers (1..2)"), id="layer-too-deep"),
    pytest.param(
        ("--layers", "1", "--adapter", "ADAPTER"), ("--layers is for the frozen BEATs",), id="layers-with-adapter"
    ),
    pytest.param(("--workers", "100000"), ("--workers must be from 0 to this machine's",), id="workers-beyond-cpus"),
]


@pytest.mark.parametrize(("args", "needles"), LAYERS_ROWS)
def test_layers_row(args: tuple[str, ...], needles: tuple[str, ...], synth_root: Path, tiny_checkpoint: Path,
                    tmp_path: Path) -> None:  # fmt: skip
    args = tuple(str(tmp_path) if a == "ADAPTER" else a for a in args)  # refused before the folder is read
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([synth_root / "fan" / "test"], out, tiny_checkpoint, *args), *needles)
    _assert_kept(out)


def test_layers_concatenate_in_the_given_order(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    clips = [synth_root / "fan" / "test"]
    for name, layers in (("l1", "1"), ("l2", "2"), ("l21", "2,1"), ("last", "last")):
        _assert_ok(_embed(clips, tmp_path / f"{name}.npz", tiny_checkpoint, "--layers", layers))
    l1, l2, l21, last = (load_embeddings(tmp_path / f"{n}.npz") for n in ("l1", "l2", "l21", "last"))
    assert l21.dim == 2 * DIM and l21.meta["frontend"]["layers"] == "2,1"
    np.testing.assert_allclose(l21.vectors, np.concatenate([l2.vectors, l1.vectors], axis=1), rtol=0, atol=1e-6)
    assert l2.meta["frontend"]["layers"] == "last"  # the last layer, spelled out, is the default
    np.testing.assert_allclose(l2.vectors, last.vectors, rtol=0, atol=1e-6)  # same operations


# clip length: --seconds is bounded before anything is allocated


SECONDS_ROWS = [pytest.param(value, id=f"seconds-{value}") for value in ("inf", "nan", "1e9", "600", "0", "-1")]


@pytest.mark.parametrize("value", SECONDS_ROWS)
def test_seconds_row(value: str, synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    needles = (f"--seconds must be a clip length from 0.175 to 60 s, got {float(value)}", "scored in windows")
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_asd("embed", synth_root / "fan" / "test", "--out", out, "--checkpoint", tiny_checkpoint,
                       "--seconds", value, "--device", "cpu"), *needles)  # fmt: skip
    _assert_kept(out)
    _assert_error(_asd("run", synth_root, "--out", tmp_path / "run", "--checkpoint", tiny_checkpoint,
                       "--seconds", value, "--device", "cpu"), *needles)  # fmt: skip
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# discovery: every audio path found is used or reported


def _dangling(folder: Path) -> Path:
    link = folder / "section_00_source_test_normal_0099_a_1.wav"
    link.symlink_to(folder / "gone.wav")
    return link


def _looping(folder: Path) -> Path:
    link = folder / "section_00_source_test_normal_0099_a_1.wav"
    (folder / "other.wav").symlink_to(link)
    link.symlink_to(folder / "other.wav")
    return folder / "other.wav"  # the first of the two in name order


def _alias(folder: Path) -> Path:
    link = folder / "section_00_source_test_normal_0099_a_1.wav"
    link.symlink_to(min(folder.glob("*_anomaly_*.wav")))
    return link


LINK_ROWS = [
    pytest.param(
        _dangling, ("is a symlink to", "which does not exist", "fix the link or remove it"), id="dangling-link"
    ),
    pytest.param(_looping, ("fix the link",), id="looping-link"),
    pytest.param(_alias, ("are the same file (a link to another clip)", "keep one of them"), id="link-to-another-clip"),
]


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
@pytest.mark.parametrize(("make", "needles"), LINK_ROWS)
def test_link_row(make: Callable[[Path], Path], needles: tuple[str, ...], synth_root: Path, tiny_checkpoint: Path,
                  tmp_path: Path) -> None:  # fmt: skip
    folder = tmp_path / "data" / "fan" / "test"
    shutil.copytree(synth_root / "fan" / "test", folder)
    link = make(folder)
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([tmp_path / "data"], out, tiny_checkpoint), str(link), *needles)
    _assert_kept(out)


def test_an_unreadable_machine_folder_is_an_error_naming_it(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    locked, real_scandir = data / "gearbox", os.scandir

    def scandir(path: object = ".") -> object:  # what a folder without read permission does, even as root
        if Path(str(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(_embed([data], out, tiny_checkpoint), f"Cannot list {locked}: Permission denied",
                  "check its permissions")  # fmt: skip
    _assert_kept(out)


# ---------------------------------------------------------------------------------------------
# run folders and long names


def test_a_run_folder_locked_by_a_live_run(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (run / ".asd-run.lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
            result = _asd("run", synth_root, "--out", run, "--checkpoint", tiny_checkpoint, "--seconds", 1,
                          "--device", "cpu", "--no-finetune")  # fmt: skip
        finally:
            other.kill()
    _assert_error(result, f"{run} is in use by another asd run (pid {other.pid}", "choose another --out")
    assert [p.name for p in run.iterdir()] == [".asd-run.lock"]


def test_a_250_character_output_name_works_and_a_longer_one_is_one_error(synth_root: Path, tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / ("e" * 246 + ".npz")
    _assert_ok(_embed([synth_root / "fan" / "test"], out, tiny_checkpoint))
    assert load_embeddings(out).vectors.shape == (12, DIM) and [p.name for p in tmp_path.iterdir()] == [out.name]
    too_long = tmp_path / ("e" * 256 + ".npz")
    _assert_error(_embed([synth_root / "fan" / "test"], too_long, tiny_checkpoint),
                  "its name is 260 bytes long, more than the 255", "Choose a shorter output name")  # fmt: skip


def test_run_embedding_without_fine_tuning_is_one_error(
    synth_root: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    _assert_error(
        _asd(
            "run",
            synth_root,
            "--out",
            tmp_path / "run",
            "--checkpoint",
            tiny_checkpoint,
            "--no-finetune",
            "--embedding",
            "pooled",
        ),
        "--embedding chooses the fine-tuned model's vector",
        "--no-finetune",
    )
    assert not (tmp_path / "run").exists()


def test_a_run_folder_holding_user_files_and_a_stale_lock(synth_root: Path, tiny_checkpoint: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """The user's files in a run folder survive runs that redo stages; a killed run's lock is taken over."""
    run = tmp_path / "run"
    mine = [run / "notes.txt", run / "banks" / "mine.txt", run / "embeddings" / "mine.txt", run / "submission.txt"]
    for path in mine:
        _guard(path)
    args = ("run", synth_root, "--out", run, "--checkpoint", tiny_checkpoint, "--seconds", 1, "--device", "cpu",
            "--no-finetune")  # fmt: skip
    _assert_ok(_asd(*args))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs: the lock of a killed run
    (run / ".asd-run.lock").write_text(json.dumps({"pid": child.pid, "host": socket.gethostname()}))
    result = _asd(*args, "--k", 2)
    assert result.exit_code == 0, result.output
    assert f"Took over the stale lock of asd run pid {child.pid}" in result.stderr
    assert all(p.read_bytes() == OLD for p in mine) and not (run / ".asd-run.lock").exists()


# fine-tuning options, training that diverges, tampered run folders (issue 11 §3, §7)


def _finetune(data: Path, checkpoint: Path, out: Path, *extra: object) -> Result:
    lora = () if "--full-finetune" in extra else ("--lora-rank", 2)  # a LoRA option with it is an error
    return _asd("finetune", data, "--checkpoint", checkpoint, "--out", out, "--epochs", 2, "--seconds", 1,
                "--batch-size", 12, *lora, "--embedding-dim", 8, "--device", "cpu",
                "--val-fraction", 0, *extra)  # fmt: skip


FINETUNE_OPTION_ROWS = [
    pytest.param(("--lr", "nan"), "--lr must be a number > 0 and at most 1, got nan", id="lr-nan"),
    pytest.param(("--lr", "inf"), "--lr must be a number > 0 and at most 1, got inf", id="lr-inf"),
    pytest.param(("--lr", "0"), "--lr must be a number > 0 and at most 1, got 0.0", id="lr-0"),
    pytest.param(("--lr", "1e39"), "--lr must be a number > 0 and at most 1, got 1e+39", id="lr-beyond-fp32"),
    pytest.param(("--seed", "-1"), "--seed must be an integer from 0 to 4294967295", id="seed-negative"),
    pytest.param(("--seed", str(2**70)), "--seed must be an integer from 0 to 4294967295", id="seed-huge"),
    pytest.param(("--lora-alpha", "nan"), "--lora-alpha must be a finite number > 0, got nan", id="lora-alpha-nan"),
    pytest.param(("--lora-alpha", "-1"), "--lora-alpha must be a finite number > 0", id="lora-alpha-negative"),
    pytest.param(("--lora-dropout", "nan"), "--lora-dropout must be in [0, 1)", id="lora-dropout-nan"),
    pytest.param(("--margin", "inf"), "--margin must be in [0, pi/2) radians", id="margin-inf"),
    pytest.param(("--scale", "nan"), "--scale must be a finite number > 0", id="scale-nan"),
    pytest.param(("--mixup", "nan"), "--mixup must be a finite number >= 0", id="mixup-nan"),
    pytest.param(("--warmup-fraction", "inf"), "--warmup-fraction must be in [0, 1)", id="warmup-inf"),
    pytest.param(("--subcentres", "0"), "--subcentres must be at least 1", id="subcentres-0"),
    pytest.param(("--layer-decay", "nan", "--full-finetune"), "--layer-decay must be in (0, 1]", id="layer-decay-nan"),
    pytest.param(
        ("--layer-decay", "0.5"), "--layer-decay 0.5 only applies with --full-finetune", id="layer-decay-lora"
    ),
    pytest.param(  # typed, even at its default value: the user asked for LoRA options
        ("--full-finetune", "--lora-rank", "64", "--lora-alpha", "64"),
        "--lora-rank and --lora-alpha only apply to LoRA, and --full-finetune trains every weight without LoRA",
        id="full-finetune-lora-rank",
    ),
]


@pytest.mark.parametrize(("args", "needle"), FINETUNE_OPTION_ROWS)
def test_finetune_option_row(args: tuple[str, ...], needle: str, synth_root: Path, tiny_checkpoint: Path,
                             tmp_path: Path) -> None:  # fmt: skip
    _assert_error(_finetune(synth_root, tiny_checkpoint, tmp_path / "run", *args), needle)
    assert not (tmp_path / "run").exists()
    _assert_error(_asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "all", *args), needle)
    assert not (tmp_path / "all").exists()


NO_FINETUNE_ROWS = [
    pytest.param(("--epochs", "10"), "--epochs only applies to fine-tuning", id="epochs-at-its-default"),
    pytest.param(("--lora-rank", "4"), "--lora-rank only applies to fine-tuning", id="lora-rank"),
    pytest.param(
        ("--lr", "1e-3", "--labels", "attribute", "--full-finetune", "--lora-alpha", "8"),
        "--lr, --labels, --full-finetune and --lora-alpha only apply to fine-tuning",
        id="several",
    ),
    pytest.param(("--mixed-precision", "bf16"), "--mixed-precision only applies", id="mixed-precision"),
    pytest.param(("--seed", "1"), "--seed only applies to fine-tuning", id="seed"),
]


@pytest.mark.parametrize(("args", "needle"), NO_FINETUNE_ROWS)
def test_a_fine_tuning_option_with_no_finetune_is_one_error(args: tuple[str, ...], needle: str, synth_root: Path,
                                                            tiny_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    """Typed, even at its default value: the user asked for fine-tuning; nothing is written."""
    line = _assert_error(_asd("run", synth_root, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "run",
                              "--no-finetune", "--seconds", 1, "--num-workers", 0, *args), needle)  # fmt: skip
    assert line.endswith("and --no-finetune skips it; drop " + ("those options" if "," in needle else args[0])
                         + " or --no-finetune.")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_epoch(
        synth_root: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import asdcli.finetune.trainer as trainer

    real, calls = trainer.aam_loss, [0]

    def nan_in_epoch_2(*args: object) -> torch.Tensor:
        calls[0] += 1  # 24 clips, batch 12: calls 1-2 are epoch 1
        loss = real(*args)  # type: ignore[arg-type]
        return loss * float("nan") if calls[0] == 3 else loss

    monkeypatch.setattr(trainer, "aam_loss", nan_in_epoch_2)
    run = tmp_path / "run"
    result = _finetune(synth_root, tiny_checkpoint, run)
    assert result.exit_code == 1 and "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if "Error" in line]  # after the epoch 1 progress line
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr
    assert errors[0].startswith("Error: Fine-tuning stopped: the loss became nan at epoch 2, step 1;")
    assert f"{run / 'state' / 'state.safetensors'} keeps the state after epoch 1" in errors[0]
    assert not (run / "run.json").exists()
    monkeypatch.setattr(trainer, "aam_loss", real)
    result = _finetune(synth_root, tiny_checkpoint, run, "--resume")
    _assert_ok(result)
    assert "resuming after epoch 1" in result.stderr and (run / "run.json").is_file()


def _rewrite_safetensors(
    path: Path, change: Callable[[dict[str, torch.Tensor]], None], meta: dict[str, str] | None = None
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        old_meta = f.metadata()
    change(tensors)
    merged = dict(old_meta or {})
    if meta and "head" in merged:  # a head's fields are one JSON key (run_dir.HEAD_META_KEY)
        merged["head"] = json.dumps({**json.loads(merged["head"]), **meta}, sort_keys=True)
        meta = None
    save_file(tensors, str(path), metadata={**merged, **(meta or {})})


def _first_nan(tensors: dict[str, torch.Tensor]) -> None:
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")


def _as_int(tensors: dict[str, torch.Tensor]) -> None:
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.int32)


def _narrow_head(tensors: dict[str, torch.Tensor]) -> None:
    tensors["fc1.weight"] = tensors["fc1.weight"][:, :32].contiguous()


def _adapter_config(**change: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        path = run / "adapter" / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))

    return edit


ADAPTER_FILE, HEAD_FILE = "adapter/adapter_model.safetensors", "head.safetensors"
RUN_FOLDER_ROWS = [
    pytest.param(
        _adapter_config(target_modules="q_proj"),
        "adapter/adapter_config.json",
        "has target_modules 'q_proj', not a list of module names",
        id="target-modules-string",
    ),
    pytest.param(
        _adapter_config(target_modules=".*_proj"),
        "adapter/adapter_config.json",
        "has target_modules '.*_proj'",
        id="target-modules-regex",
    ),
    pytest.param(_adapter_config(r=0), "adapter/adapter_config.json", "has r 0, not an integer >= 1", id="r-0"),
    pytest.param(
        _adapter_config(peft_type="IA3"),
        "adapter/adapter_config.json",
        "has peft_type 'IA3', not 'LORA'",
        id="other-peft-type",
    ),
    pytest.param(
        _adapter_config(lora_alpha=float("nan")),
        "adapter/adapter_config.json",
        "has lora_alpha nan",
        id="lora-alpha-nan",
    ),
    pytest.param(
        lambda run: _rewrite_safetensors(run / ADAPTER_FILE, _first_nan),
        ADAPTER_FILE,
        "holds NaN or Inf",
        id="adapter-nan",
    ),
    pytest.param(
        lambda run: _rewrite_safetensors(run / ADAPTER_FILE, _as_int),
        ADAPTER_FILE,
        "as torch.int32, not floating point",
        id="adapter-int",
    ),
    pytest.param(
        lambda run: _rewrite_safetensors(run / HEAD_FILE, _first_nan), HEAD_FILE, "holds NaN or Inf", id="head-nan"
    ),
    pytest.param(
        lambda run: _rewrite_safetensors(run / HEAD_FILE, _as_int),
        HEAD_FILE,
        "as torch.int32, not floating point",
        id="head-int",
    ),
    pytest.param(
        lambda run: _rewrite_safetensors(run / HEAD_FILE, _narrow_head, {"in_dim": "32"}),
        HEAD_FILE,
        "takes 32-d backbone features, but the checkpoint's backbone is 64-d",
        id="head-wrong-in-dim",
    ),
    pytest.param(
        lambda run: (run / "run.json").write_text("[1, 2]"),
        "run.json",
        "is not an `asd finetune` run record",
        id="run-json-list",
    ),
]


@pytest.mark.parametrize(("tamper", "file", "needle"), RUN_FOLDER_ROWS)
def test_run_folder_row(tamper: Callable[[Path], None], file: str, needle: str, adapter_run: Path,
                        synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:  # fmt: skip
    import shutil

    run = tmp_path / "run"
    shutil.copytree(adapter_run, run)
    tamper(run)
    out = _guard(tmp_path / "out" / "emb.npz")
    _assert_error(
        _embed([synth_root / "fan" / "test"], out, tiny_checkpoint, "--adapter", run), str(run / file), needle
    )
    _assert_kept(out)


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
    pytest.param(
        _edit("mean", lambda a: a.astype(np.float64) + 1e300), "mean contains NaN or Inf", id="mean-beyond-float32"
    ),
    pytest.param(
        _edit("std", lambda a: a.astype(np.float64) * 1e-300), "std has zero or negative", id="std-below-float32"
    ),
    pytest.param(_set("threshold", np.nan), "threshold contains NaN or Inf", id="nan-threshold"),
    pytest.param(_set("threshold", "0.5"), "threshold has dtype <U", id="string-threshold"),
    pytest.param(_set("threshold", [0.1, 0.2]), "threshold has shape (2,)", id="array-threshold"),
    pytest.param(_config(k=10_000), "k = 10000 needs at least 10000 vectors", id="k-larger-than-bank"),
    pytest.param(_config(k="3"), "--k must be an integer", id="k-a-string"),
    pytest.param(_config(k=2.5), "--k must be an integer", id="k-not-an-int"),
    pytest.param(_config(score_norm="density"), "its density K is missing", id="density-without-radii-k"),
    pytest.param(
        _config(score_norm="domain-zscore"), "its source statistics are missing", id="zscore-without-statistics"
    ),
    pytest.param(_meta(schema_version=1), "has bank schema 1, this asdcli reads 2", id="old-schema"),
    pytest.param(_meta(config=[1, 2]), "'config' is not a JSON object", id="config-a-list"),
    pytest.param(
        lambda arrays, meta: meta.clear() or meta.update(list_meta=True), "is not a bank file", id="meta-without-kind"
    ),
    pytest.param(
        _meta(loo_stats={"mean": "x", "std": 1.0}), "leave-one-out statistics are not finite", id="string-loo-stats"
    ),
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
        _assert_error(
            _asd("score", "--bank", bad, "--embeddings", fan_bank.parent / "train.npz", "--all"),
            str(bad),
            "not a JSON object",
        )


def test_a_bank_of_zero_column_embeddings_is_refused(tmp_path: Path) -> None:
    n = 4
    fields = {f: np.asarray([f"c{i}.wav" for i in range(n)]) for f in Embeddings.FIELDS}
    fields.update(
        split=np.asarray(["train"] * n),
        machine=np.asarray(["fan"] * n),
        section=np.asarray(["00"] * n),
        domain=np.asarray(["source"] * n),
    )
    emb = tmp_path / "emb.npz"
    save_embeddings(emb, Embeddings(vectors=np.zeros((n, 0), np.float32), meta={}, **fields))
    _assert_error(_asd("fit-bank", emb, "--out", tmp_path / "bank.npz"), "at least one column", "re-create it")


def test_a_bank_whose_checkpoint_moved_says_so(synth_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "beats.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    train, bank = tmp_path / "train.npz", tmp_path / "bank.npz"
    _assert_ok(_embed([synth_root / "fan" / "train"], train, checkpoint))
    _assert_ok(_asd("fit-bank", train, "--out", bank))
    checkpoint.rename(tmp_path / "moved.pt")
    _assert_error(
        _asd("score", "--bank", bank, synth_root / "fan" / "test", "--device", "cpu"),
        f"was made with the checkpoint {checkpoint}, which does not exist any more",
        "pass --checkpoint",
    )
