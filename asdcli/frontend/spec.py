"""The artifact contract: one frozen description of the front end that made a set of embeddings.

Every embeddings file stores it as ``meta["frontend"]`` and every bank keeps the embeddings' meta,
so two artifacts belong together exactly when :func:`check_same_frontend` finds every field equal.
A field missing on either side is a mismatch: an artifact that cannot say how it was made is not
trusted. Built only by :func:`asdcli.frontend.embedder.build_embedder`.

Embeddings of windows of long recordings (`asd embed --window`), and the banks fitted on them, also
record the windows as ``meta["window"]`` (``window_s``, ``hop_s``): :func:`check_same_windows`.
An artifact without that record holds whole clips (every asdcli that cut windows recorded them).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from asdcli.data.clip_length import SAMPLE_RATE
from asdcli.errors import ArtifactError, ArtifactMismatch

SPEC_SCHEMA = 1
SPEC_KEY = "frontend"  # where the spec lives in an artifact's meta
WINDOW_KEY = "window"  # where windowed artifacts record their window and hop
FEATURES = "beats-kaldi-fbank128-v1"  # the fbank and its normalization (frontend/features.py)


@dataclass(frozen=True)
class FrontendSpec:
    """Everything an embedding vector depends on.

    checkpoint_sha256: SHA-256 of the BEATs checkpoint file; backbone_cfg_sha256: SHA-256 of its
    cfg as canonical JSON; adapter_sha256: SHA-256 of the bytes of adapter_config.json,
    adapter_model.safetensors and head.safetensors (None: frozen BEATs); embedding: "backbone",
    "head" or "pooled"; layers: "last" or the 1-based transformer layers pooled, e.g. "7,10";
    pooling: over tokens; clip_seconds: pad/cut length (None: natural); channel: the kept
    channel (None: mean); precision: numeric format of the forward.
    """

    checkpoint_sha256: str
    backbone_cfg_sha256: str
    adapter_sha256: str | None
    embedding: str
    layers: str
    pooling: str
    clip_seconds: float | None
    channel: int | None
    sample_rate: int
    features: str = FEATURES
    precision: str = "fp32"
    schema_version: int = SPEC_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A short human description, e.g. for progress lines."""
        adapter = f"adapter {self.adapter_sha256[:12]}" if self.adapter_sha256 else "frozen"
        return f"{adapter}, {self.embedding}, layers {self.layers}, {self.clip_seconds} s"


SPEC_FIELDS = tuple(f.name for f in fields(FrontendSpec))


def cfg_sha256(cfg: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint cfg as canonical JSON (sorted keys)."""
    blob = json.dumps(dict(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def spec_of(meta: Mapping[str, Any], what: str) -> dict[str, Any] | None:
    """The stored spec of an artifact's meta (None when absent); not an object is ArtifactError."""
    spec = meta.get(SPEC_KEY)
    if spec is None or isinstance(spec, str):  # a string: the fbank name of embeddings schema 1, no record
        return None
    if not isinstance(spec, Mapping):
        raise ArtifactError(f"{what} has a malformed front-end record ({SPEC_KEY!r} is not an object); re-create it.")
    return dict(spec)


def _short(value: Any) -> str:
    """A field's value for a one-line message: JSON, a long string cut inside its quotes."""
    if isinstance(value, str) and len(value) > 18:
        return json.dumps(value[:12] + "...")
    text = "missing" if value is _MISSING else json.dumps(value, default=str)
    return text if len(text) <= 20 else text[:17] + "..."


_MISSING = object()


def frontend_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                         ignore: Collection[str] = ()) -> list[str]:  # fmt: skip
    """Names of the spec fields that differ (a field missing on either side differs), except ``ignore``."""
    a, b = dict(a or {}), dict(b or {})
    return [f for f in SPEC_FIELDS if f not in ignore and (f not in a or f not in b or a[f] != b[f])]


