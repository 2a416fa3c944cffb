"""Options of `asd finetune` (kept apart from the training code so the CLI starts without peft).

Every field but ``checkpoint`` is a CLI option of `asd finetune` and `asd run`: its help text and
flag live here, in the field's metadata, and `asdcli.cli.finetune_options` turns them into options.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asdcli.data.clip_length import check_clip_seconds
from asdcli.errors import ConfigError
from asdcli.seeds import MAX_SEED, is_seed
from asdcli.workers import is_workers, workers_rule

LABEL_MODES = ("machine", "attribute", "attribute+domain")
MIXED_PRECISION = ("no", "bf16", "fp16")
MAX_LR = 1.0  # an Adam step of more than 1 per unit gradient is never a learning rate (1e39 overflows fp32)
DEFAULT_RUN_DIR = Path("runs/finetune")
StepHook = Callable[[int, int], None]
# Fields that decide where and how fast a run goes, not what it computes: another value is no
# reason to retrain, and a run may be resumed with them changed.
RUNTIME_FIELDS = ("checkpoint", "device", "num_workers")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout")  # void with --full-finetune (no adapter)
# The fields `asd run --no-finetune` still uses, for its frozen embedding; every other one is void there.
FROZEN_EMBED_FIELDS = ("batch_size", "seconds", "channel", "device", "num_workers")


def cli(help: str, flag: str | None = None, alias: str | None = None) -> dict[str, Any]:
    """Field metadata for a CLI option: help text, the flag (default ``--field-name``) and one
    hidden alias (an older spelling that keeps working)."""
    return {"help": help, "flag": flag, "alias": alias}


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of one fine-tuning run (the CLI flags of `asd finetune`)."""

    checkpoint: Path  # official-format BEATs checkpoint (resolved path)
    epochs: int = field(default=10, metadata=cli("Passes over the training clips."))
    batch_size: int = field(default=16, metadata=cli("Clips per step and process."))
    lr: float = field(default=1e-4, metadata=cli("Adam peak learning rate (linear warm-up, then cosine to 0)."))
    warmup_fraction: float = field(default=0.05, metadata=cli("Share of the steps with linear warm-up."))
    seed: int = field(default=0, metadata=cli("Seed of initialisation, split, order and augmentation."))
    seconds: float = field(default=10.0, metadata=cli("Cut or zero-pad every clip to this many seconds."))
    channel: int | None = field(
        default=None, metadata=cli("Keep this 0-based channel of multi-channel files (default: mean of channels).")
    )
    val_fraction: float = field(default=0.1, metadata=cli("Share of each class held out for the accuracy."))
    labels: str = field(
        default="machine",
        metadata=cli("Classes: 'machine', 'attribute' (machine + attributes) or 'attribute+domain' (and the domain)."),
    )
    merge_machines: bool = field(
        default=False,
        metadata=cli(
            "With several dataset roots: one class per machine name across roots (default: a machine name "
            "found under two roots is two classes, ROOT/machine)."
        ),
    )
    subcentres: int = field(
        default=1,
        metadata=cli("Sub-centre AAM: K weight vectors per class, the logit is the best of them (1 = plain AAM)."),
    )
    use_clean: bool = field(
        default=False,
        metadata=cli("Train on the supplemental clean machine clips (`_machine_` names) as extra normal clips."),
    )
    full_finetune: bool = field(
        default=False, metadata=cli("Train every backbone weight instead of LoRA (saved as backbone.safetensors).")
    )
    layer_decay: float = field(
        default=1.0,
        metadata=cli(
            "With --full-finetune: the head learns at lr, encoder layer i (1 = lowest) of L at "
            "lr * decay^(L + 1 - i), the patch embedding at lr * decay^(L + 1) (1 = no decay)."
        ),
    )
    lora_rank: int = field(default=64, metadata=cli("LoRA rank on q_proj/k_proj/v_proj of every layer."))
    lora_alpha: float = field(default=64.0, metadata=cli("LoRA alpha (scaling alpha/rank)."))
    lora_dropout: float = field(default=0.1, metadata=cli("Dropout on the LoRA input."))
    embedding_dim: int = field(default=256, metadata=cli("Size of the head embedding."))
    margin: float = field(default=0.2, metadata=cli("AAM angular margin in radians."))
    scale: float = field(default=30.0, metadata=cli("AAM logit scale."))
    specaugment: bool = field(default=False, metadata=cli("Mask 2 time and 2 mel bands per clip."))
    mixup: float = field(default=0.0, metadata=cli("Mixup Beta(alpha, alpha) on fbank; 0 = off (try 0.4)."))
    noise_mix: bool = field(
        default=False,
        metadata=cli("Mix supplemental noise-only clips (`_noise_` names) into half the clips at 5-20 dB SNR."),
    )
    mixed_precision: str = field(default="no", metadata=cli("'no', 'bf16' or 'fp16' (fbank stays fp32)."))
    device: str = field(
        default="auto",
        metadata=cli("auto, cpu, cuda (cuda:N) or mps (under accelerate launch each process uses its own GPU)."),
    )
    num_workers: int = field(
        default=0, metadata=cli("DataLoader processes that read audio.", flag="--workers", alias="--num-workers")
    )

    def __post_init__(self) -> None:
        for message in _problems(self):
            raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    def key(self) -> dict[str, Any]:
        """The options that change what a run computes (every field but RUNTIME_FIELDS)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


def option_flag(name: str) -> str:
    """The CLI flag of a FinetuneConfig field (``num_workers`` -> ``--workers``)."""
    return FinetuneConfig.__dataclass_fields__[name].metadata.get("flag") or "--" + name.replace("_", "-")


def _flags(names: Collection[str]) -> list[str]:
    """The flags of the fields ``names``, in the order of FinetuneConfig's fields (its --help)."""
    return [option_flag(f.name) for f in dataclasses.fields(FinetuneConfig) if f.name in names]


