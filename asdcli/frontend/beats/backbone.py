"""BEATs modules (no I/O): patch embedding, conv positional embedding, post-LN DeepNorm encoder
with gated relative position bias, computed with scaled-dot-product attention.

Module and parameter names equal the official ones, so official state_dicts load strictly.
Shapes: B clips, T fbank frames, L tokens (8 per 16-frame time patch), D = encoder_embed_dim.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.frontend.beats.config import BeatsConfig
from asdcli.frontend.features import beats_fbank


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """T5-style bidirectional bucket of r = key - query for every (query, key) pair.

    Returns
    -------
    Tensor
        (length, length) int64; entry [i, j] is the bucket of j - i.
    """
    pos = torch.arange(length, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]  # (L, L) key - query
    half = num_buckets // 2
    offset = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    # log in fp32, truncated toward zero (as the official code); clamp avoids log(0) in the unused branch
    large = exact + (torch.log(n.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.clamp(large, max=half - 1)
    return offset + torch.where(n < exact, n, large)


def random_normal_(t: Tensor, std: float) -> None:
    """``nn.init.normal_(t, 0, std)``, nothing on a meta tensor.

    load_beats builds the architecture on the meta device (its weights come from the checkpoint);
    there torch's normal_ and vector_norm go through Python references that import torch._dynamo
    (seconds), so the random init is skipped on meta.
    """
    if not t.is_meta:
        nn.init.normal_(t, mean=0.0, std=std)


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``weight_v * weight_g / ||weight_v||`` with the norm over dims 0 and 1.

    Equals legacy ``nn.utils.weight_norm(conv, dim=2)`` and keeps its key names (weight_g,
    weight_v) without its deprecation and deepcopy problems.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel // 2
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        std = math.sqrt(4 / (kernel * channels))  # the official init of the positional conv
        if not self.weight_v.is_meta:  # see random_normal_
            nn.init.normal_(self.weight_v, mean=0.0, std=std)
            with torch.no_grad():
                self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def weight(self) -> Tensor:
        norm = torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: Tensor) -> Tensor:  # (B, D, L) -> (B, D, L + 1 - kernel % 2)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class GradMultiply(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by ``scale`` (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class MultiheadAttention(nn.Module):
    """Self-attention with the gated relative position bias; q/k/v/out_proj are plain Linears."""

    def __init__(self, cfg: BeatsConfig, shared_bias: nn.Embedding | None) -> None:
        super().__init__()
        d, self.num_heads, self.head_dim = cfg.encoder_embed_dim, cfg.encoder_attention_heads, cfg.head_dim
        self.dropout = cfg.attention_dropout
        self.gru_rel_pos = cfg.gru_rel_pos
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        if shared_bias is not None:
            self.relative_attention_bias = shared_bias  # the same module in every layer

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, d)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        """x (B, L, D), position_bias (H, L, L) raw bias or None -> (B, L, D)."""
        b, n, d = x.shape
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        mask = None
        if position_bias is not None:
            mask = position_bias.unsqueeze(0)  # (1, H, L, L)
            if self.gru_rel_pos:
                # gate from the unscaled query (incl. its bias), one scalar per head and query row
                g = torch.sigmoid(self.grep_linear(q).view(b, self.num_heads, n, 2, 4).sum(-1))
                gate = g[..., :1] * (g[..., 1:] * self.grep_a - 1.0) + 2.0  # (B, H, L, 1)
                mask = gate * mask  # (B, H, L, L)
            mask = mask.to(q.dtype)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.head_dim**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Transformer layer: post-LN with DeepNorm residual scaling (or pre-LN if layer_norm_first)."""

    def __init__(self, cfg: BeatsConfig, shared_bias: nn.Embedding | None) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = cfg.deep_norm_alpha
        self.self_attn = MultiheadAttention(cfg, shared_bias)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def _ffn(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(x).float()).type_as(x)  # exact (erf) GELU in fp32
        return self.dropout3(self.fc2(self.dropout2(h)))

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout1(self.self_attn(x, position_bias)))
        return self.final_layer_norm(x * self.alpha + self._ffn(x))


