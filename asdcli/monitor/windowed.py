"""`asd score --window` and `asd embed --window`: what the commands call for long recordings.

Scoring writes the per-window CSV (``filename,start_s,end_s,score,decision``) and the timeline
PNG and returns one aggregate score per recording for the challenge CSV; embedding writes a row
per window with its ``start_s``/``end_s`` (extra arrays of the embeddings file, which every
other stage ignores, so `asd fit-bank` builds banks from them as from clips).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asdcli.artifacts import Embeddings, load_npz, save_embeddings, write_text_atomic
from asdcli.backend.bank import Bank
from asdcli.backend.score import bank_clips, bank_embed_config, format_score
from asdcli.console import stderr_console
from asdcli.data.dataset import discover_clips
from asdcli.data.names import Clip
from asdcli.errors import ArtifactError, ConfigError
from asdcli.monitor.embedder import bank_clip_seconds, load_embedder
from asdcli.monitor.options import WindowedScoring
from asdcli.monitor.recording import RecordingScores, embed_windows, position_bar, score_recording
from asdcli.monitor.stream import recording_info
from asdcli.monitor.windows import WindowSpec, aggregate, alarm_runs, check_window_length

if TYPE_CHECKING:
    from rich.console import Console

    from asdcli.frontend.embedder import EmbedConfig

WINDOW_COLUMNS = ("filename", "start_s", "end_s", "score", "decision")


def recordings_in(paths: Sequence[Path]) -> list[Clip]:
    """Files as given; in folders, the test clips of a DCASE layout, else every audio file."""
    files = [p for p in paths if p.is_file()]
    folders = [p for p in paths if not p.is_file()]
    found = discover_clips(files) if files else []
    if folders:
        inside = discover_clips(folders)
        tests = [c for c in inside if c.split == "test"]
        found += tests or inside
    return found


def format_windows(results: Sequence[RecordingScores]) -> str:
    """The per-window CSV text (header line, then one row per window in time order)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(WINDOW_COLUMNS)
    for rec in results:
        for s, e, score, d in zip(rec.start_s, rec.end_s, rec.scores, rec.decisions):
            writer.writerow((rec.filename, f"{s:.3f}", f"{e:.3f}", format_score(score), int(d)))
    return buf.getvalue()


def score_windowed(bank: Bank, paths: Sequence[Path], opts: WindowedScoring, checkpoint: Path | None,
                   adapter: Path | None, device: str, batch_size: int | None, console: Console | None,
                   check_clips: Callable[[Sequence[Clip]], None] | None = None,
                   skip_other_sections: bool = False, precision: str | None = None) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """Score every recording window by window; write ``opts.windows_csv`` and ``opts.plot``.

    ``check_clips`` sees the recordings found before any is read (e.g. to refuse an output that is
    one of them); recordings of another machine/section than the bank's are then refused or
    skipped as `asd score` does (:func:`~asdcli.backend.score.bank_clips`). ``checkpoint``,
    ``adapter`` and ``precision`` override the bank's front end, which is then checked. Notes (skipped
    recordings, ``--min-windows`` alarms) go to ``console``, else stderr. Returns the recordings'
    file names and their aggregate scores (N,) float32.
    """
    spec = WindowSpec(opts.window_s, opts.hop_s)
    clips = recordings_in(paths)
    if check_clips is not None:
        check_clips(clips)
    notes = console or stderr_console()  # skipped recordings and alarms are said even without a progress console

    def note(text: str) -> None:
        notes.print(text, markup=False, highlight=False, soft_wrap=True)

    clips = bank_clips(bank, clips, skip_other_sections, note)
    check_window_length(spec, bank_clip_seconds(bank), bank.name)
    embedder = load_embedder(bank_embed_config(bank, checkpoint, adapter, device, batch_size, precision))
    results = []
    for clip in clips:
        info = recording_info(clip.path, embedder.channel)
        with position_bar(console, info) as position:
            results.append(score_recording(clip.path, bank, embedder, spec, batch_size, position))
    if opts.windows_csv is not None:
        write_text_atomic(opts.windows_csv, format_windows(results))
    if opts.plot is not None:
        from asdcli.monitor.plot import plot_timeline

        plot_timeline(opts.plot, results)
    if opts.min_windows is not None:
        for line in alarm_lines(results, opts.min_windows):
            note(line)
    scores = np.array([aggregate(r.scores, opts.aggregate) for r in results], dtype=np.float32)
    return [r.filename for r in results], scores


