"""Whether an `asd run` folder's submission/ is what its banks/ scored, from its stage records.

The fit-bank record lists every bank with its size and SHA-256, the score record every score file,
and the score stage's key holds the fit-bank record's outputs (:func:`score_inputs`). So a bank
replaced or added after the run, a score file edited since, or banks fitted again without scoring
again are each found without reading a clip. A folder without a fit-bank record (assembled by
hand, or written before stage records) has nothing to check against. The same records vouch for
a run's banks scored with `asd score --banks RUN/banks` and for the fine-tuning record
(RUN/finetune/run.json) that `asd package` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asdcli.backend.bank import bank_paths
from asdcli.errors import ArtifactMismatch
from asdcli.pipeline.stages import Stage, stage_key, stamp_of


def score_inputs(embed: Stage, banks: Stage) -> dict[str, Any]:
    """The inputs (key) of a run's score stage: what the embed and fit-bank stages recorded."""
    return {"embeddings": embed.outputs_id(), "banks": banks.outputs_id()}


def _rerun(run_dir: Path) -> str:
    return f"re-run `asd run DATA --out {run_dir}` to fit and score again"


def _check_files(stage: Stage, files: Sequence[Path], what: str, fix: str = "") -> None:
    """Each of ``files`` must be listed in the stage's record with its current size and SHA-256;
    ``fix`` is what the error says to do (default: re-run the run)."""
    outputs = stage.record()["outputs"]
    for path in files:
        if not stage.wrote_unchanged(path):
            listed = path.relative_to(stage.run_dir).as_posix() in outputs
            how = "records another size or SHA-256 for it" if listed else "does not list it"
            raise ArtifactMismatch(
                f"{path} is not the {what} that `asd run` wrote ({stage.record_path} {how}): it was replaced "
                f"or added after the run; {fix or _rerun(stage.run_dir)}."
            )


def _check_finished(stage: Stage, what: str, fix: str = "") -> None:
    if not stage.finished():
        raise ArtifactMismatch(
            f"{stage.record_path} does not record a finished {stage.name} stage, so the {what} of "
            f"{stage.run_dir} cannot be trusted; {fix or _rerun(stage.run_dir)}."
        )


def _check_banks(fit_bank: Stage, banks: Sequence[Path], fix: str = "") -> None:
    """The bank files ``banks`` are the ones the finished fit-bank stage wrote, and none it wrote is missing."""
    _check_finished(fit_bank, "banks/", fix)
    _check_files(fit_bank, banks, "bank", fix)
    for rel in fit_bank.record()["outputs"]:
        if not (fit_bank.run_dir / rel).is_file():
            raise ArtifactMismatch(
                f"{fit_bank.run_dir / rel}, a bank of the run, is missing; {fix or _rerun(fit_bank.run_dir)}."
            )


def _fit_bank_of(banks_dir: Path) -> Stage | None:
    """The fit-bank stage of the run whose RUN/banks ``banks_dir`` is (`.` inside it, or a link to
    it, included); None for any other folder of banks."""
    banks_dir = banks_dir.resolve()
    fit_bank = Stage(banks_dir.parent, "fit-bank", "")
    return fit_bank if banks_dir.name == "banks" and fit_bank.record_path.is_file() else None


def check_run_banks(banks_dir: Path) -> bool:
    """When ``banks_dir`` is RUN/banks of an `asd run` folder with a fit-bank record, check that
    every bank file there (what :func:`asdcli.backend.bank.load_banks` reads) is one the run wrote,
    unchanged, and that none of them is missing: an ArtifactMismatch naming the file otherwise.
    False when ``banks_dir`` is not a run's banks/ (any other folder of banks: nothing to check)."""
    fit_bank = _fit_bank_of(banks_dir)
    if fit_bank is None:
        return False
    banks = bank_paths(fit_bank.run_dir / "banks")
    fix = f"{_rerun(fit_bank.run_dir)}, or copy the banks out of the run folder to use them as they are"
    _check_banks(fit_bank, banks, fix)
    return True


def check_run_bank(bank_file: Path) -> bool:
    """When ``bank_file`` lies in RUN/banks of an `asd run` folder with a fit-bank record, check that
    the run wrote it, unchanged (ArtifactMismatch naming it otherwise). False for any other bank."""
    bank_file = bank_file.resolve()
    fit_bank = _fit_bank_of(bank_file.parent)
    if fit_bank is None:
        return False
    fix = f"{_rerun(fit_bank.run_dir)}, or copy the bank out of the run folder to use it as it is"
    _check_finished(fit_bank, "banks/", fix)
    _check_files(fit_bank, [bank_file], "bank", fix)
    return True


