"""`asd embed`: clips -> EMB.npz of one BEATs (or fine-tuned) vector per clip."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from asdcli.console import rate_text, stderr_console
from asdcli.data.dataset import discover_clips
from asdcli.data.names import Clip
from asdcli.processes import process_state

if TYPE_CHECKING:
    from rich.console import Console

    from asdcli.artifacts import Embeddings
    from asdcli.frontend.embedder import EmbedConfig


def command(
    inputs: list[Path] = typer.Argument(
        ..., help="Wav files, machine/split folders or dataset roots (all machines).", show_default=False
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output embeddings file (.npz), written atomically.", show_default=False
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Official BEATs checkpoint (.pt). Default: with --adapter the one its run recorded, else $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt.",
    ),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="Run folder of `asd finetune`: embed with the fine-tuned model."
    ),
    embedding: str | None = typer.Option(
        None,
        "--embedding",
        help="With --adapter: 'head' (default, the classifier's embedding) or 'pooled' (token mean of the adapted backbone).",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Clips per forward pass (default: 2 on a CPU, where bigger batches are slower; 8 on a GPU).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (cuda:N) or mps."),
    seconds: float = typer.Option(10.0, "--seconds", help="Cut or zero-pad every clip to this many seconds."),
    channel: int | None = typer.Option(
        None, "--channel", help="Keep this 0-based channel of multi-channel files (default: mean of channels)."
    ),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes that read audio."),
    layers: str = typer.Option(
        "last",
        "--layers",
        help="Frozen BEATs: 'last', or 1-based transformer layers (e.g. 7,10) whose token means are concatenated in that order.",
    ),
    window: float | None = typer.Option(
        None, "--window", help="A row per window of this many seconds (start_s/end_s recorded), for long recordings."
    ),
    hop: float | None = typer.Option(
        None, "--hop", help="With --window: seconds between window starts (default: the window)."
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, or int8 (CPU only: int8 transformer linear layers, about 1.5x faster)."
    ),
    onnx: Path | None = typer.Option(
        None, "--onnx", help="Embed with this `asd export` model in ONNX Runtime (CPU) instead of torch."
    ),
) -> None:
    """Embed clips with BEATs (optionally a fine-tuned adapter) into an .npz file.

    Without --adapter a clip's vector is the mean over tokens of BEATs' last layer (768-d for BEATs_iter3).
    With --adapter and no --checkpoint, the checkpoint recorded in the run (SHA-256 checked).

    Run under `accelerate launch` to split the clips across processes.
    """
    from asdcli.artifacts import check_not_input
    from asdcli.frontend.embed import embed_to_file, parts_prefix
    from asdcli.frontend.embedder import EmbedConfig, front_end_files

    cfg = EmbedConfig(checkpoint=checkpoint, adapter=adapter, embedding=embedding, batch_size=batch_size,
                      device=device, seconds=seconds, channel=channel, num_workers=workers, layers=layers,
                      precision=precision)  # fmt: skip
    clips = discover_clips(inputs)
    check_not_input(out, [*inputs, *(c.path for c in clips), *front_end_files(checkpoint, adapter, onnx)], "--out")
    console = stderr_console()
    start = time.perf_counter()
    if onnx is not None:
        emb = _embed_onnx(clips, cfg, onnx, out, (checkpoint, adapter, embedding, window, hop), console)
    elif window is not None or hop is not None:
        from asdcli.monitor.windowed import embed_windowed, window_spec

        emb = embed_windowed(clips, cfg, window_spec(window, hop), out, console)
    else:
        # single process: resumable parts beside the output (Ctrl-C keeps the finished ones);
        # under accelerate launch: split across processes, the main one writes
        emb = embed_to_file(clips, cfg, {out: None}, console, parts_in=(out.parent, parts_prefix(out)))
    if process_state().is_main_process:
        took = time.perf_counter() - start
        console.print(f"Embedded {len(emb)} clips into {emb.dim}-d vectors in {took:.1f} s "
                      f"({rate_text(len(emb), took)}) -> {out}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip


def _embed_onnx(
    clips: list[Clip], cfg: EmbedConfig, model: Path, out: Path, torch_options: tuple[object, ...], console: Console
) -> Embeddings:
    """Embed with an exported ONNX model and write ``out`` (not resumable: one pass, one write)."""
    from asdcli.artifacts import save_embeddings
    from asdcli.errors import ConfigError
    from asdcli.frontend.embed import _progress_bar
    from asdcli.frontend.export import embed_clips_onnx

    if (
        any(o is not None for o in torch_options)
        or cfg.precision != "fp32"
        or cfg.device not in ("auto", "cpu")
        or cfg.layers != "last"
    ):
        raise ConfigError(
            "--onnx MODEL already holds the checkpoint, adapter, embedding, layers and precision and runs "
            "on CPU, clip by clip: drop --checkpoint, --adapter, --embedding, --layers, --precision, "
            "--device, --window and --hop."
        )
    if process_state().num_processes > 1:
        raise ConfigError("--onnx runs in one process; run it without `accelerate launch`.")
    with _progress_bar(console, len(clips)) as advance:
        emb = embed_clips_onnx(clips, model, cfg.audio, cfg.batch_size, progress=advance)
    save_embeddings(out, emb)
    return emb
