"""Speed of `asd embed`'s forward (fbank + BEATs + mean pooling) on 10 s clips, vs this CPU's matmul peak.

Random weights of BEATs_iter3's size (nothing is downloaded). Reports clips/s, the same run's
fp32 matmul GFLOP/s (a large torch.mm), the fraction of that peak the model reaches
(98.7 GFLOPs per 10 s clip, spec/beats.md section 5) and the peak RSS.

    python bench/embed_speed.py [--batch-size 2] [--iters 3] [--threads N] [--json PATH|-]

With ``--json PATH`` the results are also written to PATH as JSON (``-``: stdout) and the
human-readable lines go to stderr.
"""

from __future__ import annotations

import argparse
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


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an (n, n) @ (n, n) torch.mm."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def embed_seconds(model: torch.nn.Module, batch: int, iters: int) -> list[float]:
    """Wall seconds per iteration of fbank + forward + pooling on ``batch`` random 10 s clips."""
    wave = torch.randn(batch, SAMPLES).clamp(-3, 3) * 0.1
    times = []
    with torch.inference_mode():
        model(beats_fbank(wave))  # warm-up (allocator, bucket cache)
        for _ in range(iters):
            t = time.perf_counter()
            model(beats_fbank(wave))
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MeanPooledBackbone(BEATs(BeatsConfig())).eval()
    peak_before = matmul_gflops()
    times = embed_seconds(model, args.batch_size, args.iters)
    peak_after = matmul_gflops()
    peak = max(peak_before, peak_after)
    per_clip = min(times) / args.batch_size
    achieved = GFLOP_PER_CLIP / per_clip
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    out = sys.stderr if args.json else sys.stdout
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.iters} iters",
        file=out,
    )
    print(f"forward (fbank + BEATs iter3 + pooling), 10 s clips: {per_clip:.3f} s/clip = {1 / per_clip:.2f} clips/s "
          f"(best of {args.iters}; all: {', '.join(f'{t:.2f}' for t in times)} s per batch)", file=out)  # fmt: skip
    print(
        f"fp32 matmul peak (2048^3 torch.mm): {peak:.1f} GFLOP/s (before {peak_before:.1f}, after {peak_after:.1f})",
        file=out,
    )
    print(f"model: {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the matmul peak", file=out)
    print(f"peak RSS: {rss_mb:.0f} MiB", file=out)
    if args.json:
        result = {
            "benchmark": "embed",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
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
            "peak_rss_mib": rss_mb,
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
