"""Label-free fusion of systems (`asd fuse`): per machine/section, each system's test scores are
standardized with the mean and std of its own bank's leave-one-out scores (training data only),
averaged with optional weights, and decided by a gamma threshold fitted on the fused
leave-one-out scores of the train clips.

A system is an `asd run` folder (``banks/`` and ``submission/``) or ``SUBMISSION_DIR:BANKS_DIR``.
A run folder's files are first checked against its stage records (pipeline/run_check.py): banks
replaced after its submission was scored are an error. A SUBMISSION_DIR:BANKS_DIR pair is checked
as far as its files tell (pipeline/scored_with.py: run records where there are some, decision
files against the banks' thresholds), then by names and clip lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asdcli.backend.bank import Bank, check_quantile, load_bank_files
from asdcli.backend.bank_fit import fit_threshold
from asdcli.backend.norm import ZSCORE_STD_FLOOR_ABS, ZSCORE_STD_FLOOR_REL
from asdcli.backend.score import (
    format_decisions,
    format_rows,
    submission_names,
    write_submission_folder,
)
from asdcli.errors import ConfigError, DataError
from asdcli.evaluate.report import parse_rows
from asdcli.pipeline.run_check import check_run_pair
from asdcli.pipeline.scored_with import check_scored_with

Key = tuple[str, str]


@dataclass(frozen=True)
class System:
    """One system to fuse: its score files' scores and its banks, per (machine, section)."""

    name: str
    scores: dict[Key, dict[str, float]]  # clip file name -> score
    banks: dict[Key, Bank]


def system_paths(spec: str) -> tuple[Path, Path]:
    """(submission folder, bank folder) of a SYSTEM argument."""
    folder = Path(spec)
    if folder.is_dir():
        sub, banks = folder / "submission", folder / "banks"
        if not (sub.is_dir() and banks.is_dir()):
            raise ConfigError(
                f"{folder} is not an `asd run` folder (it needs submission/ and banks/); "
                "or pass SUBMISSION_DIR:BANKS_DIR."
            )
        return sub, banks
    if ":" in spec:
        sub_text, banks_text = spec.rsplit(":", 1)
        sub, banks = Path(sub_text), Path(banks_text)
        for path, what in ((sub, "submission"), (banks, "bank")):
            if not path.is_dir():
                raise ConfigError(f"The {what} folder {path} of system {spec} does not exist.")
        return sub, banks
    raise ConfigError(f"System {spec} does not exist; pass an `asd run` folder or SUBMISSION_DIR:BANKS_DIR.")


def load_system(spec: str) -> System:
    """Read a system's banks and the score file of every machine/section it has a bank for."""
    sub, bank_dir = system_paths(spec)
    run_pair = check_run_pair(sub, bank_dir)  # an `asd run` folder's banks replaced after scoring are an error
    files = load_bank_files(bank_dir)
    banks = {key: bank for key, (_, bank) in files.items()}
    expected = {submission_names(m, s)[0]: (m, s) for m, s in banks}
    scores: dict[Key, dict[str, float]] = {}
    paths: dict[Key, Path] = {}
    for path in sorted(sub.glob("anomaly_score_*.csv")):
        key = expected.get(path.name)
        if key is None:
            raise DataError(f"{path} has no bank in {bank_dir}; fuse systems whose banks/ made their submission/.")
        paths[key] = path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"Cannot read {path}: {e}.") from e
        rows = parse_rows(text, str(path))
        names = [r.name for r in rows]
        if len(set(names)) != len(names):
            raise DataError(f"{path} lists a clip more than once; re-run `asd score`.")
        scores[key] = {r.name: r.value for r in rows}
    if not scores:
        raise DataError(f"{sub} holds no anomaly_score_<machine>_section_<SS>_test.csv file of a bank in {bank_dir}.")
    if not run_pair:
        check_scored_with(sub, bank_dir, paths, files, f"pair {sub} with the banks that scored it")
    return System(spec, scores, banks)


def _standardizer(bank: Bank, system: str) -> tuple[float, float]:
    if bank.loo_stats is None:
        raise DataError(f"The bank of {bank.name} in {system} has no leave-one-out statistics; re-run `asd fit-bank`.")
    mean, std = bank.loo_stats
    if not std > max(ZSCORE_STD_FLOOR_REL * abs(mean), ZSCORE_STD_FLOOR_ABS):
        raise DataError(
            f"The leave-one-out scores of the bank of {bank.name} in {system} have almost no spread "
            f"(std {std:.2g} around {mean:.4g}): standardized by it, its scores would outweigh every other "
            "system's; it cannot be fused (a density bank: fit it with a larger --density-k)."
        )
    return mean, std


