"""`asd report`: the official DCASE metrics of one or more submissions, as a table, CSV, JSON or HTML."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from asdcli.cli.usage import usage_error
from asdcli.errors import ConfigError


class ReportFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    official = "official"


def command(
    ctx: typer.Context,
    submissions: list[str] = typer.Argument(
        None,
        metavar="SUBMISSION",
        show_default=False,
        help="Submission folders (anomaly_score_<machine>_section_<SS>_test.csv [+ decision_result_...]), "
        "`asd run` folders (their submission/), single score CSVs, or - to read 'filename,score' lines "
        "from stdin (with --machine).",
    ),
    ground_truth: Path | None = typer.Option(
        None,
        "--ground-truth",
        "-g",
        metavar="DIR",
        help="Official ground-truth folder (ground_truth_data/, "
        "ground_truth_domain/, optional ground_truth_attributes/). Wins over --data.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        metavar="DIR",
        help="Dataset root: labels and domains come from the test file names (dev data).",
    ),
    machine: str | None = typer.Option(None, "--machine", "-m", help="Machine of scores read from stdin (-)."),
    fmt: ReportFormat | None = typer.Option(
        None,
        "--format",
        "-f",
        help="stdout format: table, csv (tidy: system,machine,section,metric,value), json "
        "(the same records) or official (the evaluator's result.csv layout). Default: table on a terminal, csv "
        "when piped.",
    ),
    name: list[str] | None = typer.Option(
        None,
        "--name",
        "-n",
        help="Display name of each submission, in order (default: the run folder's name, else the folder's).",
    ),
    banks: list[Path] | None = typer.Option(
        None,
        "--banks",
        metavar="DIR",
        help="Bank folder of each submission, in order: its decision thresholds "
        "go into the tables and plots (default: RUN/banks for a RUN/submission folder, checked against the run's "
        "stage records); - for none (a folder of `asd fuse`).",
    ),
    plots: Path | None = typer.Option(
        None,
        "--plots",
        metavar="DIR",
        help="Write PNG plots (ROC, score histograms, summary, comparison) into this folder.",
    ),
    html: Path | None = typer.Option(
        None,
        "--html",
        metavar="FILE",
        help="Write one self-contained HTML page (tables, every plot, systems side by side) to this file.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="FILE",
        help="Also write the result to this file (.json -> json, .txt -> table, else csv, unless --format).",
    ),
    ground_truth_out: Path | None = typer.Option(
        None,
        "--ground-truth-out",
        metavar="DIR",
        help="Write the official ground-truth CSVs of the --data test clips into this folder.",
    ),
) -> None:
    """Compute the official DCASE metrics: AUC (source/target/all), pAUC, precision/recall/F1 per domain, and the official score (harmonic mean of every AUC (source), AUC (target) and pAUC).

    AUC (source) uses the source normals plus the anomalies of both domains (AUC (target) likewise); pAUC is the McClish-standardised partial AUC up to FPR 0.1, as scikit-learn computes it. Several submissions are compared side by side.

    \b
    Examples:
      asd report runs/a/submission --data data/dev
      asd report runs/*/submission --data data/dev --html report.html
      asd report runA/ runB/ --ground-truth GT --format csv > results.csv
      asd score ... | asd report - --machine fan --data data/dev
      asd report --ground-truth-out GT --data data/dev
    """
    from asdcli.evaluate.report_command import ReportConfig, run_report, submission_folder

    subs = tuple(submission_folder(s) for s in submissions or ())
    try:
        cfg = ReportConfig(
            submissions=subs,
            ground_truth=ground_truth,
            data=data,
            machine=machine,
            fmt=fmt.value if fmt is not None else None,
            plots=plots,
            out=out,
            ground_truth_out=ground_truth_out,
            names=tuple(name or ()),
            banks=tuple(banks or ()),
            html=html,
        )
    except ConfigError as e:  # a bad combination of arguments and options
        raise usage_error(str(e), ctx) from None
    stdin_text = None
    if "-" in subs:
        if sys.stdin.isatty():
            raise ConfigError(
                "'-' reads scores from stdin, but stdin is a terminal; pipe them in, e.g. "
                "`asd score ... | asd report - --machine fan --data DATA`."
            )
        # bytes: a file name that is not UTF-8 (as `asd score` writes it) keeps its bytes, surrogate-escaped
        stdin_text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    run_report(cfg, stdin_text=stdin_text)
