"""`asd embed`: clips -> EMB.npz of one BEATs (or fine-tuned) vector per clip."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from asdcli.console import rate_text, stderr_console
from asdcli.data.dataset import discover_clips


def command(
    inputs: list[Path] = typer.Argument(..., help="Wav files, machine/split folders or dataset roots (all machines).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output embeddings file (.npz), written atomically.", show_default=False),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Official BEATs checkpoint (.pt). Default: with --adapter the one its run recorded, else $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Run folder of `asd finetune`: embed with the fine-tuned model."),
    embedding: str | None = typer.Option(None, "--embedding", help="With --adapter: 'head' (default, the classifier's embedding) or 'pooled' (token mean of the adapted backbone)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (cuda:N) or mps."),
    seconds: float = typer.Option(10.0, "--seconds", help="Cut or zero-pad every clip to this many seconds."),
    channel: int | None = typer.Option(None, "--channel", help="Keep this 0-based channel of multi-channel files (default: mean of channels)."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes that read audio."),
    layers: str = typer.Option("last", "--layers", help="Frozen BEATs: 'last', or 1-based transformer layers (e.g. 7,10) whose token means are concatenated in that order."),
    window: float | None = typer.Option(None, "--window", help="A row per window of this many seconds (start_s/end_s recorded), for long recordings."),
    hop: float | None = typer.Option(None, "--hop", help="With --window: seconds between window starts (default: the window)."),
) -> None:
    """Embed clips with BEATs (optionally a fine-tuned adapter) into an .npz file.

    Without --adapter a clip's vector is the mean over tokens of BEATs' last layer (768-d for BEATs_iter3).
    With --adapter and no --checkpoint, the checkpoint recorded in the run (SHA-256 checked).

    Run under `accelerate launch` to split the clips across processes.
    """
    from accelerate import PartialState

    from asdcli.artifacts import check_not_input
    from asdcli.frontend.embed import EmbedConfig, embed_to_file, parts_prefix

    cfg = EmbedConfig(checkpoint=checkpoint, adapter=adapter, embedding=embedding, batch_size=batch_size,
                      device=device, seconds=seconds, channel=channel, num_workers=workers, layers=layers)  # fmt: skip
    clips = discover_clips(inputs)
    check_not_input(out, [*inputs, *(c.path for c in clips)], "--out")
    console = stderr_console()
    start = time.perf_counter()
    if window is not None or hop is not None:
        from asdcli.monitor.windowed import embed_windowed, window_spec

        emb = embed_windowed(clips, cfg, window_spec(window, hop), out, console)
    else:
        # single process: resumable parts beside the output (Ctrl-C keeps the finished ones);
        # under accelerate launch: split across processes, the main one writes
        emb = embed_to_file(clips, cfg, {out: None}, console, parts_in=(out.parent, parts_prefix(out)))
    if PartialState().is_main_process:
        took = time.perf_counter() - start
        console.print(f"Embedded {len(emb)} clips into {emb.dim}-d vectors in {took:.1f} s "
                      f"({rate_text(len(emb), took)}) -> {out}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
