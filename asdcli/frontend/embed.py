"""The embed stage: clips -> one vector per clip from BEATs (optionally a fine-tuned adapter).

Runs single-process, or split across ``accelerate launch`` processes; every process ends with the
same, complete Embeddings in the input order, and only the main process writes the file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asdcli.artifacts import Embeddings, save_embeddings
from asdcli.data.audio import SAMPLE_RATE, AudioConfig, AudioWarning, ClipDataset, probe_clips
from asdcli.data.dataset import Clip
from asdcli.device import resolve_device
from asdcli.errors import AsdError, ConfigError
from asdcli.frontend.features import beats_fbank
from asdcli.frontend.beats import LoadedBeats, load_beats, resolve_checkpoint
from asdcli.frontend.quantize import check_precision, for_precision

EMBEDDING_CHOICES = ("head", "pooled")
POOLING = "mean"  # over all tokens of the last layer
EMBED_CHUNK = 256  # clips per saved part of a resumable embedding job
FRONTEND = "beats-kaldi-fbank128-v1"

Progress = Callable[[int], None]  # called with the number of clips just finished


@dataclass(frozen=True)
class EmbedConfig:
    """Options of `asd embed`.

    checkpoint: official BEATs checkpoint (None: $ASD_CHECKPOINT or the default cache path);
    adapter: `asd finetune` run folder; embedding: "head" or "pooled" (needs adapter, default head);
    seconds: clips are cut/zero-padded to this length (None: natural length, batch size 1);
    channel: 0-based channel to keep (None: mean of channels); num_workers: DataLoader workers;
    precision: fp32, or int8 (CPU only: frontend.quantize).
    """

    checkpoint: Path | None
    adapter: Path | None = None
    embedding: str | None = None
    batch_size: int = 8
    device: str = "auto"
    seconds: float | None = 10.0
    channel: int | None = None
    num_workers: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.num_workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.num_workers}.")
        if self.embedding is not None and self.embedding not in EMBEDDING_CHOICES:
            raise ConfigError(f"--embedding must be one of {', '.join(EMBEDDING_CHOICES)}, got {self.embedding!r}.")
        if self.embedding is not None and self.adapter is None:
            raise ConfigError("--embedding chooses a fine-tuned model's vector and needs --adapter RUN_DIR.")

    @property
    def audio(self) -> AudioConfig:
        return AudioConfig(sample_rate=SAMPLE_RATE, seconds=self.seconds, channel=self.channel)


class MeanPooledBackbone(nn.Module):
    """Normalized fbank (B, T, 128) -> mean over tokens of the last layer, (B, D)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, fbank: Tensor) -> Tensor:
        return self.backbone(fbank).mean(dim=1)


