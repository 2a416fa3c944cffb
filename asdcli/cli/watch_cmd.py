"""`asd watch`: score new audio files in a folder as they arrive; log, print and alarm."""

from __future__ import annotations

from pathlib import Path

import typer

from asdcli.console import stderr_console
from asdcli.errors import ConfigError


def command(
    folder: Path = typer.Argument(
        ..., help="Folder the recorder writes into (watched with its sub-folders).", show_default=False
    ),
    banks: Path | None = typer.Option(
        None,
        "--banks",
        help="Folder of banks from `asd fit-bank --out-dir`: each file's bank from its machine folder and DCASE section.",
    ),
    bank: Path | None = typer.Option(None, "--bank", "-b", help="Score every file against this one bank instead."),
    log: Path | None = typer.Option(
        None, "--log", help="Append time,filename,score,threshold,decision rows here (default: FOLDER/asd-watch.csv)."
    ),
    once: bool = typer.Option(False, "--once", help="Score the complete files that are there, then exit (for cron)."),
    min_consecutive: int = typer.Option(
        1,
        "--min-consecutive",
        help="Alarm only after this many anomalous files in a row (per bank; a file is anomalous when its "
        "--aggregate score is above the threshold, however many of its windows are).",
    ),
    min_windows: int | None = typer.Option(
        None,
        "--min-windows",
        help="Instead: alarm once this many windows in a row are above the threshold (per bank), counted "
        "across a file's windows and on into the next file scored; an OK window resets the count.",
    ),
    on_anomaly: str | None = typer.Option(
        None,
        "--on-anomaly",
        help="Run this program on an alarm, with the file path appended (split like a shell line, never run by a shell).",
    ),
    command_timeout: float = typer.Option(
        30.0, "--command-timeout", help="Seconds before --on-anomaly's program is stopped."
    ),
    poll: float = typer.Option(
        2.0, "--poll", help="Seconds between looks at the folder; a file is complete once unchanged between two looks."
    ),
    window: float | None = typer.Option(
        None, "--window", help="Score each file window by window with this length (default: the bank's clip length)."
    ),
    hop: float | None = typer.Option(None, "--hop", help="Seconds between window starts (default: the window)."),
    how: str = typer.Option("max", "--aggregate", help="A file's score: max or mean of its window scores."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="BEATs checkpoint (default: the bank's)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Fine-tuned run folder (default: the bank's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Windows per forward pass (default: 2 on a CPU, where bigger batches are slower; 8 on a GPU).",
    ),
) -> None:
    """Watch FOLDER: score each new audio file once it is complete, print OK or ANOMALY, log it.

    `asd watch incoming/ --banks banks/ --min-consecutive 3 --on-anomaly "notify-send ANOMALY"`.
    A restart skips the files the log already has. Ctrl-C stops it (exit 0).
    """
    from asdcli.backend.bank import load_bank, load_banks
    from asdcli.monitor.options import check_aggregate
    from asdcli.monitor.watch import DEFAULT_LOG, ONE_BANK, Embedders, WatchConfig, Watcher, log_lock, parse_command
    from asdcli.pipeline.run_check import check_run_bank, check_run_banks

    if (bank is None) == (banks is None):
        raise ConfigError("Give exactly one of --banks DIR or --bank BANK.npz.")
    check_aggregate(how)
    cfg = WatchConfig(folder=folder, log=log or folder / DEFAULT_LOG, min_consecutive=min_consecutive,
                      min_windows=min_windows,
                      on_anomaly=parse_command(on_anomaly), command_timeout_s=command_timeout, poll_s=poll,
                      once=once, window_s=window, hop_s=hop, aggregate=how, batch_size=batch_size)  # fmt: skip
    if bank is not None:
        check_run_bank(bank)  # in RUN/banks of an `asd run` folder: the bank it wrote, unchanged
        loaded = {ONE_BANK: load_bank(bank)}
    else:
        assert banks is not None
        check_run_banks(banks)
        loaded = load_banks(banks)
    console = stderr_console()

    def note(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    with log_lock(cfg.log, note):  # one watcher per log, or every file would be scored (and alarmed) twice
        watcher = Watcher(cfg, loaded, Embedders(checkpoint, adapter, device, batch_size),
                          say=lambda line: typer.echo(line.encode("utf-8", "surrogateescape")),  # a name's own bytes
                          warn=lambda text: note(f"Warning: {text}"))  # fmt: skip
        if not once:
            note(f"Watching {folder} every {poll:g} s ({len(loaded)} bank(s), log {cfg.log}); Ctrl-C stops.")
        try:
            scored = watcher.run()
        except KeyboardInterrupt:
            note("Stopped; the log has every file scored so far.")
            return
    if once:
        note(f"Scored {scored} file(s); log {cfg.log}.")
