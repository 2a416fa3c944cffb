"""The system meta YAML of an `asd package` (``<label>.meta.yaml``): what the run folder says of the
system (bank options, embedding record, fine-tuning record) filled in, with the parameter and
multiply-accumulate counts of its BEATs; the rest is left ``FILL IN`` for the authors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asdcli import __version__
from asdcli.pipeline.run_check import check_run_file

if TYPE_CHECKING:
    from asdcli.evaluate.package import PackageConfig

FILL = "FILL IN"


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _yaml_lines(data: Mapping[str, Any], indent: int = 0) -> list[str]:
    lines = []
    pad = "  " * indent
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key}:")
            lines += _yaml_lines(value, indent + 1)
        elif isinstance(value, list):
            lines.append(f"{pad}{key}:")
            for item in value:
                sub = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}  - {sub[0].strip()}")
                lines += sub[1:]
        else:
            lines.append(f"{pad}{key}: {_yaml(value)}")
    return lines


def transformer_macs(cfg: Mapping[str, Any], seconds: float) -> int:
    """Multiply-accumulates of one BEATs forward pass over a clip (patch embedding, projections,
    attention and feed-forward matmuls; norms and activations left out)."""
    frames = int(seconds * 100)  # 10 ms fbank hop
    patch = int(cfg.get("input_patch_size", 16))
    tokens = (frames // patch) * (128 // patch)
    d, ffn, emb = (
        int(cfg.get(k, v)) for k, v in (("encoder_embed_dim", 768), ("encoder_ffn_embed_dim", 3072), ("embed_dim", 512))
    )
    layers = int(cfg.get("encoder_layers", 12))
    per_layer = tokens * (4 * d * d + 2 * d * ffn) + 2 * tokens * tokens * d
    return tokens * patch * patch * emb + (tokens * emb * d if emb != d else 0) + layers * per_layer


def backbone_parameters(cfg: Mapping[str, Any]) -> int | None:
    """Parameter count of the BEATs backbone described by ``cfg`` (built on the meta device: no memory)."""
    try:
        import torch

        from asdcli.frontend.beats.backbone import BEATs
        from asdcli.frontend.beats.config import BeatsConfig

        with torch.device("meta"):
            model = BEATs(BeatsConfig.from_dict(dict(cfg)))
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:  # an unusual cfg: leave the count to the user
        return None


def _run_facts(run: Path | None) -> dict[str, Any]:
    """What the run folder says about the system: bank config, embedding meta, fine-tuning record."""
    facts: dict[str, Any] = {}
    if run is None:
        return facts
    from asdcli.backend.bank import bank_paths, load_bank

    banks = bank_paths(run / "banks")
    if banks:
        bank = load_bank(banks[0])
        facts.update(bank=bank.config, embedding=bank.embedding_meta, threshold=bank.threshold_info)
    record = run / "finetune" / "run.json"
    emb = facts.get("embedding", {})
    frozen = "adapter_id" in emb and emb["adapter_id"] is None  # banks of --no-finetune over a fine-tuned run
    if record.is_file() and not frozen:
        from asdcli.artifacts import read_json

        check_run_file(run, "finetune", record, "fine-tuning record")
        facts["finetune"] = read_json(record, what="run record")
    return facts


def system_meta(cfg: PackageConfig, run: Path | None) -> str:
    """The system meta YAML: what asdcli knows filled in, the rest ``FILL IN``."""
    facts = _run_facts(run)
    emb = facts.get("embedding", {})
    backbone = emb.get("backbone_cfg") or {}
    spec = emb.get("frontend") if isinstance(emb.get("frontend"), dict) else {}
    seconds = float(spec.get("clip_seconds") or 10.0)
    ft = facts.get("finetune")
    bank = facts.get("bank")
    params = backbone_parameters(backbone) if backbone else None
    recipe = method(spec, ft)
    if bank is not None:
        norm = f", score norm {bank.score_norm}" if bank.score_norm != "none" else ""
        recipe += f" (k={bank.k}{norm})"
    known = bool(facts)  # a run folder; a bare submission folder (e.g. `asd fuse`'s) says nothing of its system
    trainable = _trainable(ft) if known else FILL
    meta = {
        "submission": {
            "label": cfg.label,
            "name": FILL,
            "abbreviation": FILL,
            "authors": [
                {
                    "lastname": cfg.team.split("_")[0],
                    "firstname": FILL,
                    "email": FILL,
                    "corresponding": True,
                    "affiliation": {
                        "abbreviation": cfg.team.split("_", 1)[1],
                        "institute": FILL,
                        "department": FILL,
                        "location": FILL,
                    },
                }
            ],
        },
        "system": {
            "description": {
                "input_sampling_rate": "16kHz",
                "acoustic_features": "log-mel filterbank (128 bins, 25 ms window, 10 ms hop), BEATs patches",
                "data_augmentation": _augmentation(ft) if known else FILL,
                "machine_learning_method": recipe if known else FILL,
                "pretrained_model": _checkpoint(emb),
                "decision_making": (
                    "score above a gamma-fit quantile of the bank's leave-one-out scores (the empirical "
                    "quantile where the fit fails, never below the lowest of those scores)"
                ),
                "external_data_usage": "pre-trained model" if backbone else FILL,
                "development_data_usage": FILL,
                "ensemble_method_subsystem_count": 1 if known else FILL,
            },
            "complexity": {
                "total_parameters": _total(params, trainable),
                "trainable_parameters": trainable,
                "MACS": transformer_macs(backbone, seconds) if backbone else FILL,
            },
            "source_code": "asdcli " + __version__,
        },
        "results": {"development_dataset": FILL},
    }
    head = (
        f"# DCASE 2025 Task 2 system meta information for {cfg.label}, written by `asd package`.\n"
        f'# Replace every "{FILL}"; MACS counts one forward pass over a {seconds:g} s clip.\n'
    )
    return head + "\n".join(_yaml_lines(meta)) + "\n"


def _checkpoint(emb: Mapping[str, Any]) -> str:
    path, sha = emb.get("checkpoint_path"), emb.get("checkpoint_sha256")
    if not path:
        return FILL
    return f"BEATs, checkpoint {Path(str(path)).name}" + (f" (SHA-256 {str(sha)[:16]})" if sha else "")


def _total(backbone: int | None, trainable: int | str) -> int | str:
    """Backbone plus the fine-tuned LoRA and head parameters."""
    if backbone is None or not isinstance(trainable, int):
        return FILL
    return backbone + trainable


def method(spec: Mapping[str, Any], ft: Mapping[str, Any] | None) -> str:
    """The front end of the banks in words, from their front-end record (embedding kind, layers)
    and the fine-tuning record: what the meta YAML says the system computes."""
    knn = "KNN cosine distance to the train clips"
    if ft is None:
        layers = str(spec.get("layers", "last"))
        pooled = "the last layer" if layers == "last" else f"layers {layers}, concatenated"
        return f"BEATs embeddings (mean over tokens of {pooled}), {knn}"
    how = "fully fine-tuned" if dict(ft.get("config") or {}).get("full_finetune") else "fine-tuned with LoRA"
    vector = (
        "pooled embeddings (mean over tokens of the fine-tuned backbone)"
        if spec.get("embedding") == "pooled"
        else "head embeddings"
    )
    return f"BEATs {how} as a machine-type classifier (AAM softmax); {vector}; {knn}"


def _trainable(ft: Mapping[str, Any] | None) -> int | str:
    if ft is None:
        return 0
    value = ft.get("model", {}).get("trainable_parameters")
    return int(value) if isinstance(value, int) else FILL


def _augmentation(ft: Mapping[str, Any] | None) -> str:
    if ft is None:
        return "none"
    options = ft.get("config", {})
    used = [
        name
        for name, on in (
            ("SpecAugment", options.get("specaugment")),
            ("mixup", options.get("mixup")),
            ("noise mixing", options.get("noise_mix")),
        )
        if on
    ]
    return ", ".join(used) or "none"
