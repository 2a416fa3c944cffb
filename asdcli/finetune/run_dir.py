"""The fine-tuning run folder: writing its artifacts and turning them back into an embedder.

RUN_DIR layout (every file replaced atomically)::

    adapter/adapter_model.safetensors   LoRA tensors, peft naming          (LoRA runs)
    adapter/adapter_config.json         peft LoraConfig                     (LoRA runs)
    backbone.safetensors                every backbone weight               (--full-finetune runs)
    head.safetensors                    EmbeddingHead (fc1, fc2) + classifier.weight (AAM classes x sub-centres)
    run.json                            options, label map, checkpoint SHA-256 + cfg, history
    state/state.safetensors             resume state after the last finished epoch
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from asdcli.artifacts import read_json, write_bytes_atomic, write_json_atomic
from asdcli.errors import ArtifactError, ArtifactMismatch, ArtifactNotFound, ConfigError
from asdcli.finetune.head import CosineClassifier, EmbeddingHead, mean_pool
from asdcli.finetune.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_weights,
    load_adapter,
    save_adapter,
)

RUN_SCHEMA = 1
RUN_KIND = "asdcli-finetune-run"
EMBEDDING_KINDS = ("head", "pooled")
DEFAULT_EMBEDDING = "head"
HEAD_FILE = "head.safetensors"
HEAD_META_KEY = "head"
RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"
BACKBONE_FILE = "backbone.safetensors"


class AdapterEmbedder(nn.Module):
    """Normalised fbank (B, T, 128) -> embeddings (B, E) of a fine-tuned model.

    ``kind="head"``: the dense-layer embedding (what the AAM classifier saw), E = embedding_dim.
    ``kind="pooled"``: the token mean of the LoRA-adapted backbone, E = backbone width.
    """

    def __init__(self, backbone: nn.Module, head: EmbeddingHead, kind: str) -> None:
        super().__init__()
        self.backbone, self.head, self.kind = backbone, head, kind

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        pooled = mean_pool(self.backbone(fbank))
        return pooled if self.kind == "pooled" else self.head(pooled)


def head_tensors(head: EmbeddingHead, classifier: CosineClassifier) -> dict[str, torch.Tensor]:
    out = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    out["classifier.weight"] = classifier.weight.detach().float().cpu().contiguous()
    return out


def write_run_artifacts(
    run_dir: Path, backbone: nn.Module, head: EmbeddingHead, classifier: CosineClassifier, record: dict[str, Any]
) -> None:
    """Write adapter/ (a LoRA backbone) or backbone.safetensors (a fully fine-tuned one),
    head.safetensors and finally run.json (last, so it marks a complete run)."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    if isinstance(backbone, PeftModel):
        save_adapter(backbone, run_dir / ADAPTER_DIR)
    else:
        weights = {k: v.detach().float().cpu().contiguous() for k, v in backbone_tensors(backbone).items()}
        write_bytes_atomic(run_dir / BACKBONE_FILE, save(weights))
    meta = {
        "in_dim": str(head.in_dim),
        "hidden_dim": str(head.hidden_dim),
        "embedding_dim": str(head.embedding_dim),
        "n_classes": str(classifier.n_classes),
        "subcentres": str(classifier.subcentres),
    }
    # One metadata key: safetensors writes several in a random order per process, which would give
    # the same fine-tuning run another adapter_id each time.
    head_meta = {HEAD_META_KEY: json.dumps(meta, sort_keys=True)}
    write_bytes_atomic(run_dir / HEAD_FILE, save(head_tensors(head, classifier), metadata=head_meta))
    write_json_atomic(run_dir / RUN_FILE, {**record, "adapter_id": adapter_id(run_dir)})