class Encoder(nn.Module):
    """Conv positional embedding, LayerNorm (post-LN: before the layers) and the layer stack."""

    bucket_index: Tensor  # (L, L) cached relative position buckets, a non-persistent buffer

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.cfg = cfg
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, cfg.conv_pos, cfg.conv_pos_groups))
        self.layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        shared = None
        if cfg.relative_position_embedding:  # nn.Embedding's own init, without its normal_ on meta
            shared = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads,
                                  _weight=torch.empty(cfg.num_buckets, cfg.encoder_attention_heads))  # fmt: skip
            random_normal_(shared.weight, 1.0)
        self.layers = nn.ModuleList(EncoderLayer(cfg, shared) for _ in range(cfg.encoder_layers))
        self.register_buffer("bucket_index", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self._init_deep_norm()

    def _init_deep_norm(self) -> None:
        beta = self.cfg.deep_norm_beta
        for layer in self.layers:
            assert isinstance(layer, EncoderLayer)
            attn = layer.self_attn
            for lin, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, beta), (attn.out_proj, beta),
                              (layer.fc1, beta), (layer.fc2, beta)):  # fmt: skip
                if not lin.weight.is_meta:
                    nn.init.xavier_normal_(lin.weight, gain=gain)
                nn.init.zeros_(lin.bias)

    def position_bias(self, length: int) -> Tensor | None:
        """Raw relative position bias (H, L, L), bucket indices cached per length."""
        if not self.cfg.relative_position_embedding:
            return None
        first = self.layers[0]
        assert isinstance(first, EncoderLayer) and first.self_attn.relative_attention_bias is not None
        table = first.self_attn.relative_attention_bias
        idx = self.bucket_index
        stale = idx.shape[0] != length or idx.device != table.weight.device
        # an index made under inference_mode cannot be saved for backward in a later training step
        if stale or (idx.is_inference() and not torch.is_inference_mode_enabled()):
            self.bucket_index = relative_position_buckets(
                length, self.cfg.num_buckets, self.cfg.max_distance, table.weight.device
            )
        # contiguous once here: every layer multiplies it by its gate, ~10x slower on the permuted view
        return table(self.bucket_index).permute(2, 0, 1).contiguous()

    def _stack(self, x: Tensor, last: int) -> Iterator[Tensor]:
        """Positional conv, then the outputs of layers 1..``last`` in turn (x (B, L, D))."""
        conv = self.pos_conv[0](x.transpose(1, 2))
        if self.cfg.conv_pos % 2 == 0:
            conv = conv[..., :-1]  # "SamePad" for an even kernel drops the last step
        x = x + F.gelu(conv).transpose(1, 2)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        bias = self.position_bias(x.shape[1])
        ratio = self.cfg.layer_wise_gradient_decay_ratio
        for layer in self.layers[:last]:
            if ratio != 1.0 and torch.is_grad_enabled():
                x = GradMultiply.apply(x, ratio)
            if not (self.training and self.cfg.encoder_layerdrop > 0 and torch.rand(()) < self.cfg.encoder_layerdrop):
                x = layer(x, bias)
            yield x

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        out = x
        for out in self._stack(x, len(self.layers)):  # noqa: B007 (keep the last layer's output)
            pass
        return self.layer_norm(out) if self.cfg.layer_norm_first else out

    def layer_outputs(self, x: Tensor, layers: Sequence[int]) -> list[Tensor]:
        """The outputs (B, L, D) of the 1-based ``layers`` in the order given, from one pass that
        stops after the deepest one (what forward hooks on the official ``encoder.layers`` see)."""
        if not layers or min(layers) < 1 or max(layers) > len(self.layers):
            raise ValueError(f"layers must be in 1..{len(self.layers)}, got {list(layers)}")
        outputs = dict(enumerate(self._stack(x, max(layers)), start=1))
        return [outputs[i] for i in layers]


class BEATs(nn.Module):
    """The BEATs backbone (plus the AudioSet predictor of fine-tuned files if ``with_predictor``)."""

    def __init__(self, cfg: BeatsConfig, with_predictor: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = Encoder(cfg)
        if with_predictor:
            if not cfg.finetuned_model:
                raise ValueError("with_predictor needs a fine-tuned cfg (finetuned_model=True)")
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)

    @property
    def embed_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    def forward(self, fbank: Tensor) -> Tensor:
        """Token features of normalized fbank.

        Parameters
        ----------
        fbank : Tensor
            (B, T, 128) normalized fbank (``features.beats_fbank``), T >= 16.

        Returns
        -------
        Tensor
            (B, L, D) last-layer token features, L = 8 * (T // 16) (496 for 10 s).
        """
        return self.encoder(self._tokens(fbank))

    def _tokens(self, fbank: Tensor) -> Tensor:
        """Patch embedding: (B, T, 128) -> (B, L, D) encoder input."""
        x = self.patch_embedding(fbank.unsqueeze(1))  # (B, C, T // 16, 8)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # (B, L, C), token = t * 8 + f
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.dropout_input(x)

    def layer_features(self, fbank: Tensor, layers: Sequence[int]) -> list[Tensor]:
        """Token features (B, L, D) of the 1-based transformer ``layers`` of normalized fbank (B, T, 128)."""
        return self.encoder.layer_outputs(self._tokens(fbank), layers)

    def extract_features(self, wave: Tensor) -> Tensor:
        """(B, N) 16 kHz waveforms in [-1, 1] -> (B, L, D) token features (never probabilities)."""
        return self(beats_fbank(wave))

    def predict_proba(self, fbank: Tensor) -> Tensor:
        """Fine-tuned models: (B, T, 128) fbank -> (B, predictor_class) sigmoid AudioSet probabilities."""
        if not hasattr(self, "predictor"):
            raise ValueError("this model has no predictor head (load it with with_predictor=True)")
        logits = self.predictor(self.predictor_dropout(self(fbank)))  # (B, L, C)
        return torch.sigmoid(logits.mean(dim=1))
