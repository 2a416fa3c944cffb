"""The artifact contract (FrontendSpec), the checkpoint hash cache and resources built once per job."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import asdcli.artifacts
from asdcli.artifacts import cached_sha256, check_not_input, sha256_file
from asdcli.cli.main import app
from asdcli.errors import ArtifactError, ArtifactMismatch, ConfigError
from asdcli.frontend.spec import SPEC_FIELDS, FrontendSpec, check_same_frontend, frontend_differences, spec_of

SPEC = FrontendSpec(checkpoint_sha256="a" * 64, backbone_cfg_sha256="b" * 64, adapter_sha256=None,
                    embedding="backbone", layers="last", pooling="mean", clip_seconds=10.0, channel=None,
                    sample_rate=16000)  # fmt: skip


def _meta(**changes: object) -> dict[str, object]:
    return {"frontend": {**SPEC.to_dict(), **changes}}


def test_equal_specs_pass_and_every_field_is_compared() -> None:
    check_same_frontend(_meta(), _meta(), "A", "B")
    other = {"checkpoint_sha256": "c" * 64, "backbone_cfg_sha256": "d" * 64, "adapter_sha256": "e" * 64,
             "embedding": "head", "layers": "7,10", "pooling": "max", "clip_seconds": 2.0, "channel": 1,
             "sample_rate": 8000, "features": "other", "precision": "int8", "schema_version": 2}  # fmt: skip
    assert set(other) == set(SPEC_FIELDS)
    for field, value in other.items():
        with pytest.raises(ArtifactMismatch, match=f"different front ends \\({field} "):
            check_same_frontend(_meta(), _meta(**{field: value}), "A", "B")


def test_a_missing_field_is_a_mismatch_named_in_one_short_line() -> None:
    lacking = _meta()
    del lacking["frontend"]["channel"]  # type: ignore[attr-defined]
    with pytest.raises(ArtifactMismatch) as e:
        check_same_frontend(_meta(), lacking, "the bank", "emb.npz")
    text = str(e.value)
    assert "channel null vs missing" in text and "\n" not in text and len(text) < 300
    assert frontend_differences(SPEC.to_dict(), None) == list(SPEC_FIELDS)


def test_a_long_value_is_cut_inside_its_quotes() -> None:
    with pytest.raises(ArtifactMismatch) as e:
        check_same_frontend(_meta(), _meta(checkpoint_sha256="b" * 64), "A", "B")
    shown = str(e.value).split("(checkpoint_sha256 ", 1)[1].split(")", 1)[0]
    left, right = shown.split(" vs ")
    assert all(side.startswith('"') and side.endswith('..."') for side in (left, right)), shown


def test_many_differences_are_summarised() -> None:
    changed = _meta(clip_seconds=4.0, channel=0, layers="1", pooling="max", sample_rate=1, embedding="head")
    with pytest.raises(ArtifactMismatch) as e:
        check_same_frontend(_meta(), changed, "A", "B")
    assert "and 2 more" in str(e.value) and "\n" not in str(e.value)


def test_an_artifact_without_a_spec_cannot_be_checked() -> None:
    with pytest.raises(ArtifactMismatch, match="B does not record its front end"):
        check_same_frontend(_meta(), {"checkpoint_sha256": "a" * 64}, "A", "B")
    with pytest.raises(ArtifactError, match="malformed front-end record"):
        spec_of({"frontend": [1, 2]}, "B")
    assert spec_of({"frontend": "beats-kaldi-fbank128-v1"}, "a bank of asdcli 0.1") is None  # before the contract


def test_the_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        SPEC.layers = "1"  # type: ignore[misc]
    assert replace(SPEC, layers="1").to_dict()["layers"] == "1"


def test_checkpoint_hash_is_cached_and_never_trusted_across_changes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("ASD_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []
    monkeypatch.setattr(asdcli.artifacts, "sha256_file", lambda p, *a: calls.append(Path(p)) or sha256_file(p, *a))
    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"one")
    first = sha256_file(f)
    assert cached_sha256(f) == first and cached_sha256(f) == first
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "sha256").iterdir())) == 1
    st = f.stat()
    f.write_bytes(b"two")  # same size, other content, a later mtime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cached_sha256(f) == sha256_file(f) != first and len(calls) == 2
    for entry in (tmp_path / "cache" / "sha256").iterdir():  # a forged entry is not believed
        entry.write_text(json.dumps({"key": "forged", "sha256": "0" * 64}))
    assert cached_sha256(f) == sha256_file(f) and len(calls) == 3


def test_an_unwritable_cache_still_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ASD_CACHE_DIR", str(blocker / "cache"))
    f = tmp_path / "ckpt.pt"
    f.write_bytes(b"abc")
    assert cached_sha256(f) == sha256_file(f)


def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    a = tmp_path / "a.npz"
    a.write_bytes(b"x")
    (tmp_path / "link.npz").symlink_to(a)
    for out in (a, tmp_path / "link.npz", tmp_path / "." / "a.npz"):
        with pytest.raises(ConfigError, match="is one of the inputs"):
            check_not_input(out, [a], "--out")
    check_not_input(tmp_path / "b.npz", [a], "--out")
    check_not_input(None, [a], "--out")


def test_a_multi_part_job_loads_and_hashes_its_checkpoint_once(tiny_checkpoint: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import asdcli.data.audio
    import asdcli.frontend.beats.checkpoint
    import asdcli.frontend.embed

    monkeypatch.setenv("ASD_CACHE_DIR", str(tmp_path / "fresh-cache"))
    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(folder / f"section_00_source_test_normal_{i:04d}_a_1.wav", 0.1 * rng.standard_normal(8000), 16000)
    counts = {"load": 0, "hash": 0, "probe": 0}

    def counting(module: object, name: str, key: str) -> None:
        real = getattr(module, name)

        def wrapper(*a: object, **kw: object) -> object:
            counts[key] += 1
            return real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    counting(asdcli.frontend.beats.checkpoint.torch, "load", "load")
    counting(asdcli.artifacts, "sha256_file", "hash")
    counting(asdcli.data.audio.sf, "info", "probe")
    monkeypatch.setattr(asdcli.frontend.embed, "EMBED_CHUNK", 2)  # 5 clips -> 3 parts
    out = tmp_path / "emb.npz"
    result = CliRunner().invoke(app, ["embed", str(folder), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                                      "--seconds", "0.5", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert counts == {"load": 1, "hash": 1, "probe": 5}