def _void_error(void: list[str], applies_to: str, because: str, switch: str) -> ConfigError:
    one = len(void) == 1
    listed = void[0] if one else ", ".join(void[:-1]) + " and " + void[-1]
    return ConfigError(
        f"{listed} only appl{'ies' if one else 'y'} to {applies_to}, and {switch} {because}; "
        f"drop {void[0] if one else 'those options'} or {switch}."
    )


def check_given_options(options: Mapping[str, Any], given: Collection[str], finetune_off: str | None = None) -> None:
    """A ConfigError when an option the user set (a field name in ``given``; a default never counts)
    is void: with ``finetune_off`` (the flag that skips fine-tuning, when the user set it) every
    option but FROZEN_EMBED_FIELDS; under ``options``, LoRA options with --full-finetune, which
    trains no adapter."""
    if finetune_off is not None:
        void = _flags(set(given) - set(FROZEN_EMBED_FIELDS))
        if void:
            raise _void_error(void, "fine-tuning", "skips it", finetune_off)
    if options.get("full_finetune"):
        void = _flags(set(given) & set(LORA_FIELDS))
        if void:
            raise _void_error(void, "LoRA", "trains every weight without LoRA", "--full-finetune")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _problems(c: FinetuneConfig) -> list[str]:
    """Every invalid option as one sentence naming its flag (empty when the config is valid)."""

    def bad(name: str, rule: str) -> str:
        return f"{option_flag(name)} must be {rule}, got {getattr(c, name)!r}."

    checks = [
        (c.epochs >= 1, bad("epochs", "at least 1")),
        (c.batch_size >= 1, bad("batch_size", "at least 1")),
        (_finite(c.lr) and 0 < c.lr <= MAX_LR, bad("lr", f"a number > 0 and at most {MAX_LR:g}")),
        (_finite(c.warmup_fraction) and 0.0 <= c.warmup_fraction < 1.0, bad("warmup_fraction", "in [0, 1)")),
        (c.channel is None or c.channel >= 0, bad("channel", ">= 0")),
        (_finite(c.val_fraction) and 0.0 <= c.val_fraction < 1.0, bad("val_fraction", "in [0, 1)")),
        (c.labels in LABEL_MODES, bad("labels", f"one of {', '.join(LABEL_MODES)}")),
        (c.subcentres >= 1, bad("subcentres", "at least 1")),
        (_finite(c.layer_decay) and 0.0 < c.layer_decay <= 1.0, bad("layer_decay", "in (0, 1]")),
        (
            c.layer_decay == 1.0 or c.full_finetune,
            f"--layer-decay {c.layer_decay!r} only applies with --full-finetune (LoRA trains no backbone layer).",
        ),
        (c.lora_rank >= 1, bad("lora_rank", "at least 1")),
        (_finite(c.lora_alpha) and c.lora_alpha > 0, bad("lora_alpha", "a finite number > 0")),
        (_finite(c.lora_dropout) and 0.0 <= c.lora_dropout < 1.0, bad("lora_dropout", "in [0, 1)")),
        (c.embedding_dim >= 1, bad("embedding_dim", "at least 1")),
        (_finite(c.margin) and 0.0 <= c.margin < math.pi / 2, bad("margin", "in [0, pi/2) radians")),
        (_finite(c.scale) and c.scale > 0, bad("scale", "a finite number > 0")),
        (_finite(c.mixup) and c.mixup >= 0.0, bad("mixup", "a finite number >= 0 (0 = off)")),
        (c.mixed_precision in MIXED_PRECISION, bad("mixed_precision", f"one of {', '.join(MIXED_PRECISION)}")),
        (is_workers(c.num_workers), bad("num_workers", workers_rule())),
        (is_seed(c.seed), bad("seed", f"an integer from 0 to {MAX_SEED} (2**32 - 1)")),
    ]
    problems = [message for ok, message in checks if not ok]
    try:
        check_clip_seconds(c.seconds)
    except ConfigError as e:
        problems.insert(3, str(e))
    return problems
