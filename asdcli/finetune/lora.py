"""LoRA adapters (peft) on the attention projections of BEATs, and their peft-format files.

Only the low-rank matrices train: the backbone's own weights stay frozen. The adapter is saved in
peft's own layout (`adapter_model.safetensors` + `adapter_config.json`), so
``peft.PeftModel.from_pretrained(beats_model, RUN_DIR / "adapter")`` loads it too.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from asdcli.artifacts import read_json, write_bytes_atomic
from asdcli.errors import ArtifactError, ArtifactNotFound, AsdError, ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def make_lora_config(rank: int, alpha: float, dropout: float, targets: tuple[str, ...] = LORA_TARGETS) -> LoraConfig:
    """A peft LoraConfig for ``targets`` (module names) of every attention block."""
    if rank < 1:
        raise ConfigError(f"--lora-rank must be at least 1, got {rank}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--lora-dropout must be in [0, 1), got {dropout}.")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=list(targets),
        bias="none",
    )  # peft types lora_alpha as int; it takes a float


def inject_lora(backbone: nn.Module, lora_cfg: LoraConfig) -> PeftModel:
    """Wrap ``backbone`` (modified in place) with LoRA layers; every non-LoRA weight is frozen.

    The returned PeftModel's ``forward`` is the backbone's. LoRA B matrices start at zero, so the
    wrapped model initially computes exactly what the backbone did.
    """
    targets = set(lora_cfg.target_modules or ())  # a list of names (check_adapter_config refuses a regex)
    n_targets = sum(1 for name, _ in backbone.named_modules() if name.rsplit(".", 1)[-1] in targets)
    if n_targets == 0:
        raise ConfigError(f"The backbone has no modules named {sorted(targets)} for LoRA.")
    model = get_peft_model(backbone, lora_cfg)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def trainable_named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs with ``requires_grad``, in registration order."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def set_backbone_mode(model: nn.Module, backbone_train: bool) -> None:
    """Put the backbone in train or eval mode while LoRA dropout always follows ``model.training``.

    We fine-tune with ``backbone_train=False``: the frozen BEATs runs exactly as at inference
    (no dropout 0.1, no layerdrop 0.05), so the features the head learns on are the ones `embed`
    sees; regularisation comes from LoRA dropout and the optional augmentations instead.
    """
    training = model.training
    for name, m in model.named_modules():
        if "lora_" in name.rsplit(".", 1)[-1] or ".lora_" in name:
            m.train(training)
        elif m is not model:
            m.training = training and backbone_train


def save_adapter(model: PeftModel, adapter_dir: Path) -> None:
    """Write the adapter in peft format to ``adapter_dir``; each file is replaced atomically."""
    adapter_dir = Path(adapter_dir)
    try:
        adapter_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=adapter_dir.parent))
    except OSError as e:
        raise AsdError(f"Cannot write in {adapter_dir.parent}: {e.strerror or e}. Choose another output path.") from e
    try:
        try:
            model.save_pretrained(str(tmp))
        except (OSError, SafetensorError) as e:  # peft writes the files itself: a full disk lands here
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise AsdError(
                f"Cannot write the adapter into {adapter_dir.parent}: {reason}. Free disk space or choose another output path."
            ) from e
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            write_bytes_atomic(adapter_dir / name, (tmp / name).read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_weights(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """ArtifactError naming ``path`` when a stored weight is not floating point or not finite."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ArtifactError(
                f"{path} holds {name} as {t.dtype}, not floating point: it was not written by "
                "`asd finetune`. Re-run `asd finetune`."
            )
        if not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{path} holds NaN or Inf in {name}. Re-run `asd finetune` (with a lower --lr).")


def check_adapter_config(config: Any, path: Path) -> None:
    """ArtifactError unless ``config`` (adapter_config.json) is a LoRA config of the kind asdcli
    writes: peft_type LORA, r >= 1, a finite lora_alpha > 0 and target_modules a list of module
    names (peft reads a string as a regular expression over every module's name)."""

    def fail(what: str) -> ArtifactError:
        return ArtifactError(
            f"{path} {what}; asd finetune writes a LoRA config with target_modules "
            f"{list(LORA_TARGETS)}. Re-run `asd finetune`."
        )

    if not isinstance(config, dict):
        raise fail("is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise fail(f"has peft_type {config.get('peft_type')!r}, not 'LORA'")
    rank, alpha, targets = config.get("r"), config.get("lora_alpha"), config.get("target_modules")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise fail(f"has r {rank!r}, not an integer >= 1")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise fail(f"has lora_alpha {alpha!r}, not a finite number > 0")
    if not isinstance(targets, list) or not targets or not all(t in LORA_TARGETS for t in targets):
        raise fail(f"has target_modules {targets!r}, not a list of module names")


def load_adapter(backbone: nn.Module, adapter_dir: Path) -> PeftModel:
    """Inject the LoRA adapter stored in ``adapter_dir`` into ``backbone`` (in place), frozen, eval.

    Raises ArtifactNotFound when a file is missing and ArtifactError when a file is malformed
    (see check_adapter_config, check_weights) or the adapter does not fit the backbone (missing
    or extra LoRA tensors, wrong shapes).
    """
    adapter_dir = Path(adapter_dir)
    weights, config = adapter_dir / ADAPTER_WEIGHTS, adapter_dir / ADAPTER_CONFIG
    for f in (weights, config):
        if not f.is_file():
            raise ArtifactNotFound(f"Adapter file {f} does not exist. Re-run `asd finetune` for this run folder.")
    check_adapter_config(read_json(config, what="adapter config"), config)
    try:
        lora_cfg = LoraConfig.from_pretrained(str(adapter_dir))
        state = load_file(str(weights))
    except (ValueError, TypeError, json.JSONDecodeError, SafetensorError, OSError) as e:
        raise ArtifactError(f"Adapter {adapter_dir} is unreadable ({e}). Re-run `asd finetune`.") from e
    check_weights(state, weights)
    model = inject_lora(backbone, lora_cfg)
    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        raise ArtifactError(
            f"Adapter {weights} does not fit this backbone ({len(set(state) ^ expected)} LoRA tensors differ). "
            "Use the checkpoint it was fine-tuned from."
        )
    try:
        set_peft_model_state_dict(model, state)
    except RuntimeError as e:
        raise ArtifactError(f"Adapter {weights} does not fit this backbone ({e}).") from e
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a PeftModel in peft's saved naming (adapter name removed)."""
    return get_peft_model_state_dict(model)
