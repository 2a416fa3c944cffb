"""`asd embed`: clips -> EMB.npz of one BEATs (or fine-tuned) vector per clip."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from asdcli.console import rate_text, stderr_console
from asdcli.data.dataset import discover_clips

if TYPE_CHECKING:
    from rich.console import Console

    from asdcli.artifacts import Embeddings
    from asdcli.data.dataset import Clip
    from asdcli.frontend.embed import EmbedConfig


def command(
    inputs: list[Path] = typer.Argument(..., help="Wav files, machine/split folders or dataset roots (all machines).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output embeddings file (.npz), written atomically.", show_default=False),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Official BEATs checkpoint (.pt). Default: $ASD_CHECKPOINT or ~/.cache/asdcli/BEATs_iter3.pt."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Run folder of `asd finetune`: embed with the fine-tuned model."),
    embedding: str | None = typer.Option(None, "--embedding", help="With --adapter: 'head' (default, the classifier's embedding) or 'pooled' (token mean of the adapted backbone)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (cuda:N) or mps."),
    seconds: float = typer.Option(10.0, "--seconds", help="Cut or zero-pad every clip to this many seconds."),
    channel: int | None = typer.Option(None, "--channel", help="Keep this 0-based channel of multi-channel files (default: mean of channels)."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes that read audio."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or int8 (CPU only: int8 transformer linear layers, about 1.5x faster)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="Embed with this `asd export` model in ONNX Runtime (CPU) instead of torch."),
) -> None:
    """Embed clips with BEATs (optionally a fine-tuned adapter) into an .npz file.

    Without --adapter a clip's vector is the mean over tokens of BEATs' last layer (768-d for BEATs_iter3).

    Run under `accelerate launch` to split the clips across processes.
    """
    from asdcli.frontend.embed import EmbedConfig, embed_with_progress, write_embeddings

    cfg = EmbedConfig(checkpoint=checkpoint, adapter=adapter, embedding=embedding, batch_size=batch_size,
                      device=device, seconds=seconds, channel=channel, num_workers=workers,
                      precision=precision)  # fmt: skip
    clips = discover_clips(inputs)
    console = stderr_console()
    start = time.perf_counter()
    if onnx is not None:
        emb, wrote = _embed_onnx(clips, cfg, onnx, out, (checkpoint, adapter, embedding), console), True
    elif _single_process():  # resumable: Ctrl-C keeps the finished parts
        emb, wrote = _embed_resumable(clips, cfg, out, console), True
    else:  # under accelerate launch: split across processes, the main one writes
        emb = embed_with_progress(clips, cfg, console)
        wrote = write_embeddings(out, emb)
    if wrote:
        took = time.perf_counter() - start
        console.print(f"Embedded {len(emb)} clips into {emb.dim}-d vectors in {took:.1f} s "
                      f"({rate_text(len(emb), took)}) -> {out}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip


def _single_process() -> bool:
    from accelerate import PartialState

    return PartialState().num_processes == 1


def _embed_resumable(clips: list[Clip], cfg: EmbedConfig, out: Path, console: Console) -> Embeddings:
    """Embed in saved parts beside ``out`` (``.<name>.parts-<key>/``) and write ``out``: Ctrl-C
    loses at most one part and the same command continues; the parts go once ``out`` is written."""
    import shutil

    from asdcli.artifacts import save_embeddings, sha256_file
    from asdcli.frontend.embed import embed_inputs, embed_resumable
    from asdcli.frontend.beats import resolve_checkpoint
    from asdcli.pipeline.stages import stage_key

    key = stage_key(embed_inputs(clips, cfg, sha256_file(resolve_checkpoint(cfg.checkpoint))))
    emb, parts = embed_resumable(clips, cfg, out.parent, f".{out.name}.parts-", key, console)
    save_embeddings(out, emb)
    shutil.rmtree(parts)
    return emb


def _embed_onnx(clips: list[Clip], cfg: EmbedConfig, model: Path, out: Path, torch_options: tuple[object, ...],
                console: Console) -> Embeddings:
    """Embed with an exported ONNX model and write ``out`` (not resumable: one pass, one write)."""
    from asdcli.artifacts import save_embeddings
    from asdcli.errors import ConfigError
    from asdcli.frontend.embed import _progress_bar
    from asdcli.frontend.export import embed_clips_onnx

    if any(o is not None for o in torch_options) or cfg.precision != "fp32" or cfg.device not in ("auto", "cpu"):
        raise ConfigError("--onnx MODEL already holds the checkpoint, adapter, embedding and precision and runs "
                          "on CPU: drop --checkpoint, --adapter, --embedding, --precision and --device.")
    if not _single_process():
        raise ConfigError("--onnx runs in one process; run it without `accelerate launch`.")
    with _progress_bar(console, len(clips)) as advance:
        emb = embed_clips_onnx(clips, model, cfg.audio, cfg.batch_size, progress=advance)
    save_embeddings(out, emb)
    return emb