def check_same_frontend(meta_a: Mapping[str, Any], meta_b: Mapping[str, Any], what_a: str, what_b: str,
                        ignore: Collection[str] = ()) -> None:  # fmt: skip
    """Raise ArtifactMismatch, naming the differing fields on one line, unless the front-end
    specs of two artifacts' meta records are equal field by field. ``ignore``: fields shown
    (by measurement) not to change what the vectors mean, e.g. a precision."""
    a, b = spec_of(meta_a, what_a), spec_of(meta_b, what_b)
    if a is None or b is None:
        lacking = what_a if a is None else what_b
        raise ArtifactMismatch(
            f"{lacking} does not record its front end (made by an older asdcli or another tool), so it cannot be "
            f"checked against {what_b if a is None else what_a}; re-create it with this asdcli."
        )
    diff = frontend_differences(a, b, ignore)
    if diff:
        shown = ", ".join(f"{f} {_short(a.get(f, _MISSING))} vs {_short(b.get(f, _MISSING))}" for f in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise ArtifactMismatch(
            f"{what_a} and {what_b} were made with different front ends ({shown}{more}); "
            "embed both with the same checkpoint, adapter and options."
        )


def window_record(meta: Mapping[str, Any], what: str) -> tuple[float, float] | None:
    """(window_s, hop_s) of an artifact made of windows of long recordings; None: whole clips.
    A record that is not two positive numbers is ArtifactError."""
    record = meta.get(WINDOW_KEY)
    if not record:
        return None
    values = [record.get(k) for k in ("window_s", "hop_s")] if isinstance(record, Mapping) else []
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != 2 or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise ArtifactError(
            f"{what} has a malformed window record ({WINDOW_KEY!r} needs window_s and hop_s in seconds); "
            "re-create it with `asd embed --window`."
        )
    return numbers[0], numbers[1]


def same_windows(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (window_s, hop_s) cut the same windows (equal in 16 kHz samples)."""
    return all(round(x * SAMPLE_RATE) == round(y * SAMPLE_RATE) for x, y in zip(a, b))


def describe_windows(windows: tuple[float, float] | None) -> str:
    """``windows of 1 s every 0.5 s`` (or ``whole clips``) for a one-line message."""
    return "whole clips" if windows is None else f"windows of {windows[0]:g} s every {windows[1]:g} s"


def check_same_windows(meta_a: Mapping[str, Any], meta_b: Mapping[str, Any], what_a: str, what_b: str) -> None:
    """ArtifactMismatch when both artifacts are of windows and their window length or hop differs:
    another hop gives other windows (overlapping ones have closer neighbours), so the bank's
    threshold would not fit them. Whole clips (no record) are checked by their clip length alone."""
    a, b = window_record(meta_a, what_a), window_record(meta_b, what_b)
    if a is None or b is None or same_windows(a, b):
        return
    raise ArtifactMismatch(
        f"{what_a} is made of {describe_windows(a)} but {what_b} of {describe_windows(b)}; cut them "
        f"the same way (`asd embed --window {a[0]:g} --hop {a[1]:g}`)."
    )


def check_same_spacing(meta_a: Mapping[str, Any], meta_b: Mapping[str, Any], what_a: str, what_b: str) -> None:
    """:func:`check_same_windows` for vectors that go into one bank (`asd enrol`), where whole clips
    count as windows that do not overlap: windows that do (a hop below the window) are
    near-duplicates of each other, unlike whole clips, so one leave-one-out threshold cannot serve
    both. ArtifactMismatch naming both and the `asd embed` that cuts them alike."""
    check_same_windows(meta_a, meta_b, what_a, what_b)
    a, b = window_record(meta_a, what_a), window_record(meta_b, what_b)
    cut = b if a is None else a
    if (a is None) == (b is None) or cut is None or round(cut[1] * SAMPLE_RATE) >= round(cut[0] * SAMPLE_RATE):
        return  # windows that do not overlap are cut like whole clips
    how = f"--window {cut[0]:g}" + (f" --hop {cut[0]:g}" if a is None else f" --hop {cut[1]:g}")
    raise ArtifactMismatch(
        f"{what_a} is made of {describe_windows(a)} but {what_b} of {describe_windows(b)}, and overlapping "
        f"windows are closer to each other than whole clips; cut them the same way (`asd embed {how}`)."
    )