def _loo_by_clip(bank: Bank, system: str) -> dict[str, float]:
    """The bank's standardized leave-one-out scores keyed by train clip name."""
    if bank.config.condense_source is not None and any(f.startswith("kmeans_centre_") for f in bank.filenames):
        raise DataError(
            f"The bank of {bank.name} in {system} holds k-means centres (--condense-source); "
            "fusion needs the leave-one-out scores of train clips."
        )
    mean, std = _standardizer(bank, system)
    names = bank.filenames[bank.loo_rows]
    return {str(n): (float(v) - mean) / std for n, v in zip(names, bank.loo_scores)}


def _weighted_mean(columns: Sequence[dict[str, float]], weights: Sequence[float], names: list[str]) -> np.ndarray:
    """Sum of w_i x_i / sum w_i per name; the terms are summed in sorted order, so the result does
    not depend on the order of the systems."""
    terms = np.array([[w * c[n] for n in names] for c, w in zip(columns, weights)], dtype=np.float64)
    return np.sort(terms, axis=0).sum(axis=0) / math.fsum(weights)


def _same_clips(sets: Sequence[set[str]], specs: Sequence[str], what: str, key: Key) -> None:
    for spec, clips in zip(specs[1:], sets[1:]):
        if clips != sets[0]:
            diff = sorted(clips ^ sets[0])
            raise DataError(
                f"{key[0]} section {key[1]}: the {what} of {spec} differ from those of {specs[0]} "
                f"({len(diff)} clip(s), e.g. {diff[0]}); fuse systems of the same clips."
            )


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Equal weights by default; otherwise n finite non-negative numbers, not all 0."""
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ConfigError(f"--weights has {len(weights)} value(s) for {n} systems; give one per system.")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"--weights must be finite, >= 0 and not all 0, got {list(weights)}.")
    top = max(weights)  # only ratios matter: scaled so that 1e308 does not overflow and 5e-324 keeps its digits
    return [float(w) / top for w in weights]


def fuse_section(systems: Sequence[System], key: Key, weights: Sequence[float], quantile: float) -> tuple[str, str]:
    """The fused score and decision file texts of one machine/section."""
    specs = [s.name for s in systems]
    _same_clips([set(s.scores[key]) for s in systems], specs, "test clips", key)
    banks = [s.banks[key] for s in systems]
    loos = [_loo_by_clip(b, s.name) for b, s in zip(banks, systems)]
    _same_clips([set(loo) for loo in loos], specs, "train clips (leave-one-out rows) of the banks", key)
    stats = [_standardizer(b, s.name) for b, s in zip(banks, systems)]
    names = sorted(systems[0].scores[key])
    z = [{n: (v - mean) / std for n, v in s.scores[key].items()} for s, (mean, std) in zip(systems, stats)]
    fused = _weighted_mean(z, weights, names)
    if not np.isfinite(fused).all():
        bad = names[int(np.flatnonzero(~np.isfinite(fused))[0])]
        raise DataError(
            f"The fused score of {bad} ({key[0]} section {key[1]}) overflows: a system's score of it is "
            f"too far from its bank's scores to standardize ({', '.join(f'{n}: {s.scores[key][bad]:g}' for n, s in zip(specs, systems))}); "
            "check that score file."
        )
    threshold, _ = fit_threshold(_weighted_mean(loos, weights, sorted(loos[0])), quantile)
    return format_rows(names, fused), format_decisions(names, (fused > threshold).astype(np.int8))


def fuse(
    specs: Sequence[str], out_dir: str | Path, weights: Sequence[float] | None = None, quantile: float = 0.9
) -> list[Path]:
    """Fuse the systems ``specs`` into the challenge folder ``out_dir``; returns the written paths."""
    if len(specs) < 1:
        raise ConfigError("Give at least one SYSTEM to fuse.")
    check_quantile(quantile)
    w = check_weights(weights, len(specs))
    for spec in specs:
        if Path(out_dir).resolve() == system_paths(spec)[0].resolve():
            raise ConfigError(f"--out {out_dir} is the submission folder of system {spec}; choose a new folder.")
    systems = [load_system(spec) for spec in specs]
    for system in systems[1:]:
        missing = sorted(set(systems[0].scores) ^ set(system.scores))
        if missing:
            m, s = missing[0]
            raise DataError(
                f"{m} section {s} is scored by only one of {systems[0].name} and {system.name}; "
                "fuse systems of the same machines and sections."
            )
    files: dict[str, str] = {}
    for key in sorted(systems[0].scores):
        score_name, decision_name = submission_names(*key)
        files[score_name], files[decision_name] = fuse_section(systems, key, w, quantile)
    return write_submission_folder(files, out_dir)
