"""Options of `asd finetune` (kept apart from the training code so the CLI starts without peft)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asdcli.errors import ConfigError

LABEL_MODES = ("machine", "attribute")
MIXED_PRECISION = ("no", "bf16", "fp16")
DEFAULT_RUN_DIR = Path("runs/finetune")
StepHook = Callable[[int, int], None]


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of one fine-tuning run (the CLI flags of `asd finetune`)."""

    checkpoint: Path  # official-format BEATs checkpoint (resolved path)
    epochs: int = 10
    batch_size: int = 16  # clips per process and step
    lr: float = 1e-4  # Adam peak learning rate (LoRA and head)
    warmup_fraction: float = 0.05  # linear warm-up over this share of the steps, then cosine to 0
    seed: int = 0
    seconds: float = 10.0  # clips padded/cut to this length
    channel: int | None = None
    val_fraction: float = 0.1  # held out per label for the per-epoch accuracy
    labels: str = "machine"  # "machine" or "attribute" (machine + attribute string)
    lora_rank: int = 64
    lora_alpha: float = 64.0  # LoRA scaling alpha/rank = 1
    lora_dropout: float = 0.1
    embedding_dim: int = 256
    margin: float = 0.2  # AAM margin (radians)
    scale: float = 30.0  # AAM scale
    specaugment: bool = False
    mixup: float = 0.0  # Beta(alpha, alpha) mixup on fbank; 0 = off
    noise_mix: bool = False  # mix supplemental noise-only clips in at 5-20 dB SNR
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (fbank always fp32)
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}."),
            (self.labels in LABEL_MODES, f"--labels must be one of {', '.join(LABEL_MODES)}, got {self.labels!r}."),
            (self.mixed_precision in MIXED_PRECISION,
             f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}."),
            (self.embedding_dim >= 1, f"--embedding-dim must be at least 1, got {self.embedding_dim}."),
            (self.mixup >= 0.0, f"--mixup must be >= 0 (0 = off), got {self.mixup}."),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    # where and how fast it runs does not change the result (the checkpoint counts by its SHA-256)
    NOT_IN_KEY = ("checkpoint", "device", "num_workers")

    def key(self) -> dict[str, Any]:
        """The options that change the trained model: another --device or --workers does not retrain."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_KEY}
