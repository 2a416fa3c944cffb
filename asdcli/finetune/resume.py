"""What must not change between a fine-tuning run and its resumption, and what to say when it did.

The resume state records its key (a hash of the options, the training clip names, the classes and
the checkpoint's SHA-256) and, since this version, those inputs themselves in a readable form, so
a refusal names the options that differ with their old and new values instead of only saying
that something does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asdcli.errors import ConfigError
from asdcli.finetune.config import FinetuneConfig, option_flag
from asdcli.finetune.run_dir import RUN_FILE
from asdcli.finetune.state import STATE_FILE, TrainState, load_state, read_record

SHOWN_CHANGES = 3  # a refusal lists this many differences, then "and N more"


def resume_key(cfg: FinetuneConfig, train_names: Sequence[str], classes: Sequence[str], sha256: str) -> str:
    """Hash of everything that must not change between a run and its resumption."""
    blob = json.dumps(
        {"opts": cfg.key(), "train": list(train_names), "classes": list(classes), "sha256": sha256}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def resume_inputs(
    cfg: FinetuneConfig, train_names: Sequence[str], classes: Sequence[str], sha256: str
) -> dict[str, Any]:
    """The key's inputs as the state records them: the options as they are, the clips as a count and a hash."""
    names = json.dumps(list(train_names)).encode("utf-8", "surrogateescape")
    return {
        "options": cfg.key(),
        "n_train": len(train_names),
        "train_sha256": hashlib.sha256(names).hexdigest(),
        "classes": list(classes),
        "checkpoint_sha256": sha256,
    }


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else json.dumps(value)


def option_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``--flag OLD (now NEW)`` for every option whose value differs, in --help order."""
    names = [n for n in FinetuneConfig.__dataclass_fields__ if n in old or n in new]
    names += sorted(set(old) - set(names))  # an option of another asdcli version
    flag = {
        n: option_flag(n) if n in FinetuneConfig.__dataclass_fields__ else "--" + n.replace("_", "-") for n in names
    }
    return [f"{flag[n]} {_show(old.get(n))} (now {_show(new.get(n))})" for n in names if old.get(n) != new.get(n)]


def input_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`resume_inputs`: the options first, then clips, classes, checkpoint."""
    changes = option_changes(old.get("options") or {}, new["options"])
    if old.get("n_train") != new["n_train"]:
        changes.append(f"the training clips ({old.get('n_train')}, now {new['n_train']})")
    elif old.get("train_sha256") != new["train_sha256"]:
        changes.append(f"the training clips (as many, {new['n_train']}, but other names)")
    if old.get("classes") != new["classes"]:
        changes.append(f"the classes ({len(old.get('classes') or [])}, now {len(new['classes'])})")
    if old.get("checkpoint_sha256") != new["checkpoint_sha256"]:
        sha = str(old.get("checkpoint_sha256"))[:12]
        changes.append(f"the checkpoint (SHA-256 {sha}..., now {new['checkpoint_sha256'][:12]}...)")
    return changes


def listed(changes: Sequence[str]) -> str:
    """The first SHOWN_CHANGES of ``changes`` joined, with how many more there are."""
    shown = ", ".join(changes[:SHOWN_CHANGES])
    return shown + (f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else "")


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """Without --resume, a folder that holds a fine-tuning run is an error."""
    if not resume and ((out_dir / STATE_FILE).exists() or (out_dir / RUN_FILE).exists()):
        raise ConfigError(
            f"{out_dir} already holds a fine-tuning run; pass --resume to continue it or choose another --out."
        )


def resume_state(out_dir: Path, key: str, inputs: Mapping[str, Any]) -> TrainState | None:
    """The state to resume from (None: none yet); a ConfigError naming what differs when it was
    made from other ``inputs``."""
    state = load_state(out_dir)
    if state is None or state.record.get("key") == key:
        return state
    recorded = state.record.get("inputs")
    changes = input_changes(recorded, inputs) if isinstance(recorded, dict) else []
    what = listed(changes) if changes else "other options, training clips or checkpoint (this state predates the list)"
    raise ConfigError(
        f"{out_dir / STATE_FILE} was made with {what}; resume with the same options, clips and checkpoint "
        "as it was started with, or choose a new --out folder."
    )


def recorded_option_changes(out_dir: Path, cfg: FinetuneConfig) -> list[str]:
    """The options of ``cfg`` that differ from those ``out_dir``'s resume state records ([]: none
    differ, or no state, or one that predates the record)."""
    record = read_record(out_dir)
    inputs = record.get("inputs") if record is not None else None
    return option_changes(inputs.get("options") or {}, cfg.key()) if isinstance(inputs, dict) else []