def backbone_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``backbone`` once (a module shared by several
    layers, as BEATs' relative position bias, under its first name; caches are left out)."""
    persistent = backbone.state_dict().keys()
    buffers = {k: v for k, v in backbone.named_buffers() if k in persistent}
    return {**dict(backbone.named_parameters()), **buffers}


def is_full_finetune(run: Mapping[str, Any]) -> bool:
    """True for a run record of `asd finetune --full-finetune`."""
    model = run.get("model")
    return isinstance(model, Mapping) and model.get("kind") == "full"


def model_files(run_dir: Path, full: bool) -> list[Path]:
    """The files that define a run's fine-tuned model (besides the checkpoint), in a fixed order."""
    run_dir = Path(run_dir)
    backbone = (
        [run_dir / BACKBONE_FILE]
        if full
        else [run_dir / ADAPTER_DIR / ADAPTER_CONFIG, run_dir / ADAPTER_DIR / ADAPTER_WEIGHTS]
    )
    return [*backbone, run_dir / HEAD_FILE]


def adapter_id(run_dir: Path) -> str:
    """SHA-256 over the bytes of the files that define the fine-tuned model (adapter config and
    weights, or the full backbone, and the head): names the fine-tuned front end. Computed from the
    files, never read from run.json, so an edited or replaced file is another adapter."""
    h = hashlib.sha256()
    full = (Path(run_dir) / BACKBONE_FILE).is_file()
    for f in model_files(run_dir, full):
        try:
            data = f.read_bytes()
        except FileNotFoundError as e:
            raise ArtifactNotFound(
                f"Adapter file {f} does not exist. Re-run `asd finetune` for this run folder."
            ) from e
        except OSError as e:
            raise ArtifactError(f"Cannot read adapter file {f}: {e.strerror}.") from e
        h.update(f"{f.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def recorded_checkpoint(run_dir: Path) -> Path:
    """The checkpoint file run.json says the run was fine-tuned from (it must still be there)."""
    run = read_run(run_dir)
    ckpt = run.get("checkpoint")
    path = ckpt.get("path") if isinstance(ckpt, dict) else None
    if not isinstance(path, str) or not path:
        raise ArtifactError(f"{Path(run_dir) / RUN_FILE} does not record its checkpoint; pass --checkpoint.")
    if not Path(path).is_file():
        raise ArtifactNotFound(
            f"Adapter {run_dir} was fine-tuned from checkpoint {path}, which does not exist any "
            "more; pass --checkpoint with that file (its SHA-256 is checked)."
        )
    return Path(path)


def read_run(run_dir: Path) -> dict[str, Any]:
    """The validated run.json of a finished fine-tuning run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactNotFound(f"Adapter run folder {run_dir} does not exist. Run `asd finetune` first.")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise ArtifactNotFound(
            f"{path} does not exist: {run_dir} is not a finished `asd finetune` run (resume it with --resume)."
        )
    run = read_json(path, what="run record")
    if not isinstance(run, dict) or run.get("kind") != RUN_KIND:
        raise ArtifactError(f"{path} is not an `asd finetune` run record.")
    if run.get("schema_version") != RUN_SCHEMA:
        raise ArtifactError(f"{path} has schema version {run.get('schema_version')}, this asd reads {RUN_SCHEMA}.")
    return run


def load_head(run_dir: Path, in_dim: int | None = None) -> tuple[EmbeddingHead, torch.Tensor]:
    """The EmbeddingHead (eval mode) and the AAM class weights (C*K, E) stored in head.safetensors.

    ``in_dim``: the backbone width the head must take (ArtifactMismatch otherwise).
    """
    path = Path(run_dir) / HEAD_FILE
    if not path.is_file():
        raise ArtifactNotFound(f"Head file {path} does not exist. Re-run `asd finetune` for this run folder.")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if HEAD_META_KEY in meta:  # else a head written before the key, its fields one key each
            meta = json.loads(meta[HEAD_META_KEY])
        head = EmbeddingHead(int(meta["in_dim"]), int(meta["hidden_dim"]), int(meta["embedding_dim"]))
        check_weights(tensors, path)
        classifier = tensors.pop("classifier.weight")
        head.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")  # torch's are multi-line
        raise ArtifactError(f"Head file {path} is corrupt or incomplete ({first}). Re-run `asd finetune`.") from e
    if in_dim is not None and head.in_dim != in_dim:
        raise ArtifactMismatch(
            f"Head file {path} takes {head.in_dim}-d backbone features, but the checkpoint's "
            f"backbone is {in_dim}-d. Use the checkpoint the run was fine-tuned from."
        )
    if classifier.ndim != 2 or classifier.shape[1] != head.embedding_dim:
        raise ArtifactError(
            f"Head file {path} holds classifier weights of shape {tuple(classifier.shape)} for "
            f"{head.embedding_dim}-d embeddings. Re-run `asd finetune`."
        )
    return head.eval(), classifier


def load_full_backbone(backbone: nn.Module, path: Path) -> nn.Module:
    """Load every weight of a --full-finetune run's backbone.safetensors into ``backbone`` (in place)."""
    if not path.is_file():
        raise ArtifactNotFound(f"Backbone file {path} does not exist. Re-run `asd finetune --full-finetune`.")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"Backbone file {path} is corrupt ({e}). Re-run `asd finetune`.") from e
    check_weights(weights, path)
    own = backbone_tensors(backbone)
    differ = set(own) ^ set(weights)
    wrong = [k for k in set(own) & set(weights) if own[k].shape != weights[k].shape]
    if differ or wrong:
        raise ArtifactError(
            f"Backbone file {path} does not fit this checkpoint's model ({len(differ)} tensors "
            f"missing or extra, {len(wrong)} of another shape). Use the checkpoint it was fine-tuned from."
        )
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(weights[name])
    return backbone


def load_adapter_embedder(run_dir: Path, loaded: Any, embedding: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned embedder of ``run_dir`` on top of the checkpoint ``loaded`` (a LoadedBeats).

    Parameters
    ----------
    run_dir : Path
        Folder written by `asd finetune`.
    loaded : LoadedBeats
        The backbone checkpoint; its ``sha256`` must equal the one the run was trained from. Its
        model is copied, not modified.
    embedding : {"head", "pooled"} or None
        Which vector to return; None means "head".

    Returns
    -------
    (module, meta)
        ``module`` (eval mode, frozen, on CPU) maps normalised fbank (B, T, 128) float32 to
        (B, E) embeddings exactly as the fine-tuned model computed them. ``meta`` holds
        ``adapter_id`` (:func:`adapter_id` of the files), ``adapter_path``, ``embedding``, ``embedding_dim``, ``labels`` and
        ``checkpoint_sha256``.

    Raises
    ------
    ArtifactMismatch
        The run was fine-tuned from another checkpoint.
    """
    run_dir = Path(run_dir)
    kind = embedding or DEFAULT_EMBEDDING
    if kind not in EMBEDDING_KINDS:
        raise ConfigError(f"--embedding must be one of {', '.join(EMBEDDING_KINDS)}, got {kind!r}.")
    run = read_run(run_dir)
    ckpt: dict[str, Any] = run["checkpoint"] if isinstance(run.get("checkpoint"), dict) else {}
    want = ckpt.get("sha256")
    if want != loaded.sha256:
        raise ArtifactMismatch(
            f"Adapter {run_dir} was fine-tuned from checkpoint {ckpt.get('path')} "
            f"(SHA-256 {want!s:.12}...), not {loaded.path} ({loaded.sha256:.12}...). "
            "Pass the same --checkpoint that `asd finetune` used."
        )
    identity = adapter_id(run_dir)  # of the bytes about to be loaded
    head, _ = load_head(run_dir, loaded.model.cfg.encoder_embed_dim)
    if is_full_finetune(run):
        backbone = load_full_backbone(copy.deepcopy(loaded.model), run_dir / BACKBONE_FILE)
    else:
        backbone = load_adapter(copy.deepcopy(loaded.model), run_dir / ADAPTER_DIR)
    module = AdapterEmbedder(backbone, head, kind).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    dim = head.embedding_dim if kind == "head" else head.in_dim
    meta = {
        "adapter_id": identity,
        "adapter_path": str(run_dir),
        "embedding": kind,
        "embedding_dim": dim,
        "labels": run["labels"].get("mode") if isinstance(run.get("labels"), dict) else None,
        "checkpoint_sha256": loaded.sha256,
    }
    return module, meta
