"""Deployment: int8 embedding on CPU, ONNX export and `asd embed --onnx`, the README's snippet.

Tiny random BEATs (2 layers, 64-d), half-second synthetic clips. The ONNX tests skip cleanly
without onnxruntime (`pip install 'asdcli[onnx]'`).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tolerances import fp32_tiny_model_atol
from torch import nn
from typer.testing import CliRunner

from asdcli.artifacts import load_embeddings
from asdcli.backend.bank import load_bank
from asdcli.backend.score import score_vectors
from asdcli.cli.main import app
from asdcli.errors import ConfigError
from asdcli.frontend.beats import load_beats
from asdcli.frontend.embedder import MeanPooledBackbone
from asdcli.frontend.export import cosine_rows
from asdcli.frontend.features import beats_fbank
from asdcli.frontend.quantize import QUANTIZED_LINEARS, for_precision, merge_lora, quantize_for_cpu

SR = 16000
SECONDS = 0.5
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fan: 6 train clips (tone + noise), 2 test clips (one with a click train)."""
    root = tmp_path_factory.mktemp("dev")
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * SR)) / SR
    for split, count in (("train", 6), ("test", 2)):
        folder = root / "fan" / split
        folder.mkdir(parents=True)
        for i in range(count):
            wave = 0.3 * np.sin(2 * np.pi * (300 + 15 * i) * t) + 0.05 * rng.standard_normal(t.size)
            label = "anomaly" if split == "test" and i == 1 else "normal"
            if label == "anomaly":
                wave[::400] += 0.8
            sf.write(folder / f"section_00_source_{split}_{label}_{i:04d}_a_{i}.wav", wave.astype(np.float32), SR)
    return root


def _waves(n: int = 4, seconds: float = SECONDS, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        (0.1 * np.random.default_rng(seed).standard_normal((n, int(seconds * SR)))).astype(np.float32)
    )


def _embed(module: nn.Module, wave: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return module(beats_fbank(wave)).float().numpy()


def _lora_embedder(checkpoint: Path) -> nn.Module:
    """The tiny backbone with a LoRA adapter whose B matrices are random (so it changes the output)."""
    from asdcli.finetune.lora import inject_lora, make_lora_config

    model = inject_lora(copy.deepcopy(load_beats(checkpoint).model), make_lora_config(4, 8.0, 0.0))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return MeanPooledBackbone(model).eval()


# --- int8 ----------------------------------------------------------------------------------------


def test_int8_quantizes_the_transformer_linears_only_and_keeps_the_vectors(tiny_checkpoint: Path) -> None:
    module = MeanPooledBackbone(load_beats(tiny_checkpoint).model).eval()
    quantized = quantize_for_cpu(module)
    kinds = {name: type(m).__name__ for name, m in quantized.named_modules()}
    int8 = [
        n
        for n, k in kinds.items()
        if k == "Linear" and type(quantized.get_submodule(n)).__module__.startswith("torch.ao")
    ]
    layers = load_beats(tiny_checkpoint).model.cfg.encoder_layers
    assert len(int8) == len(QUANTIZED_LINEARS) * layers
    assert all(n.rsplit(".", 1)[-1] in QUANTIZED_LINEARS for n in int8)
    assert isinstance(quantized.get_submodule("backbone.encoder.layers.0.self_attn.grep_linear"), nn.Linear)
    assert type(module.get_submodule("backbone.encoder.layers.0.fc1")) is nn.Linear  # the original is untouched
    ref, got = _embed(module, _waves()), _embed(quantized, _waves())
    assert cosine_rows(got, ref).min() >= 0.99
    assert not np.array_equal(got, ref)


def test_merge_lora_computes_what_the_adapter_computes(tiny_checkpoint: Path) -> None:
    adapted = _lora_embedder(tiny_checkpoint)
    merged = merge_lora(adapted)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ref, plain = _embed(adapted, _waves()), _embed(MeanPooledBackbone(load_beats(tiny_checkpoint).model), _waves())
    assert np.abs(ref - plain).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(_embed(merged, _waves()), ref, atol=fp32_tiny_model_atol(ref), rtol=0)  # W+BA folded
    assert cosine_rows(_embed(quantize_for_cpu(adapted), _waves()), ref).min() >= 0.99


def test_precision_checks() -> None:
    module = nn.Linear(2, 2)
    assert for_precision(module, "fp32", torch.device("cpu")) is module
    with pytest.raises(ConfigError, match="CPU only"):
        for_precision(module, "int8", torch.device("cuda"))
    with pytest.raises(ConfigError, match="--precision must be one of fp32, int8"):
        for_precision(module, "bf16", torch.device("cpu"))


def test_cli_embed_int8_records_its_precision(data_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    common = ["embed", str(data_dir / "fan" / "train"), "--checkpoint", str(tiny_checkpoint), "--seconds", str(SECONDS)]
    runner = CliRunner()
    assert runner.invoke(app, [*common, "--out", str(tmp_path / "fp32.npz")]).exit_code == 0
    result = runner.invoke(app, [*common, "--precision", "int8", "--out", str(tmp_path / "int8.npz")])
    assert result.exit_code == 0, result.output
    fp32, int8 = load_embeddings(tmp_path / "fp32.npz"), load_embeddings(tmp_path / "int8.npz")
    assert (fp32.meta["frontend"]["precision"], int8.meta["frontend"]["precision"]) == ("fp32", "int8")
    assert cosine_rows(int8.vectors, fp32.vectors).min() >= 0.99
    bad = runner.invoke(app, [*common, "--precision", "int4", "--out", str(tmp_path / "x.npz")])
    assert bad.exit_code == 1 and "--precision must be one of fp32, int8" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "x.npz").exists()


# --- ONNX ----------------------------------------------------------------------------------------

onnx_only = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("onnxruntime", "onnx", "onnxscript")),
    reason="needs the onnx extra: pip install 'asdcli[onnx]'",
)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = CliRunner().invoke(
        app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--seconds", "1"]
    )
    assert result.exit_code == 0, result.output
    diff = float(re.search(r"max abs diff ([0-9.e+-]+)\)", result.output).group(1))
    assert diff <= 1e-4
    return out


