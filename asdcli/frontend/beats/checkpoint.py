"""Official BEATs checkpoint files: strict loading, saving in the official format, default location."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asdcli.artifacts import atomic_write, cached_sha256, file_key
from asdcli.errors import ArtifactError, ArtifactNotFound, ConfigError
from asdcli.frontend.beats.backbone import BEATs
from asdcli.frontend.beats.config import BeatsConfig, tiny_beats_config

CHECKPOINT_ENV = "ASD_CHECKPOINT"
DEFAULT_CHECKPOINT = Path("~/.cache/asdcli/BEATs_iter3.pt")
PREDICTOR_KEYS = ("predictor.weight", "predictor.bias")
SHARED_TABLE = "self_attn.relative_attention_bias.weight"
_OFFICIAL = "pass an official BEATs checkpoint such as BEATs_iter3.pt from the microsoft/unilm BEATs page"
# what torch.load(weights_only=True) raises on a truncated, foreign or corrupt file
_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
                pickle.UnpicklingError, zipfile.BadZipFile)  # fmt: skip


@dataclass(frozen=True)
class LoadedBeats:
    """A BEATs model loaded from an official checkpoint, in eval mode on CPU."""

    model: BEATs
    cfg: dict[str, Any]  # the checkpoint's cfg dict as stored
    sha256: str
    path: Path


def resolve_checkpoint(path: str | Path | None = None) -> Path:
    """The checkpoint to use: ``path``, else ``$ASD_CHECKPOINT``, else ~/.cache/asdcli/BEATs_iter3.pt.

    Raises ArtifactNotFound, saying where to put the file, when it does not exist.
    """
    if path is not None:
        chosen, how = Path(path).expanduser(), "given"
    elif os.environ.get(CHECKPOINT_ENV):
        chosen, how = Path(os.environ[CHECKPOINT_ENV]).expanduser(), f"from ${CHECKPOINT_ENV}"
    else:
        chosen, how = DEFAULT_CHECKPOINT.expanduser(), "default"
    if not chosen.is_file():
        raise ArtifactNotFound(
            f"BEATs checkpoint {chosen} ({how}) does not exist. Download BEATs_iter3.pt from the "
            f"microsoft/unilm BEATs page and pass --checkpoint, set ${CHECKPOINT_ENV}, or put it at {DEFAULT_CHECKPOINT}."
        )
    return chosen


def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ArtifactNotFound(f"BEATs checkpoint {path} does not exist.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save zip, or a legacy pickle
        raise ArtifactError(f"{path} is not a readable BEATs checkpoint (not a torch.save file); {_OFFICIAL}.")
    try:
        # A zip file is mapped, not read: its pages are copied once, into the model's tensors.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=magic == b"PK\x03\x04")
    except _LOAD_ERRORS as e:
        first = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() else type(e).__name__
        raise ArtifactError(
            f"{path} is not a readable BEATs checkpoint ({first}); it may be truncated: re-download it."
        ) from e
    if (
        not isinstance(obj, Mapping)
        or not isinstance(obj.get("cfg"), Mapping)
        or not isinstance(obj.get("model"), Mapping)
    ):
        raise ArtifactError(f"{path} is not a BEATs checkpoint (no 'cfg' and 'model' entries); {_OFFICIAL}.")
    return obj


def _state_dict_for(model: BEATs, state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Check keys, shapes and the shared table copies; return what load_state_dict(strict) needs."""
    state = {k: v for k, v in state.items() if hasattr(model, "predictor") or k not in PREDICTOR_KEYS}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {', '.join(unexpected[:3])}" if unexpected else "")  # fmt: skip
        raise ArtifactError(f"{path} does not match the BEATs architecture of its cfg ({detail}).")
    for k, v in expected.items():
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape:
            got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
            raise ArtifactError(f"{path}: {k} has shape {got}, expected {tuple(v.shape)}.")
        if state[k].layout != torch.strided or state[k].is_meta:  # no plain values to check and copy
            what = "a meta tensor (no values)" if state[k].is_meta else f"a {state[k].layout} tensor"
            raise ArtifactError(f"{path}: {k} is {what}, not a dense one; save the checkpoint with dense weights.")
        if v.is_floating_point() and not state[k].is_floating_point():  # load_state_dict would cast it silently
            raise ArtifactError(f"{path}: {k} holds {state[k].dtype} values, not floating point; {_OFFICIAL}.")
        if v.is_floating_point() and not _all_finite(state[k]):
            raise ArtifactError(f"{path}: {k} holds NaN or Inf values; the checkpoint is damaged: re-download it.")
    tables = [v for k, v in state.items() if k.endswith(SHARED_TABLE)]
    if any(not torch.equal(t, tables[0]) for t in tables[1:]):
        raise ArtifactError(f"{path}: the relative position tables of the layers differ; BEATs shares one.")
    # One private copy each, in the model's dtype: a mapped page still reads the file, so a file
    # rewritten in place (cp, curl -o) would change the weights of a running command, and one
    # truncated would kill it (SIGBUS). The copy also keeps two keys stored as one tensor apart.
    return {k: v.to(dtype=expected[k].dtype, memory_format=torch.contiguous_format, copy=True)
            for k, v in state.items()}  # fmt: skip


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in ``t``: min and max propagate both, in one pass and without a mask as big as ``t``."""
    return t.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())


def _untrained(cfg: BeatsConfig, with_predictor: bool) -> BEATs:
    """The architecture without weights: a random init, which the checkpoint overwrites, costs
    about as much as reading the file. Built on the meta device; buffers get ``torch.empty``
    storage (``Module.to_empty`` would go through Python references that import sympy, most of a
    second), parameters stay on meta until ``load_state_dict(assign=True)`` puts the copies
    that ``_state_dict_for`` made of the checkpoint's tensors in their place."""
    with torch.device("meta"):
        model = BEATs(cfg, with_predictor=with_predictor)
    for module in model.modules():  # each module once, so a shared one keeps being shared
        for name, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype))
    return model


