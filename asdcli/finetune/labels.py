"""What fine-tuning trains on: the clips of one or more dataset roots and their class labels.

Several roots (the dev and additional-training sets of several years): a machine name found under
only one root keeps its name; a machine name found under two or more roots becomes one class per
root, ``<root label>/<machine>``, because DCASE reuses names for different machines across years
(2020's and 2023's "fan" are other fans). ``merge_machines`` keeps the bare name instead. A root's
label is its folder name, with parent folders prepended while two roots' labels are equal
(``2023/dev`` and ``2024/dev``). A clip found under two roots belongs to the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asdcli.data.names import Clip, require_field
from asdcli.errors import ConfigError, DataError
from asdcli.finetune.config import FinetuneConfig
from asdcli.finetune.state import derive_seed


def label_name(clip: Clip, mode: str) -> str:
    """Class name of a clip under ``mode``.

    ``machine``: the machine. ``attribute``: machine|attributes (the machine alone when the name
    carries none). ``attribute+domain``: that, then |domain (no domain part when the name has
    none, as the supplemental clips).
    """
    name = clip.machine
    if mode in ("attribute", "attribute+domain") and clip.attributes:
        name += "|" + "_".join(f"{k}_{v}" if v else k for k, v in clip.attributes)
    if mode == "attribute+domain" and clip.domain:
        name += "|" + clip.domain
    return name


def build_labels(clips: Sequence[Clip], mode: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels (N,) int64 and the sorted class names they index."""
    names = [label_name(c, mode) for c in clips]
    classes = sorted(set(names))
    index = {n: i for i, n in enumerate(classes)}
    return np.array([index[n] for n in names], dtype=np.int64), classes


