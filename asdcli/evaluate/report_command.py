"""What `asd report` does, as one library call (:func:`run_report`): load the ground truth,
evaluate the submissions (with the banks' thresholds), write plots, the HTML page and ``--out``,
and render the result on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from asdcli.artifacts import check_not_input, load_npz, write_text_atomic
from asdcli.backend.bank import bank_paths
from asdcli.console import is_terminal, stderr_console
from asdcli.errors import AsdError, ConfigError
from asdcli.evaluate.ground_truth import GroundTruth, load_ground_truth, write_ground_truth
from asdcli.evaluate.render import FORMATS, pct, render, render_text
from asdcli.evaluate.report import (
    STDIN,
    SystemReport,
    bank_thresholds,
    check_bank_folder,
    evaluate_all,
    score_file_key,
    score_files,
)
from asdcli.pipeline.run_check import check_run_pair

NO_BANKS = "-"  # `--banks -`: this submission has no banks (a fused folder)


@dataclass(frozen=True)
class ReportConfig:
    """What `asd report` does: inputs, ground truth, output format and destinations."""

    submissions: tuple[str, ...] = ()  # folders, score files, or "-" for stdin
    ground_truth: Path | None = None  # official GT_DIR (wins over data)
    data: Path | None = None  # dataset root with labelled test names
    machine: str | None = None  # machine of a stdin / single-file submission
    fmt: str | None = None  # table|csv|json|official; None: table on a terminal, else csv
    plots: Path | None = None
    out: Path | None = None
    ground_truth_out: Path | None = None
    names: tuple[str, ...] = ()  # display names, one per submission (default: the run folder's name)
    banks: tuple[Path, ...] = ()  # one per submission, or NO_BANKS (default: RUN/banks beside RUN/submission)
    html: Path | None = None

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}.")
        if not self.submissions and self.ground_truth_out is None:
            raise ConfigError("Pass one or more submission folders (or - for stdin), or --ground-truth-out DIR.")
        if self.machine and not any(s == STDIN or Path(s).is_file() for s in self.submissions):
            raise ConfigError("--machine applies only to scores read from stdin (-) or from a single CSV file.")
        for option, given in (("--name", self.names), ("--banks", self.banks)):
            if given and len(given) != len(self.submissions):
                raise ConfigError(f"Give {option} once per submission ({len(self.submissions)}), got {len(given)}.")


def submission_folder(submission: str) -> str:
    """An `asd run` folder (RUN holding submission/ and no score file of its own) stands for
    RUN/submission; any other argument is itself."""
    path = Path(submission)
    if submission != STDIN and (path / "submission").is_dir() and not any(path.glob("anomaly_score_*.csv")):
        return str(path / "submission")
    return submission


def run_folder(submission: str) -> Path | None:
    """The `asd run` folder a submission folder belongs to (RUN/submission next to RUN/banks)."""
    path = Path(submission)
    if submission == STDIN or path.name != "submission" or not (path.parent / "banks").is_dir():
        return None
    return path.resolve().parent


def _frozen_banks(run: Path) -> bool:
    """True when the run's banks hold frozen BEATs embeddings (no adapter in their front-end
    record): `asd run --no-finetune` over a fine-tuned run folder keeps its finetune/."""
    banks = bank_paths(run / "banks")
    if not banks:
        return False
    try:
        meta = json.loads(str(load_npz(banks[0], ("meta",), what="bank")["meta"]))
    except (AsdError, ValueError):
        return False  # the report's own loading of the banks says what is wrong
    emb = meta.get("embedding") if isinstance(meta, dict) else None
    return isinstance(emb, dict) and "adapter_id" in emb and emb["adapter_id"] is None


def run_recipe(run: Path) -> str:
    """How a run's embeddings were made, in a few words: ``LoRA, machine labels``, ``full
    fine-tuning, machine labels`` or ``frozen BEATs``."""
    record = run / "finetune" / "run.json"
    if not record.is_file() or _frozen_banks(run):
        return "frozen BEATs"
    try:
        config = json.loads(record.read_text(encoding="utf-8"))["config"]
        how = "full fine-tuning" if config.get("full_finetune") else "LoRA"
        return f"{how}, {config['labels']} labels"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "fine-tuned"


def default_name(submission: str) -> str | None:
    """A run's submission is named after its run folder and recipe (``runs/dev/submission`` ->
    ``dev (LoRA, machine labels)``), another ``X/submission`` after ``X``; None: use the folder's name."""
    run = run_folder(submission)
    if run is not None:
        return f"{run.name} ({run_recipe(run)})"
    path = Path(submission).resolve()
    return path.parent.name if submission != STDIN and path.name == "submission" else None


