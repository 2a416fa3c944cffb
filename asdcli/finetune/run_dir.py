"""The fine-tuning run folder: writing its artifacts and turning them back into an embedder.

RUN_DIR layout (every file replaced atomically)::

    adapter/adapter_model.safetensors   LoRA tensors, peft naming
    adapter/adapter_config.json         peft LoraConfig
    head.safetensors                    EmbeddingHead (fc1, fc2) + classifier.weight (AAM classes)
    run.json                            options, label map, checkpoint SHA-256 + cfg, history
    state/state.safetensors             resume state after the last finished epoch
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from asdcli.artifacts import read_json, write_bytes_atomic, write_json_atomic
from asdcli.errors import ArtifactError, ArtifactMismatch, ArtifactNotFound, ConfigError
from asdcli.finetune.head import EmbeddingHead, mean_pool
from asdcli.finetune.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter

RUN_SCHEMA = 1
RUN_KIND = "asdcli-finetune-run"
EMBEDDING_KINDS = ("head", "pooled")
DEFAULT_EMBEDDING = "head"
HEAD_FILE = "head.safetensors"
RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"


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


def head_tensors(head: EmbeddingHead, classifier_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    out["classifier.weight"] = classifier_weight.detach().float().cpu().contiguous()
    return out


def write_run_artifacts(run_dir: Path, backbone: nn.Module, head: EmbeddingHead,
                        classifier_weight: torch.Tensor, record: dict[str, Any]) -> None:
    """Write adapter/, head.safetensors and finally run.json (last, so it marks a complete run)."""
    run_dir = Path(run_dir)
    save_adapter(backbone, run_dir / ADAPTER_DIR)  # type: ignore[arg-type]
    meta = {"in_dim": str(head.in_dim), "hidden_dim": str(head.hidden_dim), "embedding_dim": str(head.embedding_dim)}
    write_bytes_atomic(run_dir / HEAD_FILE, save(head_tensors(head, classifier_weight), metadata=meta))
    write_json_atomic(run_dir / RUN_FILE, {**record, "adapter_id": adapter_id(run_dir)})


def adapter_id(run_dir: Path) -> str:
    """SHA-256 over the bytes of the files that define the fine-tuned model (adapter config,
    adapter weights, head): names the fine-tuned front end. Computed from the files, never read
    from run.json, so an edited or replaced file is another adapter."""
    h = hashlib.sha256()
    for f in (Path(run_dir) / ADAPTER_DIR / ADAPTER_CONFIG, Path(run_dir) / ADAPTER_DIR / ADAPTER_WEIGHTS,
              Path(run_dir) / HEAD_FILE):  # fmt: skip
        try:
            data = f.read_bytes()
        except FileNotFoundError as e:
            raise ArtifactNotFound(f"Adapter file {f} does not exist. Re-run `asd finetune` for this run folder.") from e
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
        raise ArtifactNotFound(f"Adapter {run_dir} was fine-tuned from checkpoint {path}, which does not exist any "
                               "more; pass --checkpoint with that file (its SHA-256 is checked).")
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


def load_head(run_dir: Path) -> tuple[EmbeddingHead, torch.Tensor]:
    """The EmbeddingHead (eval mode) and the AAM class weights (C, E) stored in head.safetensors."""
    path = Path(run_dir) / HEAD_FILE
    if not path.is_file():
        raise ArtifactNotFound(f"Head file {path} does not exist. Re-run `asd finetune` for this run folder.")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        head = EmbeddingHead(int(meta["in_dim"]), int(meta["hidden_dim"]), int(meta["embedding_dim"]))
        classifier = tensors.pop("classifier.weight")
        head.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"Head file {path} is corrupt or incomplete ({e}). Re-run `asd finetune`.") from e
    return head.eval(), classifier


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
    recorded: dict[str, Any] = run["checkpoint"] if isinstance(run.get("checkpoint"), dict) else {}
    want = recorded.get("sha256")
    if want != loaded.sha256:
        raise ArtifactMismatch(
            f"Adapter {run_dir} was fine-tuned from checkpoint {recorded.get('path')} "
            f"(SHA-256 {str(want):.12}...), not {loaded.path} ({loaded.sha256:.12}...). "
            "Pass the same --checkpoint that `asd finetune` used."
        )
    identity = adapter_id(run_dir)  # of the bytes about to be loaded
    head, _ = load_head(run_dir)
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
        "labels": run.get("labels", {}).get("mode") if isinstance(run.get("labels"), dict) else None,
        "checkpoint_sha256": loaded.sha256,
    }
    return module, meta
