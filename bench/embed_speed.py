"""Speed of `asd embed`'s forward (fbank + BEATs + mean pooling) on 10 s clips, vs this machine's matmul peak.

Random weights of BEATs_iter3's size (nothing is downloaded). Reports clips/s, the same run's
fp32 matmul GFLOP/s (a large torch.mm on the same device), the fraction of that peak the model
reaches (98.7 GFLOPs per 10 s clip, spec/beats.md section 5) and the peak memory (CPU: the
process's peak RSS; CUDA: the peak memory torch allocated).

    python bench/embed_speed.py [--batch-size 2] [--iters 3] [--threads N] [--device cpu|cuda|auto]
        [--autocast none|bf16|fp16] [--json PATH|-]

``--autocast`` (CUDA only) runs the model under torch autocast, as fine-tuning with
``--mixed-precision`` does; the peak it is compared with stays the fp32 one. On CUDA the default
batch is 16 and TF32 stays off (torch's default), so the fp32 figures are fp32.
With ``--json PATH`` the results are also written to PATH as JSON (``-``: stdout) and the
human-readable lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time

import torch

from asdcli.frontend.beats import BEATs, BeatsConfig
from asdcli.frontend.embedder import MeanPooledBackbone
from asdcli.frontend.features import beats_fbank

GFLOP_PER_CLIP = 98.7  # iter3 forward of one 10 s clip (496 tokens), 2 FLOPs per multiply-add
SAMPLES = 160_000  # 10 s at 16 kHz
AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 2048, reps: int = 5, device: torch.device | None = None) -> float:
    """Best fp32 GFLOP/s of an (n, n) @ (n, n) torch.mm on ``device`` (CPU by default)."""
    device = device or torch.device("cpu")
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def embed_seconds(model: torch.nn.Module, batch: int, iters: int, autocast: torch.dtype | None = None) -> list[float]:
    """Wall seconds per iteration of fbank + forward + pooling on ``batch`` random 10 s clips
    (on the model's device, under autocast to ``autocast`` if given)."""
    device = next(model.parameters()).device
    wave = (torch.randn(batch, SAMPLES).clamp(-3, 3) * 0.1).to(device)
    cast = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    times = []
    with torch.inference_mode(), cast:
        model(beats_fbank(wave))  # warm-up (allocator, bucket cache, kernel selection)
        _sync(device)
        for _ in range(iters):
            t = time.perf_counter()
            model(beats_fbank(wave))
            _sync(device)
            times.append(time.perf_counter() - t)
    return times


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("embed_speed.py: --device cuda, but torch sees no CUDA device")
    return torch.device(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=0, help="clips per batch (0: 2 on CPU, 16 on CUDA)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    parser.add_argument("--autocast", choices=list(AUTOCAST), default="none", help="CUDA only")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args()
    device = _device(args.device)
    if args.autocast != "none" and device.type != "cuda":
        parser.error("--autocast is for --device cuda (bf16 on CPU: bench/int8.py --bf16)")
    batch = args.batch_size or (16 if device.type == "cuda" else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MeanPooledBackbone(BEATs(BeatsConfig())).eval().to(device)
    n = 4096 if device.type == "cuda" else 2048
    peak_before = matmul_gflops(n, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = embed_seconds(model, batch, args.iters, AUTOCAST[args.autocast])
    peak_after = matmul_gflops(n, device=device)
    peak = max(peak_before, peak_after)
    per_clip = min(times) / batch
    achieved = GFLOP_PER_CLIP / per_clip
    if device.type == "cuda":
        memory_mb, memory_kind = torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
        where = torch.cuda.get_device_name(device)
    else:  # ru_maxrss is in KiB on Linux
        memory_mb, memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process RSS"
        where = f"{torch.get_num_threads()} threads"
    cast = "" if args.autocast == "none" else f", {args.autocast} autocast"
    out = sys.stderr if args.json else sys.stdout
    print(f"torch {torch.__version__}, {device.type} ({where}){cast}, batch {batch}, {args.iters} iters", file=out)
    print(f"forward (fbank + BEATs iter3 + pooling), 10 s clips: {per_clip:.4f} s/clip = {1 / per_clip:.2f} clips/s "
          f"(best of {args.iters}; all: {', '.join(f'{t:.3f}' for t in times)} s per batch)", file=out)  # fmt: skip
    print(
        f"fp32 matmul peak ({n}^3 torch.mm): {peak:.1f} GFLOP/s (before {peak_before:.1f}, after {peak_after:.1f})",
        file=out,
    )
    print(f"model: {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the fp32 matmul peak", file=out)
    print(f"peak memory ({memory_kind}): {memory_mb:.0f} MiB", file=out)
    if args.json:
        result = {
            "benchmark": "embed",
            "torch": torch.__version__,
            "device": device.type,
            "device_name": where,
            "autocast": args.autocast,
            "threads": torch.get_num_threads(),
            "batch_size": batch,
            "iters": args.iters,
            "clip_seconds": SAMPLES / 16_000,
            "gflop_per_clip": GFLOP_PER_CLIP,
            "batch_seconds": times,
            "s_per_clip": per_clip,
            "clips_per_s": 1 / per_clip,
            "model_gflops": achieved,
            "matmul_gflops": peak,
            "matmul_gflops_before": peak_before,
            "matmul_gflops_after": peak_after,
            "pct_of_peak": 100 * achieved / peak,
            "peak_rss_mib": memory_mb,
            "peak_memory_kind": memory_kind,
        }
        write_json(result, args.json)


def write_json(obj: object, path: str) -> None:
    """``obj`` as indented JSON to ``path``, or to stdout when ``path`` is ``-``."""
    text = json.dumps(obj, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
