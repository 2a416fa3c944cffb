"""`asd embed` and embed_clips on short synthetic DCASE-named clips with a tiny random checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tolerances import fp32_tiny_model_atol
from torch import nn
from typer.testing import CliRunner

from asdcli.artifacts import load_embeddings
from asdcli.cli.main import app
from asdcli.data.audio import AudioConfig, load_clip
from asdcli.data.dataset import discover_clips
from asdcli.device import resolve_device
from asdcli.errors import ConfigError
from asdcli.frontend.beats import load_beats, tiny_beats_config
from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
from asdcli.frontend.embed import embed_clips
from asdcli.frontend.embedder import EmbedConfig
from asdcli.frontend.features import beats_fbank
from asdcli.frontend.spec import cfg_sha256

SECONDS = 0.5
NAMES = {
    ("fan", "train"): [
        "section_00_source_train_normal_0000_m-n_W.wav",
        "section_00_target_train_normal_0001_m-n_X.wav",
    ],
    ("fan", "test"): ["section_00_source_test_anomaly_0000_m-n_W.wav"],
    ("valve", "train"): ["section_00_source_train_normal_0000_pat_00_v1pat_01.wav"],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dev")
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * 16000)) / 16000
    for (machine, split), names in NAMES.items():
        folder = root / machine / split
        folder.mkdir(parents=True)
        for i, name in enumerate(names):
            wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(folder / name, wave.astype(np.float32), 16000, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1)


def test_embed_clips_matches_a_manual_forward(data_dir, checkpoint):
    clips = discover_clips([data_dir])
    emb = embed_clips(clips, EmbedConfig(checkpoint=checkpoint, batch_size=3, device="cpu", seconds=SECONDS))
    assert emb.vectors.shape == (4, 64) and emb.vectors.dtype == np.float32
    assert list(emb.filenames) == [c.name for c in clips]
    assert list(emb.machine) == ["fan", "fan", "fan", "valve"]
    assert set(emb.split) == {"train", "test"} and "anomaly" in set(emb.label)
    model = load_beats(checkpoint).model
    waves = torch.stack([torch.from_numpy(load_clip(c.path, AudioConfig(seconds=SECONDS))) for c in clips])
    with torch.no_grad():
        manual = model(beats_fbank(waves)).mean(dim=1).numpy()
    # batches of 3 and 1 against one of 4: other GEMM kernels on some CPUs, fp32 rounding only
    np.testing.assert_allclose(emb.vectors, manual, rtol=0, atol=fp32_tiny_model_atol(manual))
    single = embed_clips(clips, EmbedConfig(checkpoint=checkpoint, batch_size=1, num_workers=1, seconds=SECONDS))
    np.testing.assert_allclose(single.vectors, emb.vectors, rtol=0, atol=fp32_tiny_model_atol(manual))
    spec = emb.meta["frontend"]
    assert spec["checkpoint_sha256"] == load_beats(checkpoint).sha256 and spec["pooling"] == "mean"
    assert spec["backbone_cfg_sha256"] == cfg_sha256(tiny_beats_config()) and spec["adapter_sha256"] is None
    assert spec["clip_seconds"] == SECONDS and spec["layers"] == "last" and spec["embedding"] == "backbone"
    assert emb.meta["backbone_cfg"] == tiny_beats_config()


def test_adapter_is_loaded_lazily_through_the_finetune_api(data_dir, checkpoint, monkeypatch):
    import asdcli.finetune.run_dir

    class Head(nn.Module):
        def forward(self, fbank: torch.Tensor) -> torch.Tensor:  # (B, T, 128) -> (B, 3)
            return fbank.mean(dim=1)[:, :3]

    def fake(run_dir, loaded, embedding):
        assert loaded.sha256 and embedding == "pooled"
        return Head(), {"adapter_id": "run-123", "embedding": embedding, "embedding_dim": 3}

    monkeypatch.setattr(asdcli.finetune.run_dir, "load_adapter_embedder", fake)
    cfg = EmbedConfig(checkpoint=checkpoint, adapter=data_dir, embedding="pooled", seconds=SECONDS)
    emb = embed_clips(discover_clips([data_dir / "valve"]), cfg)
    assert emb.vectors.shape == (1, 3) and emb.meta["adapter_id"] == "run-123"


def test_cli_embed_writes_a_plain_npz(data_dir, checkpoint, tmp_path):
    out = tmp_path / "emb.npz"
    args = ["embed", str(data_dir / "fan"), str(data_dir / "valve" / "train"), "--checkpoint", str(checkpoint),
            "--out", str(out), "--seconds", str(SECONDS), "--device", "cpu", "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Embedded 4 clips into 64-d vectors" in result.stderr
    with np.load(out, allow_pickle=False) as z:
        assert z["embeddings"].shape == (4, 64) and z["embeddings"].dtype == np.float32
        assert z["filenames"][0].startswith("section_00_") and set(z["domain"]) == {"source", "target"}
        meta = json.loads(str(z["meta"]))
    assert meta["schema_version"] == 2 and meta["tool_version"] and len(meta["frontend"]["checkpoint_sha256"]) == 64
    assert load_embeddings(out).dim == 64


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkpoint", "missing.pt"], "does not exist"),
        (["--checkpoint", "{data}/fan/train/section_00_source_train_normal_0000_m-n_W.wav"], "not a readable BEATs"),
        (["--embedding", "head"], "needs --adapter"),
        (["--device", "tpu"], "--device must be one of"),
    ],
)
def test_cli_embed_errors_are_one_line(data_dir, checkpoint, tmp_path, extra, message):
    extra = [e.format(data=data_dir) for e in extra]
    if "--checkpoint" not in extra:
        extra += ["--checkpoint", str(checkpoint)]
    result = CliRunner().invoke(app, ["embed", str(data_dir), "--out", str(tmp_path / "e.npz"), *extra])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.stderr and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "e.npz").exists()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("AUTO").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.slow
def test_accelerate_launch_two_processes_writes_the_single_process_file(data_dir, checkpoint, tmp_path):
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate launcher not installed")
    common = [str(data_dir), "--checkpoint", str(checkpoint), "--seconds", str(SECONDS), "--batch-size", "1"]
    single = CliRunner().invoke(app, ["embed", *common, "--out", str(tmp_path / "one.npz")])
    assert single.exit_code == 0, single.output
    cmd = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "asdcli", "embed", *common, "--out", str(tmp_path / "two.npz")]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert a.files == b.files
        for k in a.files:
            if k == "embeddings":  # fewer threads per process may sum in another order (MKL on AVX-512)
                np.testing.assert_allclose(b[k], a[k], rtol=0, atol=fp32_tiny_model_atol(a[k]))
            else:
                assert np.array_equal(a[k], b[k]), k


def test_cli_embed_interrupted_continues_from_its_saved_parts(data_dir, checkpoint, tmp_path, monkeypatch):
    import asdcli.frontend.embed

    out = tmp_path / "emb.npz"
    args = ["embed", str(data_dir), "--checkpoint", str(checkpoint), "--out", str(out), "--seconds", str(SECONDS),
            "--device", "cpu"]  # fmt: skip
    assert CliRunner().invoke(app, [*args[:5], str(tmp_path / "whole.npz"), *args[6:]]).exit_code == 0
    monkeypatch.setattr(asdcli.frontend.embed, "EMBED_CHUNK", 2)  # 4 clips -> 2 parts
    real_embed = asdcli.frontend.embed.embed
    calls: list[int] = []

    def interrupt_second_part(embedder, clips, *a, **kw):
        calls.append(len(clips))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_embed(embedder, clips, *a, **kw)

    monkeypatch.setattr(asdcli.frontend.embed, "embed", interrupt_second_part)
    assert CliRunner().invoke(app, args).exit_code == 130
    assert not out.exists()
    assert [p.name for p in tmp_path.glob(".emb.npz.parts-*/*.npz")] == ["00000.npz"]
    calls.clear()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [2]  # only the part that was not saved
    assert not list(tmp_path.glob(".emb.npz.parts-*"))
    whole = load_embeddings(tmp_path / "whole.npz").vectors
    # parts of 2 clips are other batches than one of 4: other GEMM kernels, fp32 rounding only
    np.testing.assert_allclose(load_embeddings(out).vectors, whole, rtol=0, atol=fp32_tiny_model_atol(whole))


def test_a_non_finite_embedding_is_an_error_naming_the_clip(data_dir, checkpoint):
    from dataclasses import replace

    from asdcli.errors import ArtifactError
    from asdcli.frontend.embed import embed
    from asdcli.frontend.embedder import build_embedder

    class NanForSecond(nn.Module):
        def forward(self, fbank: torch.Tensor) -> torch.Tensor:  # (B, T, 128) -> (B, 2), NaN in row 1
            out = fbank.mean(dim=1)[:, :2].clone()
            out[1:2] = float("nan")
            return out

    clips = discover_clips([data_dir / "fan" / "train"])
    embedder = replace(build_embedder(EmbedConfig(checkpoint=checkpoint, device="cpu", seconds=SECONDS)),
                       module=NanForSecond())  # fmt: skip
    with pytest.raises(ArtifactError, match=f"The embedding of {clips[1].path} is NaN or Inf \\(1 clips\\)"):
        embed(embedder, clips)


def test_long_clip_notice_counts_clips_and_ignored_seconds():
    from asdcli.frontend.embed import long_clip_notice

    assert long_clip_notice([10.0, 9.5, 10.0 + 1e-9], 10.0) is None and long_clip_notice([60.0], None) is None
    assert long_clip_notice([32.0, 10.0, 12.5], 10.0) == (
        "Notice: 2 clip(s) are longer than --seconds 10; only their first 10 s are used, "
        "24.5 s of audio in all is ignored."
    )


def test_embed_stage_of_asd_run_says_when_clips_are_cut(data_dir, checkpoint, tmp_path):
    """asd run shares the embedding job: its notice names how much audio the clips lose."""
    result = CliRunner().invoke(app, ["run", str(data_dir), "--out", str(tmp_path / "run"), "--checkpoint",
                                      str(checkpoint), "--no-finetune", "--seconds", "0.25", "--device", "cpu"])  # fmt: skip
    assert "Notice: 4 clip(s) are longer than --seconds 0.25; only their first 0.25 s are used, 1.0 s" in result.output


def test_the_default_batch_follows_the_device_and_the_model_size() -> None:
    from asdcli.frontend.embedder import auto_batch_size

    assert auto_batch_size(torch.device("cpu"), 768) == 2  # iter3 on a CPU: batch 2 is the fastest
    assert auto_batch_size(torch.device("cpu"), 64) == 8  # a small model: per-call overhead dominates
    assert auto_batch_size(torch.device("cuda"), 768) == 8