@onnx_only
def test_asd_embed_onnx_equals_the_torch_embedding(exported: Path, data_dir: Path, tiny_checkpoint: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    clips, runner = str(data_dir / "fan"), CliRunner()
    torch_run = runner.invoke(app, ["embed", clips, "--checkpoint", str(tiny_checkpoint), "--seconds", str(SECONDS),
                                    "--out", str(tmp_path / "t.npz")])  # fmt: skip
    onnx_run = runner.invoke(app, ["embed", clips, "--onnx", str(exported), "--seconds", str(SECONDS),
                                   "--batch-size", "3", "--out", str(tmp_path / "o.npz")])  # fmt: skip
    assert torch_run.exit_code == 0 and onnx_run.exit_code == 0, onnx_run.output
    ref, got = load_embeddings(tmp_path / "t.npz"), load_embeddings(tmp_path / "o.npz")
    assert list(got.filenames) == list(ref.filenames) and list(got.label) == list(ref.label)
    np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-4 * max(1.0, float(np.abs(ref.vectors).max())), rtol=0)
    assert got.meta["frontend"] == ref.meta["frontend"]  # verified to 1e-4: the same front end as torch fp32
    assert got.meta["embedding_dim"] == ref.meta["embedding_dim"]
    assert (got.meta["precision"], got.meta["runtime"]) == ("fp32", "onnxruntime")


