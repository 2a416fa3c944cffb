"""ONNX export of an embedder: 16 kHz waveform (B, N) -> embeddings (B, D), fbank included.

One graph: the Kaldi fbank (the STFT exports as ONNX ``DFT``), BEATs with any LoRA merged, the
token mean and a fine-tuned head, with a dynamic batch and clip length. The file carries the
front-end meta (checkpoint SHA-256, adapter id, embedding kind, precision) as the metadata entry
``asdcli``, so embeddings made from it are checked against banks like any others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asdcli.artifacts import Embeddings, check_name_length, temp_dir_prefix, through_link
from asdcli.data.audio import SAMPLE_RATE, AudioConfig, load_clip, probe_clips
from asdcli.data.names import Clip
from asdcli.errors import ArtifactError, ArtifactNotFound, AsdError, ConfigError
from asdcli.frontend.features import HOP_SIZE, WINDOW_SIZE, beats_fbank
from asdcli.frontend.quantize import merge_lora
from asdcli.frontend.spec import SPEC_KEY, spec_of

INPUT_NAME = "waveform"
OUTPUT_NAME = "embeddings"  # not "embedding": that name is taken by the node of BEATs' nn.Embedding
META_KEY = "asdcli"
ONNX_INT8 = "int8-onnxruntime"  # the precision of `asd export --int8` models in the front-end record
MIN_SAMPLES = WINDOW_SIZE + 15 * HOP_SIZE  # 16 fbank frames, one BEATs patch: 0.175 s
OPSET = 20  # the first with a Gelu op; ONNX Runtime >= 1.16 runs it
FP32_TOLERANCE = 1e-4  # max abs diff vs torch, in units of the largest output magnitude (>= 1)
INT8_MIN_COSINE = 0.99
INSTALL_HINT = "install ONNX Runtime with `pip install 'asdcli[onnx]'`"
Progress = Callable[[int], None]  # called with the number of clips just finished
_CLIP_FIELDS = (
    ("filenames", "name"),
    ("paths", "path"),
    ("machine", "machine"),
    ("section", "section"),
    ("domain", "domain"),
    ("split", "split"),
    ("label", "label"),
)  # Embeddings field, Clip attribute


class WaveformEmbedder(nn.Module):
    """16 kHz waveforms (B, N) in [-1, 1] -> ``embedder(beats_fbank(wave))``, (B, D)."""

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, waveform: Tensor) -> Tensor:
        return self.embedder(beats_fbank(waveform))


@dataclass(frozen=True)
class ExportResult:
    """What `asd export` wrote and how well ONNX Runtime reproduced the torch embeddings."""

    path: Path
    max_abs_diff: float  # ONNX vs the fp32 torch embedder on random clips
    min_cosine: float
    clips: int  # random clips compared
    meta: dict[str, Any]


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or ConfigError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ConfigError(f"ONNX Runtime is not installed: {INSTALL_HINT}.") from e
    return ort


def _onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ConfigError(f"`asd export` needs onnx and onnxscript: {INSTALL_HINT}.") from e
    return onnx


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """Math SDPA (the fused CPU kernel's output strides break the exporter's reshape) and a
    clean fbank constant cache: tracing would otherwise leave fake tensors cached in it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from asdcli.frontend import features

    features._constants.cache_clear()
    logging.disable(logging.WARNING)  # the exporter's and quantizer's advice lines, not ours to show
    try:
        with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        features._constants.cache_clear()


def _export_proto(module: nn.Module, example_seconds: float) -> Any:
    """The ONNX ModelProto of ``WaveformEmbedder(merge_lora(module))``, dynamic batch and length."""
    wrapper = WaveformEmbedder(merge_lora(module).cpu().eval()).eval()
    example = torch.zeros(2, max(MIN_SAMPLES, int(example_seconds * SAMPLE_RATE)))
    dims = {"waveform": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("samples", min=MIN_SAMPLES)}}
    with _exporting():
        program = torch.onnx.export(wrapper, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=dims, opset_version=OPSET, dynamo=True, verbose=False)  # fmt: skip
    if program is None:  # only when f= is given, which it is not
        raise ArtifactError(
            "torch.onnx.export returned no program; this torch cannot export the model (tested: torch 2.13 with onnxscript 0.7)."
        )
    return program.model_proto