def alarm_lines(results: Sequence[RecordingScores], min_windows: int) -> list[str]:
    """One ``Alarm:`` line per run of at least ``min_windows`` windows above the threshold within a
    recording (where it starts and ends, in seconds), or one line saying there is none."""
    lines = [
        f"Alarm: {rec.filename}: {j - i} windows in a row above the threshold, "
        f"{rec.start_s[i]:.3f} s to {rec.end_s[j - 1]:.3f} s."
        for rec in results
        for i, j in alarm_runs(rec.decisions, min_windows)
    ]
    return lines or [f"No alarm: no recording has {min_windows} windows in a row above the threshold."]


def window_embeddings(clips: Sequence[Clip], cfg: EmbedConfig, spec: WindowSpec,
                      console: Console | None = None) -> tuple[Embeddings, np.ndarray, np.ndarray]:  # fmt: skip
    """A row per window of every clip, and the windows' ``start_s``, ``end_s`` (N,) float64."""
    if not clips:
        raise ConfigError("No clips to embed.")
    embedder = load_embedder(dataclasses.replace(cfg, seconds=spec.window_s))  # the record says: windows of window_s
    rows: list[tuple[Clip, np.ndarray, np.ndarray, np.ndarray]] = []
    for clip in clips:
        info = recording_info(clip.path, cfg.channel)
        with position_bar(console, info) as position:
            batches = list(embed_windows(info, embedder, spec, None, cfg.channel, position))
        rows.append(
            (
                clip,
                np.concatenate([b.start_s for b in batches]),
                np.concatenate([b.end_s for b in batches]),
                np.concatenate([b.vectors for b in batches]),
            )
        )
    window = {"window_s": spec.window_s, "hop_s": spec.hop / spec.sample_rate}
    emb = _window_embeddings(rows, {**embedder.meta, "window": window})
    return emb, np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows])


def embed_windowed(clips: Sequence[Clip], cfg: EmbedConfig, spec: WindowSpec, out: Path,
                   console: Console | None) -> Embeddings:  # fmt: skip
    """Embed every clip window by window into ``out`` (a row per window, ``start_s``/``end_s``)."""
    emb, start_s, end_s = window_embeddings(clips, cfg, spec, console)
    save_embeddings(out, emb, extra={"start_s": start_s, "end_s": end_s})
    return emb


def _window_embeddings(
    rows: Sequence[tuple[Clip, np.ndarray, np.ndarray, np.ndarray]], meta: dict[str, Any]
) -> Embeddings:
    def column(get: Callable[[Clip], str]) -> np.ndarray:
        return np.concatenate([np.full(len(r[1]), get(r[0]), dtype=object) for r in rows]).astype(str)

    return Embeddings(
        vectors=np.concatenate([r[3] for r in rows]).astype(np.float32),
        filenames=column(lambda c: c.name),
        paths=column(lambda c: str(c.path)),
        machine=column(lambda c: c.machine),
        section=column(lambda c: c.section),
        domain=column(lambda c: c.domain),
        split=column(lambda c: c.split),
        label=column(lambda c: c.label),
        meta=meta,
    )


def load_window_times(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``start_s``, ``end_s`` (N,) float64 of a windowed embeddings file (ArtifactError if absent)."""
    arrays = load_npz(path, what="embeddings file")
    if "start_s" not in arrays or "end_s" not in arrays:
        raise ArtifactError(f"{path} has no window times; make it with `asd embed --window SECONDS`.")
    return arrays["start_s"].astype(np.float64), arrays["end_s"].astype(np.float64)


def window_spec(window: float | None, hop: float | None) -> WindowSpec:
    """The WindowSpec of `asd embed --window/--hop` (``--hop`` alone is an error)."""
    if window is None:
        raise ConfigError("--hop needs --window SECONDS (embed long recordings window by window).")
    return WindowSpec(window, hop)
