"""`--layers`: token means of chosen transformer layers, against the official per-layer outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from asdcli.errors import ConfigError
from asdcli.frontend.beats import load_beats
from asdcli.frontend.embedder import MeanPooledLayers, parse_layers
from asdcli.frontend.features import beats_fbank

FIXTURES = Path(os.environ.get("ASD_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


@pytest.fixture(scope="module")
def official() -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
    """Our model of beats_tiny.pt, the fixture's waves (3, 160000) and the official layer outputs
    (3 layers, 3 clips, 496 tokens, 96 channels)."""
    needed = [FIXTURES / "beats_tiny.pt", FIXTURES / "beats_tiny.npz", FIXTURES / "beats_tiny_layers.npz"]
    if not all(p.is_file() for p in needed):
        message = f"BEATs layer fixtures not found in {FIXTURES} (set ASD_FIXTURES)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with np.load(needed[1]) as z:
        wave = torch.from_numpy(z["wave"])
    with np.load(needed[2]) as z:
        layers = z["layer_features"]
    return load_beats(needed[0]).model, wave, layers


def test_each_layer_equals_the_official_output(official: tuple[torch.nn.Module, torch.Tensor, np.ndarray]) -> None:
    model, wave, want = official
    with torch.inference_mode():
        got = model.layer_features(beats_fbank(wave), [1, 2, 3])
    for i, layer in enumerate(got):
        np.testing.assert_allclose(layer.numpy(), want[i], atol=2e-4, rtol=0)  # fixtures README: ~1e-4 in fp32


def test_listed_layers_are_mean_pooled_and_concatenated_in_the_given_order(
    official: tuple[torch.nn.Module, torch.Tensor, np.ndarray],
) -> None:
    model, wave, want = official
    with torch.inference_mode():
        got = MeanPooledLayers(model, (3, 1))(beats_fbank(wave)).numpy()
    expected = np.concatenate([want[2].mean(axis=1), want[0].mean(axis=1)], axis=1)  # (3 clips, 2 * 96)
    assert got.shape == (3, 192)
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0)


def test_one_pass_stops_after_the_deepest_listed_layer(
    official: tuple[torch.nn.Module, torch.Tensor, np.ndarray],
) -> None:
    model, wave, _ = official
    calls = [0, 0, 0]
    hooks = [layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(model.encoder.layers)]  # fmt: skip
    try:
        with torch.inference_mode():
            MeanPooledLayers(model, (2, 1))(beats_fbank(wave[:1]))
    finally:
        for h in hooks:
            h.remove()
    assert calls == [1, 1, 0]


@pytest.mark.parametrize("text", ["", "0", "1,1", "a", "1;2", "-1", "2,,3"])
def test_bad_layer_lists_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--layers must be"):
        parse_layers(text)


def test_layer_lists_parse() -> None:
    assert parse_layers("last") is None and parse_layers("LAST") is None
    assert parse_layers("7,10") == (7, 10) and parse_layers("12") == (12,)