def _quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantization of every MatMul with a constant weight (the Linears).

    Weights and activations uint8 (U8U8): on AVX2 CPUs without VNNI the faster signed weights
    saturate ``vpmaddubsw`` and cost accuracy (cosine 0.993 vs 0.99999, bench/int8.py).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _exporting():
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8)


def _random_clips(seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Two clips of ``seconds`` and one of a different length: the verification batches."""
    rng = np.random.default_rng(seed)
    n = max(MIN_SAMPLES, int(seconds * SAMPLE_RATE))
    other = max(MIN_SAMPLES, n // 2 + 1234)
    return [(0.1 * rng.standard_normal((2, n))).astype(np.float32),
            (0.1 * rng.standard_normal((1, other))).astype(np.float32)]  # fmt: skip


def verify_onnx(session: Any, module: nn.Module, seconds: float) -> tuple[float, float, int]:
    """(max abs diff, min cosine, clips) of the ONNX model vs the torch ``module`` on random clips."""
    diffs, cosines, count = [], [], 0
    for batch in _random_clips(seconds):
        with torch.inference_mode():
            ref = module(beats_fbank(torch.from_numpy(batch))).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        diffs.append(float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())))
        cosines.extend(cosine_rows(got, ref).tolist())
        count += len(batch)
    return max(diffs), min(cosines), count


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays, (N,)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-30)


def export_onnx(module: nn.Module, meta: Mapping[str, Any], out: Path, int8: bool = False,
                seconds: float = 10.0) -> ExportResult:  # fmt: skip
    """Export the fbank embedder ``module`` (fp32, CPU) as one waveform -> embedding ONNX model.

    Parameters
    ----------
    module : nn.Module
        Normalised fbank (B, T, 128) -> (B, D), e.g. ``embed.build_embedder``'s; LoRA is merged
        into a copy, ``module`` is unchanged.
    meta : mapping
        Front-end fields stored in the file (``asdcli`` metadata entry) and in its embeddings.
    out : Path
        Written only after the check passed, atomically (a temp file beside it, then a rename).
    int8 : bool
        Quantize the linear layers with ONNX Runtime (dynamic, U8U8) after the export.
    seconds : float
        Length of the random clips compared with ONNX Runtime (and of the tracing example).

    Raises
    ------
    ArtifactError
        ONNX Runtime's embeddings differ from torch's by more than FP32_TOLERANCE (fp32) or have
        a cosine below INT8_MIN_COSINE (int8); nothing is written then.
    """
    onnx, ort = _onnx(), onnxruntime()
    out = Path(out)
    out = through_link(out)  # as atomic_write does: the user's link stays a link
    parent = _writable_parent(out)  # before minutes of tracing
    module = module.cpu().eval()
    proto = _export_proto(module, min(seconds, 2.0))
    precision = "int8" if int8 else "fp32"
    spec = dict(meta.get(SPEC_KEY) or {})
    if spec:  # ONNX Runtime's int8 (uint8 weights) computes other numbers than torch's int8: its own precision
        spec["precision"] = ONNX_INT8 if int8 else "fp32"
    full_meta = {**meta, SPEC_KEY: spec, "precision": precision, "runtime": "onnxruntime", "input": INPUT_NAME, "output": OUTPUT_NAME,
                 "sample_rate": SAMPLE_RATE, "min_samples": MIN_SAMPLES}  # fmt: skip
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(full_meta, sort_keys=True)})
    with tempfile.TemporaryDirectory(dir=parent, prefix=temp_dir_prefix(out.name)) as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            onnx.save_model(proto, str(path))
            if int8:
                _quantize_int8(path, Path(tmp) / "model.int8.onnx")
                path = Path(tmp) / "model.int8.onnx"
        except OSError as e:  # a full disk, beside --out
            raise AsdError(
                f"Cannot write {out}: {e.strerror or e}. Free disk space or choose another output path."
            ) from e
        diff, cosine, clips = verify_onnx(_session(ort, path), module, seconds)
        if (not int8 and diff > FP32_TOLERANCE) or (int8 and cosine < INT8_MIN_COSINE):
            raise ArtifactError(
                f"The exported model does not reproduce the torch embeddings (max abs diff {diff:.2e}, "
                f"min cosine {cosine:.5f}); {out} was not written. Report this with your torch and onnx versions."
            )
        try:
            os.replace(path, out)  # same folder: atomic
        except OSError as e:
            raise AsdError(f"Cannot write {out}: {e.strerror or e}. Choose another output path.") from e
    return ExportResult(path=out, max_abs_diff=diff, min_cosine=cosine, clips=clips, meta=full_meta)


def _writable_parent(out: Path) -> Path:
    """``out``'s folder, created if needed; AsdError when it cannot be, or when ``out`` is a folder."""
    parent = out.parent if str(out.parent) else Path(".")
    check_name_length(out)
    if out.is_dir():
        raise AsdError(f"--out {out} is a folder. Choose a file name such as {out / 'model.onnx'}.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AsdError(f"Cannot create folder {parent}: {e.strerror}. Choose a writable output path.") from e
    if not os.access(parent, os.W_OK):
        raise AsdError(f"Cannot write in {parent}. Choose a writable output path.")
    return parent


def _session(ort: Any, path: Path, threads: int | None = None) -> Any:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # no warnings about unused initializers on stderr
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_onnx(path: Path, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """An ONNX Runtime session of an `asd export` model and its ``asdcli`` meta."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactNotFound(f"ONNX model {path} does not exist. Write it with `asd export --out {path}`.")
    ort = onnxruntime()
    try:
        session = _session(ort, path, threads)
    except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidProtobuf errors
        raise ArtifactError(
            f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:160]}); re-export it."
        ) from e
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if raw is None or names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ArtifactError(f"{path} is not a model written by `asd export` (no {META_KEY} metadata); re-export it.")
    return session, json.loads(raw)


def embed_clips_onnx(clips: Sequence[Clip], model: Path, audio: AudioConfig, batch_size: int | None = None,
                     progress: Progress | None = None, threads: int | None = None) -> Embeddings:  # fmt: skip
    """Embed ``clips`` with an `asd export` model in ONNX Runtime (CPU): same Embeddings as
    ``embed.embed_clips``, meta from the model plus the clip length and channel."""
    if not clips:
        raise ConfigError("No clips to embed.")
    probe_clips(clips, audio.channel)
    session, meta = load_onnx(model, threads)
    spec = spec_of(meta, str(model))
    if spec is None:
        raise ArtifactError(f"{model} does not record its front end (exported by an older asdcli); re-export it.")
    if batch_size is None:  # as asd embed's torch path on a CPU
        from asdcli.frontend.embedder import auto_batch_size

        width = int(dict(meta.get("backbone_cfg") or {}).get("encoder_embed_dim", 768))
        batch_size = auto_batch_size(torch.device("cpu"), width)
    # natural lengths differ, and int8 scales activations per call (a batch would mix clips): one at a time
    step = batch_size if audio.seconds is not None and spec.get("precision") != ONNX_INT8 else 1
    vectors = []
    for first in range(0, len(clips), step):
        batch = np.stack([load_clip(c.path, audio) for c in clips[first : first + step]]).astype(np.float32)
        vectors.append(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
        if progress is not None:
            progress(len(batch))
    meta.update({SPEC_KEY: {**spec, "clip_seconds": audio.seconds, "channel": audio.channel}, "onnx_path": str(model)})
    vectors_all = np.concatenate(vectors).astype(np.float32)
    if not np.isfinite(vectors_all).all():
        raise ArtifactError(f"The ONNX model {model} computed NaN or Inf embeddings; re-export it.")
    return Embeddings(
        vectors=vectors_all,
        **{field: np.asarray([getattr(c, attr) for c in clips], dtype=str) for field, attr in _CLIP_FIELDS},
        meta=meta,
    )
