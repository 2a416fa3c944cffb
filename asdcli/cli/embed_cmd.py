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
) -> None:
    """Embed clips with BEATs (optionally a fine-tuned adapter) into an .npz file.

    Without --adapter a clip's vector is the mean over tokens of BEATs' last layer (768-d for BEATs_iter3).

    Run under `accelerate launch` to split the clips across processes.
    """
    from asdcli.frontend.embed import EmbedConfig, embed_with_progress, write_embeddings

    cfg = EmbedConfig(checkpoint=checkpoint, adapter=adapter, embedding=embedding, batch_size=batch_size,
                      device=device, seconds=seconds, channel=channel, num_workers=workers)  # fmt: skip
    clips = discover_clips(inputs)
    console = stderr_console()
    start = time.perf_counter()
    if _single_process():  # resumable: Ctrl-C keeps the finished parts
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
    from asdcli.artifacts import save_embeddings, sha256_file, shortened
    from asdcli.frontend.beats import resolve_checkpoint
    from asdcli.frontend.embed import embed_inputs, embed_resumable
    from asdcli.pipeline.cleanup import remove_parts
    from asdcli.pipeline.stages import stage_key

    key = stage_key(embed_inputs(clips, cfg, sha256_file(resolve_checkpoint(cfg.checkpoint))))
    prefix = f".{shortened(out.name, len('..parts-') + 16)}.parts-"  # + key[:16] fits in a file name
    emb, parts = embed_resumable(clips, cfg, out.parent, prefix, key, console)
    save_embeddings(out, emb)
    remove_parts(parts)  # the part files only: never a folder tree
    return emb
