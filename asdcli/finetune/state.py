"""Resume state of a fine-tuning run: one safetensors file written atomically after every epoch.

``RUN_DIR/state/state.safetensors`` holds the trainable weights (``param.<name>``), the optimizer
tensors (``optim.<index>.<key>``) and, in its string metadata, a JSON record with the finished
epoch count, the optimizer hyper-parameters, the fp16 grad-scaler state, the history and the
options key the run was started with. No pickles: it loads with safetensors only.

RNG: every epoch draws its batch order from (seed, epoch), its augmentations from a generator of
(seed, epoch, process) and its dropout from torch's RNG seeded (inside ``fork_rng``) from the same,
so "the RNG state after epoch e" is fully given by the seed and e; the record stores both, and a
resumed run replays the same draws.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from asdcli.artifacts import write_bytes_atomic
from asdcli.errors import ArtifactError

STATE_SCHEMA = 1
STATE_FILE = Path("state") / "state.safetensors"


@dataclass(frozen=True)
class TrainState:
    """What a resumed run needs: weights, optimizer state and the JSON record."""

    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    record: dict[str, Any]

    @property
    def epochs_done(self) -> int:
        return int(self.record["epochs_done"])


def derive_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (e.g. seed, epoch, process index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def lr_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Learning rate at optimizer step ``step`` of ``total``: linear warm-up, then cosine to 0."""
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of one epoch: one shuffle from (seed, epoch), shared by all processes,
    cut into global batches of batch_size*world; incomplete global batches are dropped when world>1."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 104729))).tolist()
    span = batch_size * world
    batches = []
    for start in range(0, n, span):
        chunk = order[start : start + span]
        if len(chunk) < span and world > 1:
            break
        mine = chunk[rank * batch_size : (rank + 1) * batch_size]
        if mine:
            batches.append(mine)
    return batches


def save_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    """Write the trainable weights of ``model``, the optimizer and ``record`` to the state file."""
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t.detach().cpu().contiguous()
    full = {"schema_version": STATE_SCHEMA, **record, "param_groups": opt["param_groups"]}
    write_bytes_atomic(Path(run_dir) / STATE_FILE, save(tensors, metadata={"record": json.dumps(full)}))


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The JSON record of ``run_dir``'s state without its tensors (None: no readable state)."""
    try:
        with safe_open(str(Path(run_dir) / STATE_FILE), framework="pt") as f:
            record = json.loads((f.metadata() or {})["record"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def load_state(run_dir: Path) -> TrainState | None:
    """The state of ``run_dir`` or None when it has none yet."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            record = json.loads((f.metadata() or {})["record"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ArtifactError(f"Resume state {path} is corrupt ({e}). Delete it to start the run again.") from e
    if record.get("schema_version") != STATE_SCHEMA:
        raise ArtifactError(f"Resume state {path} has schema {record.get('schema_version')}; delete it to restart.")
    params = {k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    optimizer = {"state": state, "param_groups": record.pop("param_groups")}
    return TrainState(params=params, optimizer=optimizer, record=record)


def restore_params(model: nn.Module, params: dict[str, torch.Tensor], path: Path) -> None:
    """Copy saved trainable weights into ``model``; the set of names must match exactly."""
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(own) != set(params):
        raise ArtifactError(
            f"Resume state {path} does not fit this model ({len(set(own) ^ set(params))} "
            "tensors differ). Delete it or use the options the run was started with."
        )
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(params[name].to(p.device, p.dtype))
