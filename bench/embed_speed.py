"""Speed of `asd embed`'s forward (fbank + BEATs + mean pooling) on 10 s clips, vs this CPU's matmul peak.

Random weights of BEATs_iter3's size (nothing is downloaded). Reports clips/s, the same run's
fp32 matmul GFLOP/s (a large torch.mm), the fraction of that peak the model reaches
(98.7 GFLOPs per 10 s clip, spec/beats.md section 5) and the peak RSS.

    python bench/embed_speed.py [--batch-size 2] [--iters 3] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from asdcli.embed import MeanPooledBackbone
from asdcli.features import beats_fbank
from asdcli.model.beats import BEATs, BeatsConfig

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
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.iters} iters")
    print(f"forward (fbank + BEATs iter3 + pooling), 10 s clips: {per_clip:.3f} s/clip = {1 / per_clip:.2f} clips/s "
          f"(best of {args.iters}; all: {', '.join(f'{t:.2f}' for t in times)} s per batch)")  # fmt: skip
    print(f"fp32 matmul peak (2048^3 torch.mm): {peak:.1f} GFLOP/s (before {peak_before:.1f}, after {peak_after:.1f})")
    print(f"model: {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the matmul peak")
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
