"""Choosing the torch device from a user option."""

from __future__ import annotations

import torch

from asdcli.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """The device for ``name``: auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.

    Raises ConfigError for an unknown name or a device this machine does not have.
    """
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu or auto.")
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise ConfigError(f"--device {name} is not a valid CUDA device name.") from e
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist.")
        return device
    if name == "mps":
        if not _mps_available():
            raise ConfigError("--device mps: Apple MPS is not available here; use --device cpu or auto.")
        return torch.device("mps")
    raise ConfigError(f"--device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}.")