@onnx_only
def test_export_merges_lora_and_verifies(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from asdcli.frontend.export import export_onnx, load_onnx

    adapted = _lora_embedder(tiny_checkpoint)
    result = export_onnx(adapted, {"embedding_dim": 64, "adapter_id": "test"}, tmp_path / "lora.onnx", seconds=1.0)
    assert result.max_abs_diff <= 1e-4 and result.clips == 3
    session, meta = load_onnx(tmp_path / "lora.onnx")
    assert meta["adapter_id"] == "test" and meta["precision"] == "fp32"
    wave = _waves(2, seconds=0.7).numpy()  # another length than the export's example
    ref = _embed(adapted, torch.from_numpy(wave))
    atol = 1e-4 * max(1.0, float(np.abs(ref).max()))  # export's FP32_TOLERANCE is in units of the output's size
    np.testing.assert_allclose(session.run(["embeddings"], {"waveform": wave})[0], ref, atol=atol, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["lora.onnx"]  # no temp files left


@onnx_only
def test_export_int8_quantizes_the_linears_not_the_fbank(exported: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import onnx

    from asdcli.frontend import export

    # the graph is the fixture's (tracing it again costs seconds); quantizing, checking and writing run for real
    monkeypatch.setattr(export, "_export_proto", lambda module, seconds: onnx.load(str(exported)))
    out = tmp_path / "int8.onnx"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--int8",
                                      "--seconds", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert float(re.search(r"min cosine ([0-9.]+)\)", result.output).group(1)) >= 0.99
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") >= 6 * 2 and "DFT" in ops and "Softmax" in ops
    assert "MatMul" in ops  # the mel filterbank (and attention) products stay float
    assert json.loads({p.key: p.value for p in model.metadata_props}["asdcli"])["precision"] == "int8"


@onnx_only
def test_readme_snippet_scores_like_asd_score(exported: Path, data_dir: Path, tmp_path: Path) -> None:
    """The README's plain-numpy ONNX snippet gives the score asdcli gives for the same clip."""
    runner = CliRunner()
    emb = tmp_path / "train.npz"
    assert runner.invoke(app, ["embed", str(data_dir / "fan" / "train"), "--onnx", str(exported), "--seconds",
                               str(SECONDS), "--out", str(emb)]).exit_code == 0  # fmt: skip
    bank = tmp_path / "bank.npz"
    assert runner.invoke(app, ["fit-bank", str(emb), "--machine", "fan", "--out", str(bank)]).exit_code == 0
    clip = sorted((data_dir / "fan" / "test").glob("*anomaly*.wav"))[0]
    snippet = re.search(r"```python\n(import numpy as np, onnxruntime.*?)```", README.read_text(), re.S)
    assert snippet is not None, "README lost its ONNX snippet"
    code = (snippet.group(1).replace('"model.onnx"', repr(str(exported))).replace('"bank.npz"', repr(str(bank)))
            .replace('"clip.wav"', repr(str(clip))).replace("SECONDS = 10", f"SECONDS = {SECONDS}"))  # fmt: skip
    namespace: dict[str, object] = {}
    exec(compile(code, "README snippet", "exec"), namespace)
    from asdcli.data.audio import AudioConfig, load_clip
    from asdcli.frontend.export import load_onnx

    session, _ = load_onnx(exported)
    wave = load_clip(clip, AudioConfig(seconds=SECONDS))[None]
    expected = float(score_vectors(load_bank(bank), session.run(["embeddings"], {"waveform": wave})[0])[0])
    assert abs(float(namespace["score"]) - expected) <= 1e-5  # type: ignore[arg-type]


@onnx_only
def test_onnx_errors_are_one_line(exported: Path, data_dir: Path, tiny_checkpoint: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    runner, clips = CliRunner(), str(data_dir / "fan" / "train")
    cases = [
        (
            ["embed", clips, "--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "e.npz")],
            "does not exist",
        ),
        (
            [
                "embed",
                clips,
                "--onnx",
                str(exported),
                "--checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(tmp_path / "e.npz"),
            ],
            "drop --checkpoint",
        ),
        (
            ["embed", clips, "--onnx", str(tiny_checkpoint), "--out", str(tmp_path / "e.npz")],
            "not a readable ONNX model",
        ),
        (["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)], "is a folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    result = runner.invoke(app, ["embed", clips, "--onnx", str(exported), "--out", str(tmp_path / "e.npz")])
    assert result.exit_code == 1 and "pip install 'asdcli[onnx]'" in result.output
    assert not (tmp_path / "e.npz").exists()


def test_int8_embedding_of_a_clip_does_not_depend_on_its_batch_mates(tiny_checkpoint: Path) -> None:
    module = MeanPooledBackbone(load_beats(tiny_checkpoint).model).eval()
    int8 = for_precision(module, "int8", torch.device("cpu"))
    quiet = _waves()[:1] * 0.01
    loud = _waves()[1:2] * 50.0  # another activation range: a batch-wide int8 scale would change quiet's
    # Each clip's fbank is made alone, so the int8 module gets the very same (1, T, 128) input for
    # quiet either way (a batched fbank may round differently on another CPU, and one flipped int8
    # rounding is a whole quantization step): bit equality then tests the batch-mates only.
    quiet_fbank, loud_fbank = beats_fbank(quiet), beats_fbank(loud)
    with torch.inference_mode():
        alone = int8(quiet_fbank).numpy()
        together = int8(torch.cat([loud_fbank, quiet_fbank])).numpy()
    np.testing.assert_array_equal(together[1:], alone)