def split_train_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices: ``round(fraction * n)`` of each class held out, >= 1 kept."""
    rng = np.random.default_rng(derive_seed(seed, 7919))
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(round(fraction * len(idx)), len(idx) - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def root_labels(roots: Sequence[Path]) -> list[str]:
    """A distinct short label per root: its folder name, lengthened by parent folders while two
    labels are equal; ``root<i>`` when the whole paths are equal."""
    parts = [Path(r).parts or (str(r),) for r in roots]
    depth = [1] * len(roots)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {i for i, lab in enumerate(labels) if labels.count(lab) > 1}
        grow = {i for i in clashes if depth[i] < len(parts[i])}
        if not grow:
            return [f"root{i}" if i in clashes else lab for i, lab in enumerate(labels)]
        for i in grow:
            depth[i] += 1


def machine_classes(machines_by_root: Mapping[str, Sequence[str]], merge: bool) -> dict[tuple[str, str], str]:
    """(root label, machine) -> the machine name its clips train under.

    A machine name under one root only, or any name with ``merge``, stays as it is; a name under
    several roots becomes ``<root label>/<machine>`` for each of them.
    """
    seen: dict[str, int] = {}
    for machines in machines_by_root.values():
        for m in set(machines):
            seen[m] = seen.get(m, 0) + 1
    return {
        (root, m): m if merge or seen[m] == 1 else f"{root}/{m}"
        for root, machines in machines_by_root.items()
        for m in machines
    }


@dataclass(frozen=True)
class TrainingData:
    """The clips one run trains on.

    ``clips``: train clips (and, with --use-clean, the supplemental clean clips), their
    ``machine`` already the class machine of :func:`machine_classes`. ``noise``: supplemental
    noise-only clips for --noise-mix. ``roots``: one run.json record per dataset root.
    """

    clips: tuple[Clip, ...]
    noise: tuple[Clip, ...] = ()
    n_clean: int = 0
    roots: tuple[Mapping[str, Any], ...] = ()


def training_data(
    sources: Sequence[tuple[Path, Sequence[Clip]]], *, use_clean: bool, noise_mix: bool, merge_machines: bool
) -> TrainingData:
    """Select and label the clips of each ``(root, clips found under it)``.

    Train clips always; supplemental clean clips with ``use_clean``; noise-only clips with
    ``noise_mix``. Each root's record holds its path, label, clip counts, the class of each of
    its machines and a fingerprint (names, sizes, modification times) of the clips used from it.
    """
    from asdcli.pipeline.stages import files_fingerprint

    labels = root_labels([root for root, _ in sources])
    owner: dict[Path, int] = {}
    for i, (_, clips) in enumerate(sources):
        for c in clips:
            owner.setdefault(c.path.resolve(), i)
    picked: list[tuple[list[Clip], list[Clip], list[Clip]]] = []
    for i, (_, clips) in enumerate(sources):
        mine = [c for c in clips if owner[c.path.resolve()] == i]
        picked.append(
            (
                [c for c in mine if c.split == "train"],
                [c for c in mine if use_clean and c.kind == "machine"],
                [c for c in mine if noise_mix and c.kind == "noise"],
            )
        )
    classes = machine_classes(
        {labels[i]: sorted({c.machine for c in tr + cl}) for i, (tr, cl, _) in enumerate(picked)}, merge_machines
    )
    out: list[Clip] = []
    records: list[dict[str, Any]] = []
    for i, ((root, _), (train, clean, noise)) in enumerate(zip(sources, picked)):
        rename = {m: classes[(labels[i], m)] for m in {c.machine for c in train + clean}}
        out += [dataclasses.replace(c, machine=rename[c.machine]) for c in train + clean]
        records.append(
            {
                "path": str(root),
                "label": labels[i],
                "n_train": len(train),
                "n_clean": len(clean),
                "n_noise": len(noise),
                "machines": dict(sorted(rename.items())),
                "fingerprint": files_fingerprint([c.path for c in train + clean + noise]),
            }
        )
    noise_all = tuple(c for _, _, noise in picked for c in noise)
    return TrainingData(
        clips=tuple(out), noise=noise_all, n_clean=sum(len(cl) for _, cl, _ in picked), roots=tuple(records)
    )


@dataclass(frozen=True)
class LabelledClips:
    """Clips with their class index (N,) int64, the class names, and the train/held-out split."""

    clips: tuple[Clip, ...]
    labels: np.ndarray
    classes: list[str]
    train: np.ndarray  # indices into clips
    val: np.ndarray


def label_clips(clips: Sequence[Clip], cfg: FinetuneConfig) -> LabelledClips:
    """Labels and the stratified split; DataError when there is nothing to learn from."""
    if not clips:
        raise DataError("asd finetune got no train clips; put them in DATA/<machine>/train/.")
    require_field(clips, "machine", "asd finetune")
    labels, classes = build_labels(clips, cfg.labels)
    if len(classes) < 2:
        raise DataError(
            f"Fine-tuning needs at least two classes, found only {classes}: point at a dataset "
            "with several machines or use --labels attribute."
        )
    train, val = split_train_val(labels, cfg.val_fraction, cfg.seed)
    return LabelledClips(tuple(clips), labels, classes, train, val)


def as_training_data(
    data: TrainingData | Sequence[Clip],
    noise_clips: Sequence[Clip],
    cfg: FinetuneConfig,
) -> TrainingData:
    if not isinstance(data, TrainingData):
        if cfg.use_clean:
            raise ConfigError(
                "--use-clean needs the supplemental clips of each dataset root: use `asd finetune "
                "--use-clean`, then `asd embed --adapter RUN_DIR`."
            )
        data = TrainingData(clips=tuple(data), noise=tuple(noise_clips) if cfg.noise_mix else ())
    if cfg.noise_mix and not data.noise:
        raise DataError(
            "--noise-mix needs supplemental noise-only clips (names with `_noise_`) in "
            "<machine>/supplemental/, and none were found."
        )
    if cfg.use_clean and not data.n_clean:
        raise DataError(
            "--use-clean needs supplemental clean machine clips (names with `_machine_`) in "
            "<machine>/supplemental/, and none were found."
        )
    return data