def _input_files(cfg: ReportConfig) -> list[Path]:
    """Every file the report reads: score and decision CSVs, the ground truth (official CSVs or the
    clips under --data, whose names are the labels) and the banks."""
    files = []
    for sub in cfg.submissions:
        path = Path(sub)
        if sub != STDIN and path.is_dir():
            files += [p for p in path.iterdir() if p.suffix == ".csv"]
        elif sub != STDIN:
            files.append(path)
    for root in (cfg.ground_truth, cfg.data):
        if root is not None and root.is_dir():
            files += [p for p in root.rglob("*") if p.is_file()]
    runs = [run_folder(s) for s in cfg.submissions]
    for banks in (*cfg.banks, *(run / "banks" for run in runs if run is not None)):
        if banks.is_dir():
            files += bank_paths(banks)
    return files


def check_outputs(cfg: ReportConfig) -> None:
    """An output that is one of the inputs would destroy it: a ConfigError naming it."""
    outputs = [(option, out) for option, out in (("--out", cfg.out), ("--html", cfg.html)) if out is not None]
    inputs = _input_files(cfg) if any(out.exists() for _, out in outputs) else []  # a new file overwrites nothing
    for option, out in outputs:
        check_not_input(out, inputs if out.exists() else [], option)


def _thresholds(cfg: ReportConfig) -> list[dict[tuple[str, str], float] | None]:
    """The thresholds of each submission's banks (None without), after checking an `asd run`
    folder's submission/ and banks/ against its stage records."""
    runs = [run_folder(s) for s in cfg.submissions]
    given = [None if b == Path(NO_BANKS) else b for b in cfg.banks]  # `--banks -`: a fused folder has none
    banks: Sequence[Path | None] = given or [None if run is None else run / "banks" for run in runs]
    out: list[dict[tuple[str, str], float] | None] = []
    for submission, bank_dir in zip(cfg.submissions, banks):
        if bank_dir is None:
            out.append(None)
        elif submission == STDIN:
            out.append(bank_thresholds(bank_dir))
        else:
            run_pair = check_run_pair(Path(submission), bank_dir, decisions=True)
            out.append(_checked_thresholds(Path(submission), bank_dir, run_pair))
    return out


def _checked_thresholds(submission: Path, bank_dir: Path, run_pair: bool) -> dict[tuple[str, str], float]:
    """The thresholds of ``bank_dir`` once checked against the submission (folder or score file)
    as far as its files tell (:mod:`asdcli.pipeline.scored_with`; ``run_pair``: the run's records
    vouched for them), each the one its decision file was made with."""
    from asdcli.backend.bank import load_bank_files
    from asdcli.pipeline.scored_with import check_scored_with, decision_thresholds

    check_bank_folder(bank_dir)
    files = load_bank_files(bank_dir)
    if submission.is_dir():
        scores = score_files(submission)
    else:
        key = score_file_key(submission)
        scores = {} if key is None else {key: submission}
    fix = (
        f"pass --banks with the folder of banks that scored {submission} "
        "(`--banks -` for a folder of `asd fuse`, which has none)"
    )
    if run_pair:
        decided = decision_thresholds(scores, files, fix)
    else:
        decided = check_scored_with(submission, bank_dir, scores, files, fix)
    return {key: float(bank.threshold) for key, (_, bank) in files.items()} | decided


def _file_format(cfg: ReportConfig, out: Path) -> str:
    if cfg.fmt is not None:
        return cfg.fmt
    return {".json": "json", ".txt": "table"}.get(out.suffix.lower(), "csv")


