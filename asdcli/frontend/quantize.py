"""Embedding precision on CPU: dynamic int8 of the transformer's linear layers, LoRA merged first.

``--precision int8`` replaces q/k/v/out_proj, fc1 and fc2 of every encoder layer (99 % of the
forward's FLOPs at iter3 size) with torch's dynamically quantized linears: int8 weights (per
tensor), activations quantized per batch. The fbank, the convolutions, the attention softmax, the
gate, the norms, the pooling and a fine-tuned head stay fp32. bench/int8.py measures the speed
and what it does to the vectors and the official score.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from asdcli.errors import ConfigError

PRECISIONS = ("fp32", "int8")
QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return precision


def merge_lora(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every peft model is replaced by its LoRA-merged base model.

    ``W + B A * alpha / r`` is folded into each adapted Linear, so the copy computes what the
    adapted model computes with plain Linears (what quantization and ONNX export need). Modules
    without peft parts are returned as a plain copy. ``module`` itself is not changed.
    """
    merged = copy.deepcopy(module)
    if not _has_peft_parts(merged):
        return merged
    from peft import PeftModel  # importing peft (and transformers) takes seconds: only for an adapter

    if isinstance(merged, PeftModel):
        return merged.merge_and_unload()
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PeftModel):
                setattr(parent, name, child.merge_and_unload())
    return merged


def _has_peft_parts(module: nn.Module) -> bool:
    """Whether any submodule is one of peft's (told by its class's package, without importing peft)."""
    return any(type(m).__module__.partition(".")[0] == "peft" for m in module.modules())


def _transformer_linears(module: nn.Module) -> set[str]:
    """Names of the encoder layers' big Linears (not the gate, the input projection or a head)."""
    return {
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
        and ".encoder.layers." in f".{name}"
        and name.rsplit(".", 1)[-1] in QUANTIZED_LINEARS
    }


def quantize_for_cpu(module: nn.Module) -> nn.Module:
    """A CPU copy of ``module`` (an embedder or a BEATs) with int8 dynamic transformer linears.

    LoRA adapters are merged first. Raises ConfigError if the module has no BEATs encoder layers.
    """
    merged = merge_lora(module).cpu().eval()
    names = _transformer_linears(merged)
    if not names:
        raise ConfigError("--precision int8 found no BEATs encoder layers to quantize in this model.")
    with warnings.catch_warnings():
        # torch.ao's eager dynamic quantization is deprecated in favour of torchao, but is the
        # fastest and most accurate int8 path on AVX2 CPUs without VNNI (see the README)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(merged, names, dtype=torch.qint8, inplace=True)  # on our copy


def for_precision(module: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``module`` for ``precision``: itself for fp32, an int8 copy for int8 (CPU only)."""
    if check_precision(precision) == "fp32":
        return module
    if device.type != "cpu":
        raise ConfigError(f"--precision int8 runs on CPU only; pass --device cpu (got {device.type}).")
    return OneClipAtATime(quantize_for_cpu(module))


class OneClipAtATime(nn.Module):
    """Runs ``module`` on each clip of a batch alone. Dynamic int8 scales the activations by the
    range of the whole input tensor, so in a batch a loud clip would change a quiet clip's
    embedding; one clip per call makes every int8 embedding independent of its batch-mates."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.module(x[i : i + 1]) for i in range(x.shape[0])])