def build_embedder(loaded: LoadedBeats, cfg: EmbedConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The fbank -> (B, D) module and the meta fields describing it."""
    if cfg.adapter is None:
        module: nn.Module = MeanPooledBackbone(loaded.model)
        return module, {"adapter_id": None, "adapter_path": None, "embedding": "backbone",
                        "embedding_dim": loaded.model.embed_dim}  # fmt: skip
    from asdcli.finetune.run_dir import load_adapter_embedder  # fine-tune stack only when asked for

    module, meta = load_adapter_embedder(Path(cfg.adapter), loaded, cfg.embedding)
    return module, dict(meta)


def _unwrap_worker_error(e: AsdError) -> AsdError:
    """DataLoader workers re-raise with a traceback as message; keep only the original sentence."""
    text = str(e)
    if "DataLoader worker" not in text:
        return e
    last = text.strip().splitlines()[-1]
    return type(e)(last.split(": ", 1)[1] if ": " in last else last)


def _embed_indices(module: nn.Module, clips: Sequence[Clip], indices: list[int], cfg: EmbedConfig,
                   device: torch.device, progress: Progress | None) -> list[tuple[int, np.ndarray]]:  # fmt: skip
    """Embed ``clips[i]`` for i in ``indices``; returns (i, float32 (D,)) pairs."""
    dataset = ClipDataset([clips[i] for i in indices], cfg.audio)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size if cfg.seconds is not None else 1,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    out: list[tuple[int, np.ndarray]] = []
    try:
        with torch.inference_mode():
            for wave, local in loader:
                vectors = module(beats_fbank(wave.to(device, non_blocking=True)))  # (B, D)
                vectors = vectors.float().cpu().numpy()
                out.extend((indices[int(j)], vectors[k]) for k, j in enumerate(local))
                if progress is not None:
                    progress(len(local))
    except AsdError as e:
        raise _unwrap_worker_error(e) from None
    return out


def embed_clips(clips: Sequence[Clip], cfg: EmbedConfig, progress: Progress | None = None) -> Embeddings:
    """Embed clips with BEATs, or with the fine-tuned model of ``cfg.adapter``.

    Parameters
    ----------
    clips : sequence of Clip
        From ``dataset.discover_clips``.
    cfg : EmbedConfig
    progress : callable, optional
        Called with the number of clips each batch finished (in this process).

    Returns
    -------
    Embeddings
        float32 (N, D) vectors in the order of ``clips`` (D = 768 for iter3 without adapter),
        with the clips' parsed fields and a meta record.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if not clips:
        raise ConfigError("No clips to embed.")
    probe_clips(clips, cfg.channel)  # a bad clip fails now, not after most of the work
    loaded = load_beats(resolve_checkpoint(cfg.checkpoint))
    module, meta = build_embedder(loaded, cfg)
    state = PartialState()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and state.num_processes > 1:
        device = state.device
    module = for_precision(module.to(device).eval(), cfg.precision, device)
    with state.split_between_processes(list(range(len(clips)))) as mine:
        pairs = _embed_indices(module, clips, list(mine), cfg, device, progress)
    if state.num_processes > 1:
        pairs = gather_object(pairs)
    pairs = sorted(pairs, key=lambda p: p[0])
    vectors = np.stack([v for _, v in pairs]).astype(np.float32)
    meta.update(
        checkpoint_sha256=loaded.sha256, checkpoint_path=str(loaded.path), backbone_cfg=loaded.cfg,
        pooling=POOLING, frontend=FRONTEND, clip_seconds=cfg.seconds, sample_rate=SAMPLE_RATE,
        channel=cfg.channel, precision=cfg.precision,
    )  # fmt: skip
    return Embeddings(
        vectors=vectors,
        filenames=np.asarray([c.name for c in clips], dtype=str),
        paths=np.asarray([str(c.path) for c in clips], dtype=str),
        machine=np.asarray([c.machine for c in clips], dtype=str),
        section=np.asarray([c.section for c in clips], dtype=str),
        domain=np.asarray([c.domain for c in clips], dtype=str),
        split=np.asarray([c.split for c in clips], dtype=str),
        label=np.asarray([c.label for c in clips], dtype=str),
        meta=meta,
    )


def local_share(num_clips: int) -> int:
    """How many of ``num_clips`` the main process embeds (all of them without a launcher); 0 elsewhere."""
    from accelerate import PartialState

    state = PartialState()
    return -(-num_clips // state.num_processes) if state.is_main_process else 0


def write_embeddings(path: Path, emb: Embeddings) -> bool:
    """Save on the main process only (atomically); others wait. Returns whether this process wrote."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        save_embeddings(path, emb)
    state.wait_for_everyone()
    return bool(state.is_main_process)


@contextlib.contextmanager
def _progress_bar(console: Any | None, total: int, visible: bool = True) -> Iterator[Callable[..., None]]:
    """A bar over ``total`` clips with clips/s on ``console`` (audio warnings shown there as
    ``Warning: ...`` lines); yields ``advance(n, computed=True)``. ``computed=False`` moves the
    bar for clips loaded from saved parts without counting them in the rate. Silent without console."""
    if console is None:
        yield lambda n, computed=True: None
        return
    from asdcli.console import make_progress, rate_text, show_warnings

    start, done = time.perf_counter(), 0
    with show_warnings(console, AudioWarning), make_progress(console) as progress:
        task = progress.add_task("embed", total=total or 1, rate="", visible=visible)

        def advance(n: int, computed: bool = True) -> None:
            nonlocal done
            progress.advance(task, n)
            done += n if computed else 0
            progress.update(task, rate=rate_text(done, time.perf_counter() - start))

        yield advance


def embed_with_progress(clips: Sequence[Clip], cfg: EmbedConfig, console: Any | None) -> Embeddings:
    """``embed_clips`` with a progress bar (clips/s) on ``console``; no bar when it is None.

    Audio warnings (e.g. an all-zero clip) are shown on ``console`` as ``Warning: ...`` lines.
    """
    share = local_share(len(clips))  # this process's clips; 0 hides the bar on non-main processes
    with _progress_bar(console, share, visible=share > 0) as advance:
        return embed_clips(clips, cfg, progress=advance)


def embed_in_parts(clips: Sequence[Clip], cfg: EmbedConfig, parts_dir: Path, console: Any | None = None,
                   chunk: int | None = None) -> Embeddings:
    """``embed_clips`` in parts of ``chunk`` (default EMBED_CHUNK) clips, each saved atomically to
    ``parts_dir/NNNNN.npz``.

    A part already there (same clips) is loaded instead of recomputed, so a job interrupted by
    Ctrl-C continues where it stopped. ``parts_dir`` must be specific to the inputs and options
    (the caller names it from them) and is the caller's to delete once the result is saved.
    Single-process only. Shows one progress bar over all clips on ``console`` (None: silent).
    """
    from asdcli.artifacts import load_embeddings

    chunk = chunk or EMBED_CHUNK
    probe_clips(clips, cfg.channel)
    parts: list[Embeddings] = []
    with _progress_bar(console, len(clips)) as advance:
        for i, first in enumerate(range(0, len(clips), chunk)):
            piece, path = clips[first:first + chunk], parts_dir / f"{i:05d}.npz"
            emb = load_embeddings(path) if path.is_file() else None
            if emb is not None and list(emb.paths) == [str(c.path) for c in piece]:
                advance(len(piece), computed=False)
            else:
                emb = embed_clips(piece, cfg, progress=advance)
                save_embeddings(path, emb)
            parts.append(emb)
    return Embeddings.concat(parts)


def embed_inputs(clips: Sequence[Clip], cfg: EmbedConfig, checkpoint_sha256: str) -> dict[str, Any]:
    """What an embedding job's vectors depend on: hashed into the key that names its saved parts
    (and the `asd run` embed stage)."""
    from asdcli.artifacts import read_json
    from asdcli.pipeline.stages import files_fingerprint

    adapter = read_json(Path(cfg.adapter) / "run.json", what="run record")["adapter_id"] if cfg.adapter else None
    return {"checkpoint": checkpoint_sha256, "adapter": adapter, "embedding": cfg.embedding, "seconds": cfg.seconds,
            "channel": cfg.channel, "precision": cfg.precision, "clips": files_fingerprint([c.path for c in clips])}


def embed_resumable(clips: Sequence[Clip], cfg: EmbedConfig, work_dir: Path, prefix: str, key: str,
                    console: Any | None = None) -> tuple[Embeddings, Path]:
    """``embed_in_parts`` into ``work_dir/<prefix><key>`` after removing the folders of other keys
    with the same ``prefix`` (parts made from other inputs or options).

    Returns the embeddings and the parts folder, which the caller deletes once it saved the result.
    """
    import shutil

    work_dir = Path(work_dir)
    parts = work_dir / f"{prefix}{key[:16]}"
    if work_dir.is_dir():
        for stale in work_dir.iterdir():
            if stale.name.startswith(prefix) and stale != parts and stale.is_dir():
                shutil.rmtree(stale)
    return embed_in_parts(clips, cfg, parts, console), parts