def _check_size_against_file(cfg: BeatsConfig, path: Path) -> None:
    """Refuse, before building it, a cfg describing a model bigger than the file holds (at 1 byte
    per value, the smallest type; a non-float one is refused later, by name): its weights cannot
    be in the file."""
    needed = cfg.min_parameters()
    size = path.stat().st_size
    if needed > size:
        raise ArtifactError(
            f"{path}: its cfg describes a model of at least {cfg.min_parameters():,} parameters "
            f"({needed / 1e9:.1f} GB), but the file is {size / 1e6:.1f} MB; the cfg or the file is "
            "damaged: re-download it."
        )


def load_beats(path: str | Path, with_predictor: bool = False) -> LoadedBeats:
    """Load an official BEATs checkpoint strictly (``torch.load(weights_only=True)``).

    The architecture comes from the checkpoint's ``cfg``. A fine-tuned file's ``predictor.*``
    is dropped unless ``with_predictor``. The model is returned in eval mode, fp32, on CPU.
    Raises ArtifactNotFound / ArtifactError for a missing, corrupt or non-BEATs file.
    """
    path = Path(path)
    version = file_key(path) if path.is_file() else None
    ckpt = _read(path)
    try:
        cfg = BeatsConfig.from_dict(ckpt["cfg"])
    except ConfigError as e:
        raise ArtifactError(f"{path} has an unusable BEATs cfg: {e}") from e
    if with_predictor and not cfg.finetuned_model:
        raise ArtifactError(f"{path} is a pretrained BEATs checkpoint without a predictor head.")
    _check_size_against_file(cfg, path)
    model = _untrained(cfg, with_predictor)
    model.load_state_dict(_state_dict_for(model, ckpt["model"], path), strict=True, assign=True)
    model.eval()
    sha256 = cached_sha256(path)
    if file_key(path) != version:  # the hash would name other bytes than the weights loaded
        raise ArtifactError(f"{path} changed while it was being loaded; run again once it is complete.")
    return LoadedBeats(model=model, cfg=dict(ckpt["cfg"]), sha256=sha256, path=path)


def save_official_checkpoint(path: str | Path, model: BEATs, cfg_dict: Mapping[str, Any]) -> None:
    """Write ``{'cfg': cfg_dict, 'model': state_dict}`` atomically, like the official files.

    The state_dict holds one copy of the shared relative position table per layer, as official
    files do.
    """
    BeatsConfig.from_dict(cfg_dict)  # never write a cfg we could not load back
    state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save({"cfg": dict(cfg_dict), "model": state}, f)


def make_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny BEATs (``tiny_beats_config``) in the official format.

    For the demo and tests: same seed, same weights; the global torch RNG is left as it was.
    """
    cfg = tiny_beats_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BEATs(BeatsConfig.from_dict(cfg))
    save_official_checkpoint(path, model, cfg)
    return Path(path)
