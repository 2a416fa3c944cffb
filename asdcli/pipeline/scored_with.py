"""Whether a submission folder was scored with a folder of banks given beside it (`asd fuse
SUBMISSION_DIR:BANKS_DIR`, `asd report --banks DIR`) when the two are not one run's
RUN/submission and RUN/banks (:func:`asdcli.pipeline.run_check.check_run_pair` checks those).

A score file records no front end, so what can be checked is checked:

- every score file has a bank of its machine/section in the folder;
- banks that are RUN/banks of an `asd run` folder are the ones that run wrote, unchanged;
- a submission that is RUN/submission of an `asd run` folder was scored with exactly these bank
  files (the run's fit-bank record lists their names, sizes and SHA-256s; a copy passes);
- each decision file agrees with its bank's threshold: `asd score` decides ``score > threshold``
  (in float32), so for every clip the decision is known from the score; banks with another
  threshold disagree on each clip scored between the two.

A submission without decision files, outside a run folder, can only be checked by its names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from asdcli.backend.bank import Bank
from asdcli.errors import ArtifactMismatch, DataError
from asdcli.evaluate.score_rows import parse_rows, read_text
from asdcli.pipeline.run_check import check_banks_scored_run, check_run_banks

Key = tuple[str, str]


def check_scored_with(
    submission: Path, bank_dir: Path, score_files: Mapping[Key, Path], banks: Mapping[Key, tuple[Path, Bank]], fix: str
) -> dict[Key, float]:
    """Check that the submission's ``score_files`` (by machine/section) were scored with ``banks``
    ((file, bank) of ``bank_dir`` by machine/section), as the module docstring says: an
    ArtifactMismatch or DataError naming the file otherwise, ending with ``fix`` (what to do).
    Returns :func:`decision_thresholds`."""
    missing = sorted(set(score_files) - set(banks))
    if missing:
        m, s = missing[0]
        raise DataError(f"{bank_dir} has no bank of {m} section {s}, which {score_files[missing[0]]} scores; {fix}.")
    check_run_banks(bank_dir)
    check_banks_scored_run(submission, [banks[key][0] for key in sorted(score_files)])
    return decision_thresholds(score_files, banks, fix)


def decision_thresholds(
    score_files: Mapping[Key, Path], banks: Mapping[Key, tuple[Path, Bank]], fix: str
) -> dict[Key, float]:
    """The threshold each score file's decisions were made with (:func:`check_decisions`), by
    machine/section: the bank's, or the one its file stores when loading raised it and an earlier
    asdcli decided with that one."""
    return {key: check_decisions(path, *banks[key], fix) for key, path in sorted(score_files.items()) if key in banks}


def _thresholds(bank: Bank) -> list[float]:
    """The thresholds its decisions may have been made with: the bank's, and the one stored in its
    file when loading raised it (a bank fitted before the threshold floor)."""
    stored = bank.threshold_info.get("raised_at_load_from")
    return [bank.threshold] + ([float(stored)] if isinstance(stored, (int, float)) else [])


def _decided(score: float, threshold: float) -> tuple[int, int]:
    """The decisions `asd score` may have made of a score read back from its file: score > threshold
    in float32 (a clip's score: %.9g gives its float32 back once rounded to float32, not in float64,
    so a score equal to the threshold reads as a hair above it), or in float64 (the aggregate of a
    recording's windows). They differ only within a float32 step of the threshold."""
    with np.errstate(over="ignore"):  # a score beyond float32 is infinite there: still above
        in_float32 = bool(np.float32(score) > np.float32(threshold))
    return int(in_float32), int(score > threshold)


def check_decisions(score_file: Path, bank_file: Path, bank: Bank, fix: str) -> float:
    """The decision file beside ``score_file`` (if any) says 1 exactly for the clips whose score
    is above the bank's threshold, compared in float32 as `asd score` decides. Returns the
    threshold it agrees with (the bank's when there is no decision file)."""
    decision_file = score_file.with_name(score_file.name.replace("anomaly_score_", "decision_result_", 1))
    if not decision_file.is_file():
        return bank.threshold
    scores = {e.name: e.value for e in parse_rows(read_text(score_file), str(score_file))}
    decisions = [(e.name, int(e.value)) for e in parse_rows(read_text(decision_file), str(decision_file), True)]
    decisions = [(name, d) for name, d in decisions if name in scores]
    wrong: list[tuple[str, int]] = []
    for threshold in _thresholds(bank):
        wrong = [(name, d) for name, d in decisions if d not in _decided(scores[name], threshold)]
        if not wrong:
            return threshold
    name, d = wrong[0]
    raise ArtifactMismatch(
        f"{decision_file} disagrees with the threshold {bank.threshold:.6g} of {bank_file} on {len(wrong)} "
        f"clip(s) (e.g. {name}: score {scores[name]:.6g}, decision {d}), so these are not the banks that "
        f"scored it; {fix}."
    )
