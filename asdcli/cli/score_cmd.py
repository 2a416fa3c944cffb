"""`asd score`: anomaly scores of clips or embeddings against a bank, or a full submission folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer

from asdcli.artifacts import Embeddings, check_not_input, load_embeddings
from asdcli.backend.bank import Bank, load_bank, load_banks
from asdcli.backend.score import (
    SCORE_FORMATS,
    bank_clips,
    bank_front_end_files,
    check_compatible,
    check_not_windows,
    check_unique_names,
    decide,
    format_rows,
    score_embeddings,
    select_test,  # fmt: skip
    write_decisions,
    write_submission,
)
from asdcli.console import is_terminal, stderr_console
from asdcli.data.names import Clip
from asdcli.errors import ConfigError, DataError
from asdcli.monitor.options import window_options
from asdcli.monitor.render import print_score_table
from asdcli.pipeline.run_check import check_run_bank, check_run_banks


def command(
    clips: list[Path] | None = typer.Argument(
        None, help="Clips to embed and score: .wav files (all scored) or folders (their test clips)."
    ),
    bank: Path | None = typer.Option(None, "--bank", "-b", help="Bank .npz from `asd fit-bank --out`."),
    banks: Path | None = typer.Option(
        None, "--banks", help="Folder of banks from `asd fit-bank --out-dir` (with --submission-dir)."
    ),
    embeddings: Path | None = typer.Option(
        None, "--embeddings", "-e", help="Score this embeddings .npz instead of embedding clips."
    ),
    all_rows: bool = typer.Option(
        False, "--all", help="With --embeddings: score every row, not only the bank's machine/section test clips."
    ),
    submission_dir: Path | None = typer.Option(
        None, "--submission-dir", help="With --banks: write the challenge's CSV files into this folder."
    ),
    fmt: str = typer.Option(
        "csv", "--format", "-f", help="stdout format: csv (filename,score) or jsonl (filename, score, decision)."
    ),
    header: bool = typer.Option(False, "--header", help="Start the CSV with a filename,score header line."),
    decisions: Path | None = typer.Option(
        None, "--decisions", help="Also write filename,0|1 decisions (1 = score above the bank's threshold)."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="BEATs checkpoint for embedding clips (default: the bank's)."
    ),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="Fine-tuned run folder for embedding clips (default: the bank's)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps (embedding clips only)."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Clips per batch when embedding (default: 2 on a CPU, where bigger batches are slower; 8 on a GPU).",
    ),
    skip_other_sections: bool = typer.Option(
        False,
        "--skip-other-sections",
        help="Skip clips of another machine/section than the bank's (counted on stderr) instead of failing.",
    ),
    window: float | None = typer.Option(
        None, "--window", help="Score long recordings window by window: window length in seconds."
    ),
    hop: float | None = typer.Option(
        None, "--hop", help="With --window: seconds between window starts (default: the window)."
    ),
    windows: Path | None = typer.Option(
        None, "--windows", help="With --window: write filename,start_s,end_s,score,decision per window (CSV)."
    ),
    how: str = typer.Option(
        "max", "--aggregate", help="With --window: a recording's score is the max or mean of its window scores."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="With --window: timeline PNG of score vs time, threshold, anomalous stretches."
    ),
    min_windows: int | None = typer.Option(
        None,
        "--min-windows",
        help="With --window: report on stderr each run of at least this many windows in a row above the "
        "threshold within a recording (an alarm, as `asd watch --min-windows` raises it).",
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 or int8 (CPU) for embedding clips (default: the bank's)."
    ),
) -> None:
    """Score clips against a bank: anomaly scores as challenge CSV (filename,score; no header) on stdout.

    `asd score --bank fan.npz data/fan/test > anomaly_score_fan_section_00_test.csv`, or
    `asd score --bank fan.npz --embeddings test.npz`, or the whole challenge folder with
    `asd score --banks banks/ --embeddings test.npz --submission-dir submission/`.
    """
    _check_modes(clips, bank, banks, embeddings, submission_dir, fmt, decisions)
    outputs = {"--decisions": decisions, "--windows": windows, "--plot": plot}
    _check_outputs(outputs, [p for p in (bank, banks, embeddings, *(clips or [])) if p is not None])
    if banks is not None:
        assert embeddings is not None and submission_dir is not None
        check_run_banks(banks)  # RUN/banks of an `asd run` folder: the banks it wrote, unchanged
        paths = write_submission(load_banks(banks), load_embeddings(embeddings), submission_dir, what=str(embeddings))
        stderr_console().print(
            f"Wrote {len(paths)} files to {submission_dir}", markup=False, highlight=False, soft_wrap=True
        )
        return
    assert bank is not None
    check_run_bank(bank)  # a bank of RUN/banks: the one the run wrote, unchanged
    the_bank = load_bank(bank)
    _check_outputs(outputs, bank_front_end_files(the_bank, checkpoint, adapter))
    windowed = window_options(window, hop, how, windows, plot, embeddings, min_windows)
    if windowed is not None:
        from asdcli.monitor.windowed import score_windowed

        names, scores = score_windowed(
            the_bank, clips or [], windowed, checkpoint, adapter, device, batch_size, stderr_console(),
            check_clips=lambda found: _check_outputs(outputs, (c.path for c in found)),
            skip_other_sections=skip_other_sections, precision=precision,
        )  # fmt: skip
    elif embeddings is not None:
        rows = _rows_from_file(the_bank, embeddings, all_rows)
    else:
        found = _found_clips(clips or [])
        _check_outputs(outputs, (c.path for c in found))  # a clip found in a folder is an input too, skipped or not
        found = bank_clips(the_bank, found, skip_other_sections, _note)
        rows = _embed(the_bank, found, checkpoint, adapter, device, batch_size, precision)
        check_unique_names(rows, "the clips")  # _rows_from_file checks its rows the same way
    if windowed is None:
        scores = score_embeddings(the_bank, rows, what=str(embeddings or "the clips"))
        names = list(rows.filenames)
        _note_bank_clips(the_bank, names)
    flags = decide(the_bank, scores)
    if is_terminal() and fmt == "csv" and not header:
        print_score_table(names, scores, flags, the_bank.threshold)
    else:
        # bytes: a file name that is not UTF-8 (surrogate-escaped) is written back as the bytes it had
        typer.echo(format_rows(names, scores, flags, fmt, header).encode("utf-8", "surrogateescape"), nl=False)
    if decisions is not None:
        write_decisions(decisions, names, flags)


def _note(text: str) -> None:
    stderr_console().print(text, markup=False, highlight=False, soft_wrap=True)


def _note_bank_clips(bank: Bank, names: list[str]) -> None:
    """A notice when clips being scored are the bank's own train clips: each is at distance 0 from
    itself, so its score says nothing about it."""
    own = sorted(set(map(str, names)) & set(map(str, bank.filenames)))
    if own:
        _note(
            f"Notice: {len(own)} of the clips scored are train clips in the bank of {bank.name} "
            f"(e.g. {own[0]}): each is at distance 0 from itself, so its score says nothing; score test "
            "clips, or fit the bank without them."
        )


def _check_outputs(outputs: dict[str, Path | None], inputs: Iterable[str | Path]) -> None:
    """ConfigError when an output option names one of ``inputs`` (writing it would destroy it)."""
    inputs = list(inputs)
    for option, out in outputs.items():
        check_not_input(out, inputs, option)


def _check_modes(
    clips: list[Path] | None,
    bank: Path | None,
    banks: Path | None,
    embeddings: Path | None,
    submission_dir: Path | None,
    fmt: str,
    decisions: Path | None,
) -> None:
    if fmt not in SCORE_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(SCORE_FORMATS)}, got {fmt!r}.")
    if (bank is None) == (banks is None):
        raise ConfigError("Give exactly one of --bank BANK.npz or --banks DIR.")
    if banks is not None and (embeddings is None or submission_dir is None or clips):
        raise ConfigError("--banks needs --embeddings TEST.npz and --submission-dir OUT (embed the test clips first).")
    if banks is not None and decisions is not None:
        raise ConfigError("--decisions is for --bank; with --banks the decision files are in the submission folder.")
    if bank is not None and submission_dir is not None:
        raise ConfigError("--submission-dir needs --banks DIR (one bank per machine/section).")
    if bank is not None and bool(clips) == (embeddings is not None):
        raise ConfigError("With --bank give either clips to embed or --embeddings EMB.npz, not both or neither.")


def _rows_from_file(bank: Bank, path: Path, all_rows: bool) -> Embeddings:
    emb = load_embeddings(path)
    check_not_windows(emb, str(path))  # before the window check, whose advice would lead here
    check_compatible(bank, emb, f"The bank of {bank.name}", str(path))  # before any line saying rows were scored
    if all_rows:
        check_unique_names(emb, str(path))
        return emb
    rows = select_test(emb, bank.machine, bank.section)
    if len(rows) == 0:
        raise DataError(f"{path} has no test clips of {bank.name}; pass --all to score every row.")
    check_unique_names(rows, str(path))  # before the line saying which rows are scored
    if len(rows) < len(emb):
        stderr_console().print(
            f"Scored the {len(rows)} test clips of {bank.name} in {path}; skipped {len(emb) - len(rows)} "
            "other rows (--all scores every row).",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return rows


def _found_clips(clips: list[Path]) -> list[Clip]:
    """The clips to score: files as given, the test clips of folders."""
    from asdcli.data.dataset import discover_clips

    files = [p for p in clips if p.is_file()]
    folders = [p for p in clips if not p.is_file()]
    return (discover_clips(files) if files else []) + (discover_clips(folders, splits={"test"}) if folders else [])


def _embed(
    bank: Bank,
    found: list[Clip],
    checkpoint: Path | None,
    adapter: Path | None,
    device: str,
    batch_size: int | None,
    precision: str | None = None,
) -> Embeddings:
    """Embed the clips as the bank's training clips were (checkpoint, adapter, embedding kind,
    layers, clip length, channel and precision from its front-end record; --checkpoint/--adapter/
    --precision override, and a different front end is then caught by the contract check)."""
    from asdcli.backend.score import bank_embed_config
    from asdcli.frontend.embed import embed_job

    cfg = bank_embed_config(bank, checkpoint, adapter, device, batch_size, precision)
    return embed_job(found, cfg, stderr_console())[0]
