"""Step time and peak memory of LoRA vs full fine-tuning (without and with layer-wise lr decay)
at BEATs_iter3 size, same run.

    python bench/finetune_speed.py                          # 2 s clips, batch 2, 3 timed steps, cpu/cuda
    python bench/finetune_speed.py --seconds 10 --batch-size 8 --device cuda --mixed-precision bf16
    python bench/finetune_speed.py --json finetune.json    # also write the results as JSON ('-': stdout)

Random iter3-size weights (12 layers, 768 wide, pretrained cfg); the training step is asdcli's own
(``trainer.train_step``: fp32 fbank, forward under autocast, AAM loss, backward, Adam step).
LoRA: rank ``--rank`` on q/k/v, backbone frozen. Full: every backbone weight trains too
(`asd finetune --full-finetune`). Full+decay: the same with ``--layer-decay`` (14 Adam parameter
groups, one per depth; the same memory, a check that the groups cost no step time).

Each mode runs in its own child process so the memory figures do not mix. Peak memory is above the
child's baseline before the model is built, so it counts weights, gradients, Adam state and
activations: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the peak resident set size
(VmHWM, reset through /proc/self/clear_refs). Prints a Markdown table on stdout; with ``--json PATH``
the table goes to stderr and the results to PATH as JSON (``-``: stdout).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue as queue_mod
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_mode(mode: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch

    from asdcli.finetune.config import FinetuneConfig
    from asdcli.finetune.model import build_model
    from asdcli.finetune.trainer import Processes, make_trainer, train_step
    from asdcli.frontend.beats import BEATs, BeatsConfig

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    wave = torch.randn(args.batch_size, int(args.seconds * 16000)).mul(0.1).to(device)
    labels = torch.arange(args.batch_size).remainder(7).to(device)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mib("VmRSS")
        _reset_peak_rss()
    full = mode != "lora"
    cfg = FinetuneConfig(
        checkpoint=Path("unused"),
        lora_rank=args.rank,
        lora_alpha=float(args.rank),
        mixed_precision=args.mixed_precision,
        full_finetune=full,
        layer_decay=args.layer_decay if mode == "full+decay" else 1.0,
    )
    model = build_model(BEATs(BeatsConfig()), 768, 7, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = make_trainer(model, cfg, Processes(rank=0, world=1, device=device), n_layers=12)
    model.train()
    times = []
    for step in range(args.steps + 1):  # the first step is warm-up (allocations, kernels)
        t0 = time.perf_counter()
        train_step(trainer, wave, labels, cfg)
        if cuda:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _rss_mib("VmHWM") - base
    queue.put(
        {
            "mode": mode,
            "trainable": sum(p.numel() for p in params),
            "step_s": min(times),
            "peak_mib": peak,
            "device": str(device),
            "groups": len(trainer.optimizer.param_groups),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layer-decay", type=float, default=0.75, help="decay of the full+decay row")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for mode in ("lora", "full", "full+decay"):
        queue = ctx.Queue()
        proc = ctx.Process(target=run_mode, args=(mode, args, queue))
        proc.start()
        results.append(_result_of(proc, queue, mode))
        proc.join()
    b = args.batch_size
    out = sys.stderr if args.json else sys.stdout
    print(
        f"BEATs iter3 size, random weights, {args.seconds:g} s clips, batch {b}, {results[0]['device']}, "
        f"mixed precision {args.mixed_precision}, best of {args.steps} steps\n",
        file=out,
    )
    print("| mode | trainable params | step (s) | s / clip | peak MiB | peak MiB / clip |", file=out)
    print("|---|---|---|---|---|---|", file=out)
    for r in results:
        print(
            f"| {r['mode']} | {r['trainable']:,} | {r['step_s']:.3f} | {r['step_s'] / b:.3f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / b:.0f} |",
            file=out,
        )
    lora, full = results[0], results[1]
    print(
        f"\nLoRA / full: peak memory {lora['peak_mib'] / full['peak_mib']:.2f}x (target <= 0.6x), "
        f"step time {lora['step_s'] / full['step_s']:.2f}x",
        file=out,
    )
    if not args.json:
        print(json.dumps(results), file=sys.stderr)
        return
    result = {
        "benchmark": "finetune",
        "seconds": args.seconds,
        "batch_size": b,
        "steps": args.steps,
        "rank": args.rank,
        "layer_decay": args.layer_decay,
        "mixed_precision": args.mixed_precision,
        "device": lora["device"],
        "modes": {r["mode"]: r for r in results},
        "step_ratio": lora["step_s"] / full["step_s"],
        "memory_ratio": lora["peak_mib"] / full["peak_mib"],
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        Path(args.json).write_text(text)


def _result_of(proc: mp.process.BaseProcess, queue: mp.Queue, mode: str) -> dict:
    """The child's result, or SystemExit if it dies first (killed for memory, crashed) instead of waiting forever."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_mod.Empty:
            if not proc.is_alive():
                try:  # it may have put its result just before exiting
                    return queue.get(timeout=1.0)
                except queue_mod.Empty:
                    raise SystemExit(
                        f"finetune_speed: the {mode} child exited with code {proc.exitcode} before reporting"
                    ) from None


if __name__ == "__main__":
    main()