def evaluate_reports(
    cfg: ReportConfig, stdin_text: str | None = None, truth: GroundTruth | None = None
) -> list[SystemReport]:
    """The evaluated submissions of ``cfg`` (names and thresholds applied) against ``truth``
    (default: the ground truth that ``cfg`` names)."""
    truth = truth if truth is not None else load_ground_truth(cfg.ground_truth, cfg.data)
    names = cfg.names or tuple(default_name(s) or "" for s in cfg.submissions)
    return evaluate_all(cfg.submissions, truth, cfg.machine, stdin_text, names=names, thresholds=_thresholds(cfg))


def run_report(
    cfg: ReportConfig, stdin_text: str | None = None, stdout: TextIO | None = None, console: Console | None = None
) -> list[SystemReport]:
    """Do what ``cfg`` asks and return the evaluated systems.

    Evaluates the submissions, then (only when that succeeded) writes the ground-truth CSVs
    (``ground_truth_out``), plots, the HTML page and ``out`` (atomically), renders the result on ``stdout`` (a table when it is a
    terminal or ``fmt`` says so, else CSV/JSON; nothing when only files were asked and stdout is
    piped) and puts warnings and file notices on ``console`` (stderr).
    """
    stdout = stdout if stdout is not None else sys.stdout
    console = console or stderr_console()
    check_outputs(cfg)
    truth = load_ground_truth(cfg.ground_truth, cfg.data)
    reports = evaluate_reports(cfg, stdin_text, truth) if cfg.submissions else []
    if cfg.ground_truth_out is not None:
        paths = write_ground_truth(truth, cfg.ground_truth_out)
        console.print(
            f"Wrote {len(paths)} ground-truth files for {len(truth.sections)} machine/section(s) "
            f"to {cfg.ground_truth_out}",
            highlight=False,
            markup=False,
        )
    if not cfg.submissions:
        return []
    for warning in (w for r in reports for w in r.warnings):
        console.print(f"[yellow]Warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    _write_files(cfg, reports, console)
    terminal = is_terminal(stdout)
    if cfg.out is None or terminal:
        fmt = cfg.fmt if cfg.out is None and cfg.fmt else ("table" if terminal else "csv")
        render(reports, fmt, stdout)
        if fmt == "table":
            return reports
    for r in reports:
        console.print(f"{r.name}: official score {pct(r.official_score)}", highlight=False, markup=False)
    return reports


def _write_files(cfg: ReportConfig, reports: Sequence[SystemReport], console: Console) -> None:
    if cfg.plots is not None:
        from asdcli.evaluate.plots import write_plots  # matplotlib is slow to import; only when asked

        paths = write_plots(reports, cfg.plots)
        console.print(f"Wrote {len(paths)} plots to {cfg.plots}", highlight=False, markup=False)
    if cfg.html is not None:
        from asdcli.evaluate.html import html_page

        write_text_atomic(cfg.html, html_page(reports))
        console.print(f"Wrote {cfg.html}", highlight=False, markup=False)
    if cfg.out is not None:
        write_text_atomic(cfg.out, render_text(reports, _file_format(cfg, cfg.out)))
        console.print(f"Wrote {cfg.out}", highlight=False, markup=False)


def report_submission(
    submission_dir: Path | str,
    data_root: Path | str | None = None,
    *,
    ground_truth: Path | str | None = None,
    fmt: str | None = None,
    plots_dir: Path | str | None = None,
    out: Path | str | None = None,
    stdout: TextIO | None = None,
    console: Console | None = None,
) -> SystemReport:
    """Evaluate one submission folder against the labelled test names under ``data_root`` (or the
    official CSVs in ``ground_truth``), render it and return it (``.official_score`` etc.)."""
    cfg = ReportConfig(
        submissions=(str(submission_dir),),
        ground_truth=None if ground_truth is None else Path(ground_truth),
        data=None if data_root is None else Path(data_root),
        fmt=fmt,
        plots=None if plots_dir is None else Path(plots_dir),
        out=None if out is None else Path(out),
    )
    return run_report(cfg, stdout=stdout, console=console)[0]
