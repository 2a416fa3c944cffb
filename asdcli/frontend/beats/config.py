"""BEATs architecture config, built from (and written back as) the official checkpoint ``cfg`` dict.

Field names are the official ones. Defaults are the values every official iter3 checkpoint stores
(not the official class defaults: deep_norm False, max_distance 1280 and no relative position
embedding load the same keys strictly but build a different, wrong model).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asdcli.errors import ConfigError


@dataclass(frozen=True)
class BeatsConfig:
    """Frozen BEATs architecture and regularisation settings (official ``cfg`` keys)."""

    input_patch_size: int = 16
    embed_dim: int = 512  # patch embedding channels
    conv_bias: bool = False  # bias of the patch embedding conv
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.1
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = False
    predictor_dropout: float = 0.0
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> BeatsConfig:
        """Build and validate a config; unknown keys, wrong types or contradictions raise ConfigError."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"A BEATs cfg must be a dict, got {type(cfg).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in cfg if k not in fields)
        if unknown:
            raise ConfigError(f"Unknown BEATs cfg key(s): {', '.join(unknown)}. Is this an official BEATs checkpoint?")
        values: dict[str, Any] = {}
        for name, value in cfg.items():
            values[name] = _checked(name, value, type(getattr(cls, name)))
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The official-format cfg dict (all fields, JSON-serialisable)."""
        return dataclasses.asdict(self)

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def deep_norm_alpha(self) -> float:
        """Residual scale of post-LN DeepNorm: (2 * layers) ** 0.25, or 1 without deep_norm."""
        return math.pow(2 * self.encoder_layers, 0.25) if self.deep_norm else 1.0

    @property
    def deep_norm_beta(self) -> float:
        """Init gain of DeepNorm: (8 * layers) ** -0.25 (initialisation only)."""
        return math.pow(8 * self.encoder_layers, -0.25) if self.deep_norm else 1.0

    def min_parameters(self) -> int:
        """A lower bound on the parameter count of this architecture (the big matrices only): a
        checkpoint file must hold at least this many values."""
        d, f = self.encoder_embed_dim, self.encoder_ffn_embed_dim
        per_layer = 4 * d * d + 2 * d * f  # q, k, v, out projections and the feed-forward pair
        pos_conv = d * (d // max(self.conv_pos_groups, 1)) * self.conv_pos
        patches = self.embed_dim * self.input_patch_size**2 + (self.embed_dim * d if self.embed_dim != d else 0)
        return self.encoder_layers * per_layer + pos_conv + patches

    def validate(self) -> None:
        """Raise ConfigError for values this implementation (or BEATs itself) cannot honour."""
        problems = []
        positive = ("input_patch_size", "embed_dim", "encoder_layers", "encoder_embed_dim",
                    "encoder_ffn_embed_dim", "encoder_attention_heads", "conv_pos", "conv_pos_groups",
                    "num_buckets", "max_distance", "predictor_class")  # fmt: skip
        problems += [f"{k} must be positive" for k in positive if getattr(self, k) <= 0]
        probs = ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
                 "predictor_dropout")  # fmt: skip
        problems += [f"{k} must be in [0, 1)" for k in probs if not 0.0 <= getattr(self, k) < 1.0]
        if self.activation_fn != "gelu":
            problems.append(f"activation_fn {self.activation_fn!r} is not supported (only 'gelu')")
        if not 0.0 < self.layer_wise_gradient_decay_ratio <= 1.0:
            problems.append("layer_wise_gradient_decay_ratio must be in (0, 1]")
        if self.encoder_attention_heads > 0 and self.encoder_embed_dim % self.encoder_attention_heads:
            problems.append("encoder_embed_dim must be divisible by encoder_attention_heads")
        if self.conv_pos_groups > 0 and self.encoder_embed_dim % self.conv_pos_groups:
            problems.append("encoder_embed_dim must be divisible by conv_pos_groups")
        if self.gru_rel_pos and not self.relative_position_embedding:
            problems.append("gru_rel_pos needs relative_position_embedding")
        if self.num_buckets % 2 or (self.relative_position_embedding and self.max_distance <= self.num_buckets // 4):
            problems.append("num_buckets must be even and max_distance larger than num_buckets / 4")
        if self.deep_norm and self.layer_norm_first:
            problems.append("deep_norm is a post-LN scheme and contradicts layer_norm_first")
        if problems:
            raise ConfigError("Invalid BEATs cfg: " + "; ".join(problems) + ".")


def _checked(name: str, value: Any, kind: type) -> Any:
    """Return ``value`` as ``kind`` or raise ConfigError (bools are not ints, ints are floats)."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"BEATs cfg key {name} must be {kind.__name__}, got {value!r}.")


def tiny_beats_config() -> dict[str, Any]:
    """An official-format cfg dict of a tiny BEATs (2 layers, dim 64) for tests and the demo.

    All iter3 flags (deep_norm, gated relative position bias, post-LN) are on; only sizes shrink.
    """
    cfg = BeatsConfig(
        embed_dim=32,
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=4,
        conv_pos=16,
        conv_pos_groups=4,
        num_buckets=64,
        max_distance=128,
    ).to_dict()
    for key in ("finetuned_model", "predictor_dropout", "predictor_class"):
        cfg.pop(key)  # pretrained checkpoints do not store these
    return cfg
