"""Our BEATs vs the official code's outputs (shared fixtures), pinned config values, loading errors."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from asdcli.errors import ArtifactError, ArtifactNotFound, ConfigError
from asdcli.frontend.beats import (
    BEATs,
    BeatsConfig,
    load_beats,
    relative_position_buckets,
    resolve_checkpoint,
    save_official_checkpoint,
    tiny_beats_config,
)
from asdcli.frontend.features import beats_fbank

# The official-output fixtures are 1.3 MB of incompressible random weights each: read them in place,
# from $ASD_FIXTURES or the shared/ folder beside the repository (where CI puts it).
FIXTURES = Path(os.environ.get("ASD_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
FIXTURE_FILES = ("beats_tiny.pt", "beats_tiny.npz", "beats_tiny_finetuned.pt", "beats_tiny_finetuned.npz")


@pytest.fixture(scope="module")
def fixtures_present() -> None:
    """Skip a parity test where the shared fixtures are absent; fail under CI, where they must be."""
    missing = [name for name in FIXTURE_FILES if not (FIXTURES / name).is_file()]
    if missing:
        message = f"BEATs fixtures not found in {FIXTURES}: {', '.join(missing)} (set ASD_FIXTURES)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


needs_fixtures = pytest.mark.usefixtures("fixtures_present")


@pytest.fixture(scope="module")
def fixture_wave(fixtures_present: None) -> torch.Tensor:
    with np.load(FIXTURES / "beats_tiny.npz") as z:
        return torch.from_numpy(z["wave"])


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, BEATs]:
    torch.manual_seed(0)
    cfg = tiny_beats_config()
    model = BEATs(BeatsConfig.from_dict(cfg))
    path = tmp_path / "tiny.pt"
    save_official_checkpoint(path, model, cfg)
    return path, model


@needs_fixtures
def test_pretrained_fixture_parity(fixture_wave):
    loaded = load_beats(FIXTURES / "beats_tiny.pt")
    with np.load(FIXTURES / "beats_tiny.npz") as z:
        ref = torch.from_numpy(z["features"])
    with torch.inference_mode():
        out = loaded.model.extract_features(fixture_wave)
    assert out.shape == (3, 496, 96)
    assert (out - ref).abs().max() < 1e-4
    assert not loaded.model.training and len(loaded.sha256) == 64


@needs_fixtures
def test_finetuned_fixture_parity_backbone_and_probabilities(fixture_wave):
    with np.load(FIXTURES / "beats_tiny_finetuned.npz") as z:
        probs, feats = torch.from_numpy(z["features"]), torch.from_numpy(z["backbone_features"])
    full = load_beats(FIXTURES / "beats_tiny_finetuned.pt", with_predictor=True)
    backbone = load_beats(FIXTURES / "beats_tiny_finetuned.pt")
    assert not hasattr(backbone.model, "predictor")  # predictor.* dropped by default
    with torch.inference_mode():
        fbank = beats_fbank(fixture_wave)
        assert (backbone.model(fbank) - feats).abs().max() < 1e-4
        assert (full.model.predict_proba(fbank) - probs).abs().max() < 1e-5
    assert full.cfg["layer_wise_gradient_decay_ratio"] == 0.6


def test_bucket_table_pinned():
    idx = relative_position_buckets(1000, num_buckets=320, max_distance=800, device=torch.device("cpu"))
    expected = {0: 0, 1: 161, -1: 1, 79: 239, 80: 240, 81: 240, 100: 247, 200: 271, 495: 303, 778: 319}
    for r, bucket in expected.items():
        row = 0 if r >= 0 else -r
        assert idx[row, row + r].item() == bucket, r
    assert idx[999, 0].item() == 159  # r = -999
    # max_distance 1280 (the official class default) changes most buckets of a 496-token clip
    wrong = relative_position_buckets(496, 320, 1280, torch.device("cpu"))
    assert (wrong != idx[:496, :496]).float().mean() > 0.6


def test_iter3_config_and_architecture_pinned():
    cfg = BeatsConfig()
    assert math.isclose(cfg.deep_norm_alpha, 2.213364, abs_tol=1e-6)
    assert math.isclose(cfg.deep_norm_beta, 0.31947, abs_tol=1e-5)
    with torch.device("meta"):
        model = BEATs(cfg)
    keys = model.state_dict().keys()
    assert len(keys) == 250 and "encoder.pos_conv.0.weight_g" in keys and "encoder.pos_conv.0.weight_v" in keys
    assert sum(p.numel() for p in model.parameters()) == 90_311_792  # the shared table counted once
    tables = {id(layer.self_attn.relative_attention_bias) for layer in model.encoder.layers}
    assert len(tables) == 1
    attn = model.encoder.layers[0].self_attn
    assert all(type(getattr(attn, n)) is nn.Linear for n in ("q_proj", "k_proj", "v_proj", "out_proj"))


def test_round_trip_eval_determinism_and_cached_buckets(tiny):
    path, model = tiny
    loaded = load_beats(path)
    wave = torch.randn(2, 16000) * 0.1
    model.eval()
    with torch.inference_mode():
        a, b = model.extract_features(wave), loaded.model.extract_features(wave)
        assert torch.equal(a, b) and a.shape == (2, 48, 64)
        buf = loaded.model.encoder.bucket_index
        loaded.model.extract_features(wave)
        assert loaded.model.encoder.bucket_index is buf  # cached per length
    assert "encoder.bucket_index" not in loaded.model.state_dict()
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"cfg", "model"} and raw["cfg"] == tiny_beats_config()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_half_precision_and_legacy_checkpoints_load_as_fp32(tmp_path, tiny, zip_format):
    """Zip files are memory-mapped and their tensors assigned, not copied: a half-precision file
    must still give an fp32 model, the legacy format must still load, and the shared position
    table stays one parameter."""
    path, model = tiny
    raw = torch.load(path, weights_only=True)
    raw["model"] = {k: v.half() if v.is_floating_point() else v for k, v in raw["model"].items()}
    half = tmp_path / "half.pt"
    torch.save(raw, half, _use_new_zipfile_serialization=zip_format)
    loaded = load_beats(half).model
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    tables = {id(layer.self_attn.relative_attention_bias.weight) for layer in loaded.encoder.layers
              if layer.self_attn.relative_attention_bias is not None}  # fmt: skip
    assert len(tables) == 1
    wave = torch.randn(1, 16000) * 0.1
    model.eval()
    with torch.inference_mode():
        want = model.half().float().extract_features(wave)
        torch.testing.assert_close(loaded.extract_features(wave), want, rtol=0, atol=0)


def test_config_mistakes_change_the_output(tiny):
    _path, model = tiny
    model.eval()
    fbank = beats_fbank(torch.randn(1, 16000) * 0.1)
    wrong = BEATs(BeatsConfig.from_dict({**tiny_beats_config(), "deep_norm": False})).eval()
    wrong.load_state_dict(model.state_dict(), strict=True)  # same keys, wrong model
    with torch.no_grad():
        assert (wrong(fbank) - model(fbank)).abs().max() > 1e-2


def test_training_mode_backward_and_layerdrop_rng(tiny):
    _, model = tiny
    model.train()
    fbank = beats_fbank(torch.randn(2, 16000) * 0.1)
    with torch.inference_mode():
        model.eval()(fbank)  # an inference-mode bucket cache must not break a later backward
    model.train()
    torch.manual_seed(3)
    out = model(fbank)
    out.square().mean().backward()
    assert model.encoder.layers[0].self_attn.q_proj.weight.grad is not None
    torch.manual_seed(3)
    assert torch.equal(model(fbank), out.detach())  # dropout/layerdrop draw from torch's RNG only
    copy.deepcopy(model)


def test_bf16_autocast_runs_and_fbank_stays_fp32(tiny):
    _, model = tiny
    model.eval()
    seen: list[torch.dtype] = []
    hook = model.patch_embedding.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        ref = model.extract_features(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.extract_features(wave)
    hook.remove()
    assert seen == [torch.float32, torch.float32]  # the fbank reaches the patch embedding in fp32
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (eps 2**-8): a few eps of relative error through the tiny model
    assert ((out.float() - ref).norm() / ref.norm()).item() < 8 * 2.0**-8
    cos = torch.nn.functional.cosine_similarity(out.float().mean(1), ref.mean(1), dim=-1)
    assert cos.min().item() > 0.999


def test_config_rejects_unknown_wrong_and_contradictory_keys():
    with pytest.raises(ConfigError, match="encoder_layer"):
        BeatsConfig.from_dict({**tiny_beats_config(), "encoder_layer": 3})
    with pytest.raises(ConfigError, match="deep_norm"):
        BeatsConfig.from_dict({"deep_norm": 1})
    with pytest.raises(ConfigError, match="gru_rel_pos"):
        BeatsConfig.from_dict({"relative_position_embedding": False})
    with pytest.raises(ConfigError, match="divisible"):
        BeatsConfig.from_dict({"encoder_attention_heads": 5})
    with pytest.raises(ConfigError, match="activation_fn"):
        BeatsConfig.from_dict({"activation_fn": "relu"})


def test_bad_checkpoints_are_clear_errors(tmp_path, tiny):
    path, model = tiny
    with pytest.raises(ArtifactNotFound):
        load_beats(tmp_path / "nope.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a readable BEATs checkpoint"):
        load_beats(truncated)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ArtifactError, match="not a BEATs checkpoint"):
        load_beats(other)
    bad_cfg = tmp_path / "bad_cfg.pt"
    torch.save({"cfg": {**tiny_beats_config(), "typo": 1}, "model": model.state_dict()}, bad_cfg)
    with pytest.raises(ArtifactError, match="typo"):
        load_beats(bad_cfg)
    wrong_size = tmp_path / "wrong_size.pt"
    torch.save({"cfg": {**tiny_beats_config(), "encoder_layers": 3}, "model": model.state_dict()}, wrong_size)
    with pytest.raises(ArtifactError, match="missing encoder.layers.2"):
        load_beats(wrong_size)
    with pytest.raises(ArtifactError, match="without a predictor"):
        load_beats(path, with_predictor=True)


def test_resolve_checkpoint(tmp_path, monkeypatch, tiny):
    path, _ = tiny
    assert resolve_checkpoint(path) == path
    monkeypatch.setenv("ASD_CHECKPOINT", str(path))
    assert resolve_checkpoint(None) == path
    monkeypatch.delenv("ASD_CHECKPOINT")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ArtifactNotFound, match="BEATs_iter3.pt"):
        resolve_checkpoint(None)


def test_a_checkpoint_replaced_while_loading_is_refused(tiny, monkeypatch, tmp_path):
    """The SHA-256 recorded with the model must name the bytes its weights came from."""
    import asdcli.frontend.beats.checkpoint as checkpoint

    path, _ = tiny
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_official_checkpoint(other, BEATs(BeatsConfig.from_dict(tiny_beats_config())), tiny_beats_config())
    real = checkpoint.cached_sha256

    def replaced_then_hashed(p):
        os.replace(other, path)  # another download lands between the read and the hash
        return real(p)

    monkeypatch.setattr(checkpoint, "cached_sha256", replaced_then_hashed)
    with pytest.raises(ArtifactError, match="changed while it was being loaded"):
        load_beats(path)


def test_an_int8_checkpoint_is_named_as_not_floating_point(tiny, tmp_path):
    path, _ = tiny
    raw = torch.load(path, weights_only=True)
    raw["model"] = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in raw["model"].items()}
    small = tmp_path / "int8.pt"
    torch.save(raw, small)
    with pytest.raises(ArtifactError, match="not floating point"):
        load_beats(small)
