"""The run.json record of a finished fine-tuning run: its config, checkpoint, labels, data, model and versions."""

from __future__ import annotations

import platform
import time
from typing import Any

import accelerate
import numpy as np
import peft
import torch

from asdcli import __version__
from asdcli.finetune.config import FinetuneConfig
from asdcli.finetune.labels import LabelledClips, TrainingData
from asdcli.finetune.lora import LORA_TARGETS, count_parameters
from asdcli.finetune.run_dir import RUN_KIND, RUN_SCHEMA
from asdcli.finetune.trainer import Trainer


def _versions() -> dict[str, str]:
    return {
        "asdcli": __version__,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def _model_record(cfg: FinetuneConfig, trainer: Trainer) -> dict[str, Any]:
    head = trainer.model.head
    backbone = (
        {
            "kind": "full",
            "layer_decay": cfg.layer_decay,
            "backbone_mode": "every weight trained, eval mode (dropout and layerdrop off)",
        }
        if cfg.full_finetune
        else {
            "kind": "lora",
            "lora": {
                "rank": cfg.lora_rank,
                "alpha": cfg.lora_alpha,
                "dropout": cfg.lora_dropout,
                "targets": list(LORA_TARGETS),
            },
            "backbone_mode": "frozen, eval mode (dropout and layerdrop off); LoRA dropout on",
        }
    )
    return {
        "backbone_dim": head.in_dim,
        "hidden_dim": head.hidden_dim,
        "embedding_dim": head.embedding_dim,
        **backbone,
        "aam": {"margin": cfg.margin, "scale": cfg.scale, "subcentres": cfg.subcentres},
        "trainable_parameters": count_parameters(trainer.model, trainable_only=True),
        "default_embedding": "head",
    }


def run_record(
    cfg: FinetuneConfig,
    clips: LabelledClips,
    data: TrainingData,
    loaded: Any,
    trainer: Trainer,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    n = len(clips.classes)
    return {
        "schema_version": RUN_SCHEMA,
        "kind": RUN_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "cfg": loaded.cfg},
        "labels": {
            "mode": cfg.labels,
            "classes": clips.classes,
            "train_counts": np.bincount(clips.labels[clips.train], minlength=n).tolist(),
            "val_counts": np.bincount(clips.labels[clips.val], minlength=n).tolist(),
        },
        "data": {
            "n_train": len(clips.train),
            "n_val": len(clips.val),
            "n_noise": len(data.noise),
            "n_clean": data.n_clean,
            "machines": sorted({c.machine for c in clips.clips}),
            "roots": [dict(r) for r in data.roots],
        },
        "model": _model_record(cfg, trainer),
        "optimizer": {
            "name": "Adam",
            "lr": cfg.lr,
            "schedule": "linear warm-up then cosine to 0",
            "warmup_fraction": cfg.warmup_fraction,
        },
        "seed": cfg.seed,
        "world_size": trainer.procs.world,
        "versions": _versions(),
        "history": history,
    }
