"""The embed stage: clips -> one vector per clip from a built front end, with progress and resumable parts.

Runs single-process, or split across ``accelerate launch`` processes; every process ends with the
same, complete Embeddings in the input order, and only the main process writes the file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asdcli.artifacts import Embeddings, check_writable_folder, load_embeddings, save_embeddings
from asdcli.data.audio import SAMPLE_RATE, AudioWarning, ClipDataset, probe_clips
from asdcli.data.names import Clip
from asdcli.errors import ArtifactError, AsdError, ConfigError
from asdcli.frontend.beats import LoadedBeats
from asdcli.frontend.embedder import EmbedConfig, Embedder, build_embedder
from asdcli.frontend.features import beats_fbank
from asdcli.frontend.spec import FEATURES, SPEC_KEY, frontend_differences

EMBED_CHUNK = 256  # clips per saved part of a resumable embedding job

Progress = Callable[[int], None]  # called with the number of clips just finished


def _unwrap_worker_error(e: AsdError) -> AsdError:
    """DataLoader workers re-raise with a traceback as message; keep only the original sentence."""
    text = str(e)
    if "DataLoader worker" not in text:
        return e
    last = text.strip().splitlines()[-1]
    return type(e)(last.split(": ", 1)[1] if ": " in last else last)


def _embed_indices(embedder: Embedder, clips: Sequence[Clip], indices: list[int],
                   progress: Progress | None) -> list[tuple[int, np.ndarray]]:  # fmt: skip
    """Embed ``clips[i]`` for i in ``indices``; returns (i, float32 (D,)) pairs."""
    dataset = ClipDataset([clips[i] for i in indices], embedder.audio)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=embedder.batch_size if embedder.audio.seconds is not None else 1,
        num_workers=embedder.num_workers,
        pin_memory=embedder.device.type == "cuda",
    )
    out: list[tuple[int, np.ndarray]] = []
    try:
        with torch.inference_mode():
            for wave, local in loader:
                vectors = embedder.module(beats_fbank(wave.to(embedder.device, non_blocking=True)))  # (B, D)
                vectors = vectors.float().cpu().numpy()
                out.extend((indices[int(j)], vectors[k]) for k, j in enumerate(local))
                if progress is not None:
                    progress(len(local))
    except AsdError as e:
        raise _unwrap_worker_error(e) from None
    return out


def embed(embedder: Embedder, clips: Sequence[Clip], progress: Progress | None = None) -> Embeddings:
    """Embed ``clips`` with a built :class:`Embedder`.

    Under ``accelerate launch`` each process embeds its share and every process returns all rows.
    ``progress`` is called with the number of clips each batch finished (in this process).
    Returns float32 (N, D) vectors in the order of ``clips``, with the clips' parsed fields and
    the embedder's meta. A non-finite vector is an ArtifactError naming the clip.
    """
    from asdcli.processes import process_state

    if not clips:
        raise ConfigError("No clips to embed.")
    state = process_state()
    with state.split_between_processes(list(range(len(clips)))) as mine:
        pairs = _embed_indices(embedder, clips, list(mine), progress)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        pairs = gather_object(pairs)
    pairs = sorted(pairs, key=lambda p: p[0])
    vectors = np.stack([v for _, v in pairs]).astype(np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        first = clips[int(np.flatnonzero(bad)[0])].path
        raise ArtifactError(
            f"The embedding of {first} is NaN or Inf ({int(bad.sum())} clips): checkpoint "
            f"{embedder.meta['checkpoint_path']} or the adapter computes non-finite values; check them."
        )
    return Embeddings(
        vectors=vectors,
        filenames=np.asarray([c.name for c in clips], dtype=str),
        paths=np.asarray([os.fsdecode(c.path) for c in clips], dtype=str),
        machine=np.asarray([c.machine for c in clips], dtype=str),
        section=np.asarray([c.section for c in clips], dtype=str),
        domain=np.asarray([c.domain for c in clips], dtype=str),
        split=np.asarray([c.split for c in clips], dtype=str),
        label=np.asarray([c.label for c in clips], dtype=str),
        meta=dict(embedder.meta),
    )


def embed_clips(clips: Sequence[Clip], cfg: EmbedConfig, progress: Progress | None = None) -> Embeddings:
    """``embed(build_embedder(cfg), clips)``: for one-off calls; a job builds its embedder once."""
    return embed(build_embedder(cfg), clips, progress)


def local_share(num_clips: int) -> int:
    """How many of ``num_clips`` the main process embeds (all of them without a launcher); 0 elsewhere."""
    from asdcli.processes import process_state

    state = process_state()
    return -(-num_clips // state.num_processes) if state.is_main_process else 0


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


def embed_with_progress(embedder: Embedder, clips: Sequence[Clip], console: Any | None) -> Embeddings:
    """:func:`embed` with a progress bar (clips/s) on ``console``; no bar when it is None."""
    share = local_share(len(clips))  # this process's clips; 0 hides the bar on non-main processes
    with _progress_bar(console, share, visible=share > 0) as advance:
        return embed(embedder, clips, progress=advance)


def embed_in_parts(
    embedder: Embedder, clips: Sequence[Clip], parts_dir: Path, console: Any | None = None, chunk: int | None = None
) -> Embeddings:
    """:func:`embed` in parts of ``chunk`` (default EMBED_CHUNK) clips, each saved atomically to
    ``parts_dir/NNNNN.npz``.

    A part already there (same clips, same front end) is loaded instead of recomputed, so a job
    interrupted by Ctrl-C continues where it stopped. ``parts_dir`` must be specific to the inputs
    and options (the caller names it from them) and is the caller's to delete once the result is
    saved. Single-process only. One progress bar over all clips on ``console`` (None: silent).
    """
    check_writable_folder(parts_dir)  # not after a part's worth of clips, naming a hidden folder
    chunk = chunk or EMBED_CHUNK
    parts: list[Embeddings] = []
    with _progress_bar(console, len(clips)) as advance:
        for i, first in enumerate(range(0, len(clips), chunk)):
            piece, path = clips[first : first + chunk], parts_dir / f"{i:05d}.npz"
            emb = _saved_part(path)
            if (
                emb is not None
                and list(emb.paths) == [os.fsdecode(c.path) for c in piece]
                and not frontend_differences(emb.meta.get(SPEC_KEY), embedder.spec.to_dict())
            ):
                advance(len(piece), computed=False)
            else:
                emb = embed(embedder, piece, progress=advance)
                save_embeddings(path, emb)
            parts.append(emb)
    return Embeddings.concat(parts)


def _saved_part(path: Path) -> Embeddings | None:
    """A saved part, or None when there is none or it cannot be read (damaged, or written by an
    asdcli of another schema): it is only a cache of work, computed again, never an error."""
    if not path.is_file():
        return None
    try:
        return load_embeddings(path)
    except ArtifactError:
        return None


def embed_inputs(clips: Sequence[Clip], cfg: EmbedConfig, checkpoint_sha256: str) -> dict[str, Any]:
    """What an embedding job's vectors depend on, without loading a model: hashed into the key
    that names its saved parts (and the `asd run` embed stage)."""
    from asdcli.pipeline.stages import files_fingerprint

    adapter = None
    if cfg.adapter is not None:
        from asdcli.finetune.run_dir import adapter_id

        adapter = adapter_id(Path(cfg.adapter))
    return {
        "checkpoint": checkpoint_sha256,
        "adapter": adapter,
        "embedding": cfg.embedding,
        "seconds": cfg.seconds,
        "channel": cfg.channel,
        "layers": cfg.layers,
        "precision": cfg.precision,
        "features": FEATURES,
        "clips": files_fingerprint([c.path for c in clips]),
    }


def long_clip_notice(durations: Sequence[float], seconds: float | None) -> str | None:
    """The stderr notice for clips longer than ``seconds`` (their ends are not embedded), or None."""
    if seconds is None:
        return None
    extra = [d - seconds for d in durations if d > seconds + 1.0 / SAMPLE_RATE]
    if not extra:
        return None
    return (
        f"Notice: {len(extra)} clip(s) are longer than --seconds {seconds:g}; only their first {seconds:g} s "
        f"are used, {sum(extra):.1f} s of audio in all is ignored."
    )


def prepare_job(
    clips: Sequence[Clip],
    cfg: EmbedConfig,
    console: Any | None = None,
    durations: Sequence[float] | None = None,
    loaded: LoadedBeats | None = None,
) -> Embedder:
    """Start an embedding job: read every clip's header once (a bad clip fails now, not after most
    of the work; ``durations`` from an earlier probe of the same clips skip it), say on
    ``console`` how much audio longer clips lose, and build the embedder."""
    if not clips:
        raise ConfigError("No clips to embed.")
    durations = probe_clips(clips, cfg.channel) if durations is None else durations
    notice = long_clip_notice(durations, cfg.seconds)
    if notice is not None and console is not None:
        console.print(notice, markup=False, highlight=False, soft_wrap=True)
    return build_embedder(cfg, loaded)


def parts_prefix(out: Path) -> str:
    """The name prefix of the resumable parts folder beside ``out``: ``.<name>.parts-`` (+ 16 key
    characters), the name shortened to fit a file name."""
    from asdcli.artifacts import shortened

    return f".{shortened(out.name, len('..parts-') + 16)}.parts-"


def embed_job(
    clips: Sequence[Clip],
    cfg: EmbedConfig,
    console: Any | None = None,
    parts_in: tuple[Path, str] | None = None,
    durations: Sequence[float] | None = None,
    loaded: LoadedBeats | None = None,
) -> tuple[Embeddings, Path | None]:
    """One embedding job: :func:`prepare_job`, then :func:`embed` with a progress bar.

    ``parts_in`` = (folder, prefix): single-process jobs save resumable parts in
    ``folder/<prefix><key>`` (after removing that prefix's folders of other keys) and return it
    for the caller to delete once the result is saved; under ``accelerate launch`` (or without
    ``parts_in``) nothing is saved and the second item is None.
    """
    from asdcli.pipeline.cleanup import remove_parts
    from asdcli.processes import process_state

    embedder = prepare_job(clips, cfg, console, durations, loaded)
    if parts_in is None or process_state().num_processes > 1:
        return embed_with_progress(embedder, clips, console), None
    from asdcli.pipeline.stages import stage_key

    work_dir, prefix = Path(parts_in[0]), parts_in[1]
    parts = work_dir / f"{prefix}{stage_key(embed_inputs(clips, cfg, embedder.spec.checkpoint_sha256))[:16]}"
    if work_dir.is_dir():
        for stale in work_dir.iterdir():
            if stale.name.startswith(prefix) and stale != parts and stale.is_dir() and not stale.is_symlink():
                remove_parts(stale)  # part files only, never a folder tree
    return embed_in_parts(embedder, clips, parts, console), parts


def embed_to_file(
    clips: Sequence[Clip],
    cfg: EmbedConfig,
    outputs: Mapping[Path, str | None],
    console: Any | None = None,
    parts_in: tuple[Path, str] | None = None,
    durations: Sequence[float] | None = None,
    loaded: LoadedBeats | None = None,
) -> Embeddings:
    """:func:`embed_job`, then write each ``outputs`` path (atomically, main process only) with
    the rows of its split (None: all rows) and remove the saved parts. Returns all rows."""
    from asdcli.pipeline.cleanup import remove_parts
    from asdcli.processes import process_state

    emb, parts = embed_job(clips, cfg, console, parts_in, durations, loaded)
    state = process_state()
    if state.is_main_process:
        for path, split in outputs.items():
            save_embeddings(path, emb if split is None else emb.select(emb.split == split))
        if parts is not None:
            remove_parts(parts)
    state.wait_for_everyone()
    return emb