def check_scored_with_banks(
    run_dir: Path, banks: Sequence[Path], scores: Sequence[Path], decisions: Sequence[Path] = ()
) -> bool:
    """Check that the bank files ``banks`` (in RUN/banks), score files ``scores`` and decision
    files ``decisions`` (in RUN/submission) are the ones `asd run` wrote, and that the score stage
    read these banks: an ArtifactMismatch naming the file otherwise. False when ``run_dir`` has no
    fit-bank record."""
    fit_bank = Stage(run_dir, "fit-bank", "")
    if not fit_bank.record_path.exists():
        return False
    _check_banks(fit_bank, banks)
    _check_scored(fit_bank, scores, decisions)
    return True


def _check_scored(fit_bank: Stage, scores: Sequence[Path], decisions: Sequence[Path] = ()) -> None:
    """The score and decision files are the ones the run's finished score stage wrote, from the
    banks its finished fit-bank stage recorded."""
    run_dir = fit_bank.run_dir
    score = Stage(run_dir, "score", "")
    _check_finished(fit_bank, "banks/")
    _check_finished(score, "submission/")
    _check_files(score, scores, "score file")
    _check_files(score, decisions, "decision file")
    if score.record().get("key") != stage_key(score_inputs(Stage(run_dir, "embed", ""), fit_bank)):
        raise ArtifactMismatch(
            f"{run_dir / 'submission'} was not scored with the banks in {run_dir / 'banks'} "
            f"({score.record_path} records other banks or embeddings); {_rerun(run_dir)}."
        )


def check_run_file(run_dir: Path, stage_name: str, path: Path, what: str) -> None:
    """When ``run_dir`` has a record of stage ``stage_name``, ``path`` (a file under the run folder:
    RUN/embeddings/test.npz of the embed stage, RUN/finetune/run.json of the finetune stage) must
    be listed in it with its current size and SHA-256; ``what`` names the file in the error."""
    stage = Stage(run_dir, stage_name, "")
    if stage.record_path.exists():
        _check_finished(stage, f"{stage_name} outputs")
        _check_files(stage, [path], what)


def check_run_pair(submission: Path, banks_dir: Path, decisions: bool = False) -> bool:
    """When ``submission`` and ``banks_dir`` are RUN/submission and RUN/banks of one folder, check
    the files a command reads there (every bank, every score file and, with ``decisions``, every
    decision file) with :func:`check_scored_with_banks`. False when they are not a run's pair or
    the run has no fit-bank record (nothing to check against)."""
    if not (
        submission.name == "submission"
        and banks_dir.name == "banks"
        and submission.parent.resolve() == banks_dir.parent.resolve()
    ):
        return False
    run = submission.parent  # the paths below are under it, however banks_dir was spelled
    banks = bank_paths(run / "banks")
    scores = sorted(submission.glob("anomaly_score_*.csv"))
    decision_files = sorted(submission.glob("decision_result_*.csv")) if decisions else []
    return check_scored_with_banks(run, banks, scores, decision_files)


def check_banks_scored_run(submission: Path, bank_files: Sequence[Path]) -> bool:
    """When ``submission`` is RUN/submission of an `asd run` folder with a fit-bank record (or a
    score file in it), check that ``bank_files`` (from any folder: a copy of RUN/banks passes) are
    the banks the run scored it with: same names, sizes and SHA-256s as its fit-bank record lists,
    the score files unchanged and the score stage keyed on those banks. ArtifactMismatch naming
    the file otherwise; False when ``submission`` is not such a folder (nothing recorded to check against)."""
    folder = submission.resolve()
    scores = sorted(folder.glob("anomaly_score_*.csv")) if folder.is_dir() else [folder]
    folder = folder if folder.is_dir() else folder.parent
    run = folder.parent
    fit_bank = Stage(run, "fit-bank", "")
    if folder.name != "submission" or not fit_bank.record_path.is_file():
        return False
    banks_dir = run / "banks"
    _check_scored(fit_bank, scores)
    outputs = fit_bank.record()["outputs"]
    for path in bank_files:
        stamp = outputs.get(f"banks/{path.name}")
        if stamp is None or stamp_of(path) != stamp:
            how = "records another size or SHA-256 for" if stamp is not None else "lists no"
            raise ArtifactMismatch(
                f"{path} is not the bank {submission} was scored with ({fit_bank.record_path} {how} "
                f"banks/{path.name}); pass {banks_dir} (or a copy of it) with that submission."
            )
    return True
