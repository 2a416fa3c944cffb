"""int8 vs fp32 embedding on CPU: speed at iter3 size, per-clip cosine, official-score difference.

One run, three parts (every ratio from the same run):

1. Speed: fbank + BEATs (random weights of BEATs_iter3's size) + mean pooling on ``--batch-size``
   10 s clips, fp32 vs ``--precision int8`` (torch dynamic int8 of the transformer linears),
   interleaved (fp32, int8, fp32, ...) so that a noisy neighbour slows both alike; best of
   ``--iters``. With ``--onnx`` also ONNX Runtime fp32 and its int8 variants (the exported model);
   with ``--bf16`` (the default where the CPU has AVX-512 BF16 or AMX) torch bf16 autocast.
2. Cosine of int8 vs fp32 embeddings on every clip of a synthetic 10 s set at iter3 size.
3. Official score on the synthetic dataset (the demo's, 2 s clips) with the demo's tiny random
   BEATs: fp32 bank + fp32 test, int8 bank + int8 test, fp32 bank + int8 test (mixing).

    python bench/int8.py [--batch-size 2] [--iters 3] [--threads 2] [--onnx] [--[no-]bf16] [--json PATH|-]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_speed import write_json

from asdcli.frontend.beats import BEATs, BeatsConfig
from asdcli.frontend.embedder import MeanPooledBackbone
from asdcli.frontend.export import cosine_rows
from asdcli.frontend.features import beats_fbank
from asdcli.frontend.quantize import for_precision

SR = 16000


def synth_waves(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """``n`` clips of the demo dataset's generator (train and test, every machine), (n, samples)."""
    from asdcli.synth.dataset import SynthConfig, _plan
    from asdcli.synth.sounds import render_clip

    cfg = SynthConfig(seed=seed, seconds=seconds)
    plans = [(m, kw) for m in cfg.machines for _, kw in _plan(cfg, m)]
    picks = np.linspace(0, len(plans) - 1, n).round().astype(int)
    return torch.from_numpy(np.stack([render_clip(cfg, plans[i][0], **plans[i][1]) for i in picks]).astype(np.float32))


def interleaved_best(runs: dict[str, Callable[[], object]], iters: int) -> dict[str, float]:
    """Best wall seconds of each callable over ``iters`` rounds, the callables interleaved per round."""
    for fn in runs.values():
        fn()  # warm-up
    best = {name: float("inf") for name in runs}
    for _ in range(iters):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def onnx_runs(model: torch.nn.Module, wave: np.ndarray, work: Path, threads: int) -> dict[str, Callable[[], object]]:
    """ONNX Runtime sessions of the exported model: fp32, int8 U8U8 (asd export --int8), int8 U8S8
    (the int8 ones one clip per call, as asd embed --onnx runs them)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from asdcli.frontend.export import _export_proto, _exporting, _session, onnxruntime

    ort = onnxruntime()
    onnx.save_model(_export_proto(model, 2.0), str(work / "fp32.onnx"))
    with _exporting():
        quantize_dynamic(
            work / "fp32.onnx", work / "u8u8.onnx", op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8
        )
        quantize_dynamic(
            work / "fp32.onnx", work / "u8s8.onnx", op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8
        )
    runs = {}
    for name in ("fp32", "u8u8", "u8s8"):
        session = _session(ort, work / f"{name}.onnx", threads)
        if name == "fp32":
            runs[f"onnx {name}"] = lambda s=session: s.run(["embeddings"], {"waveform": wave})[0]
        else:  # as asd embed --onnx runs an int8 model: one clip per call
            runs[f"onnx {name}"] = lambda s=session: np.concatenate(
                [s.run(["embeddings"], {"waveform": wave[i : i + 1]})[0] for i in range(len(wave))]
            )
    return runs


def speed_and_cosine(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    fp32 = MeanPooledBackbone(BEATs(BeatsConfig())).eval()
    int8 = for_precision(fp32, "int8", torch.device("cpu"))  # as asd embed runs it: one clip per call
    wave = synth_waves(args.batch_size, 10.0, seed=100)
    runs: dict[str, Callable[[], object]] = {"torch fp32": lambda: fp32(beats_fbank(wave)),
                                             "torch int8": lambda: int8(beats_fbank(wave))}  # fmt: skip
    if args.bf16:

        def bf16_autocast() -> torch.Tensor:
            features = beats_fbank(wave)  # the fbank stays fp32, as under asd's own autocast
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fp32(features).float()

        runs["torch bf16 autocast"] = bf16_autocast
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        if args.onnx:
            runs.update(onnx_runs(fp32, wave.numpy(), Path(tmp), torch.get_num_threads()))
        outputs = {name: np.asarray(fn()) for name, fn in runs.items()}
        best = interleaved_best(runs, args.iters)
        clips = synth_waves(args.cosine_clips, 10.0, seed=0)
        ref = torch.cat([fp32(beats_fbank(c[None])) for c in clips]).numpy()
        got = torch.cat([int8(beats_fbank(c[None])) for c in clips]).numpy()
    cos = cosine_rows(got, ref)
    ref_out = outputs["torch fp32"]
    variants = {name: {"s_per_clip": t / args.batch_size, "speedup_vs_torch_fp32": best["torch fp32"] / t,
                       "min_cosine_vs_torch_fp32": float(cosine_rows(np.asarray(outputs[name]), ref_out).min())}
                for name, t in best.items()}  # fmt: skip
    return {"variants": variants, "cosine_clips": len(cos), "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean())}  # fmt: skip


def official_scores(seed: int) -> dict[str, float]:
    """Official score of the demo dataset with the tiny random BEATs for each precision pairing."""
    from asdcli.backend.bank_fit import fit_banks
    from asdcli.backend.score import write_submission
    from asdcli.data.dataset import discover_clips
    from asdcli.evaluate.ground_truth import ground_truth_from_data
    from asdcli.evaluate.report import evaluate_submission
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
    from asdcli.frontend.embed import embed_clips
    from asdcli.frontend.embedder import EmbedConfig
    from asdcli.synth.dataset import SynthConfig, make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root, ckpt = Path(tmp) / "data", make_tiny_checkpoint(Path(tmp) / "tiny.pt", seed=seed)
        make_dataset(root, SynthConfig(seed=seed))
        clips = discover_clips([root], splits={"train", "test"})
        emb = {p: embed_clips(clips, EmbedConfig(checkpoint=ckpt, seconds=2.0, device="cpu", precision=p))
               for p in ("fp32", "int8")}  # fmt: skip
        truth = ground_truth_from_data(root)

        def score(bank: str, test: str) -> float:
            banks = fit_banks(emb[bank].select(emb[bank].split == "train"))
            out = Path(tmp) / f"sub-{bank}-{test}"
            rows = emb[test].select(emb[test].split == "test")
            if test != bank:  # asd score refuses the mix (precision is in the front-end record): measured as if allowed
                rows = dataclasses.replace(rows, meta=emb[bank].meta)
            write_submission(banks, rows, out)
            return 100 * evaluate_submission(out, truth).official_score

        scores = {f"bank {b}, test {t}": score(b, t) for b, t in (("fp32", "fp32"), ("int8", "int8"), ("fp32", "int8"))}
        scores["tiny_min_cosine"] = float(cosine_rows(emb["int8"].vectors, emb["fp32"].vectors).min())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cosine-clips", type=int, default=8, help="10 s clips for the iter3 cosine")
    parser.add_argument(
        "--onnx", action="store_true", help="also time ONNX Runtime fp32 and int8 (needs the onnx extra)"
    )
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch bf16 autocast (default: where the CPU has AVX-512 BF16 or AMX)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset and tiny model (score part)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = sys.stderr if args.json else sys.stdout
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    result: dict[str, object] = {"benchmark": "int8", "torch": torch.__version__, "threads": torch.get_num_threads(),
                                 "machine": platform.processor() or platform.machine(), "cpu_bf16": bf16,
                                 "batch_size": args.batch_size, "iters": args.iters}  # fmt: skip
    if args.bf16 is None:
        args.bf16 = bf16
    result.update(speed_and_cosine(args))
    for name, v in result["variants"].items():  # type: ignore[union-attr]
        print(f"{name:12s} {v['s_per_clip']:.3f} s/clip  {v['speedup_vs_torch_fp32']:.2f}x torch fp32  "
              f"min cosine {v['min_cosine_vs_torch_fp32']:.5f}", file=out)  # fmt: skip
    print(f"iter3 int8 vs fp32 cosine over {result['cosine_clips']} synthetic 10 s clips: min "
          f"{result['cosine_min']:.5f}, mean {result['cosine_mean']:.5f}", file=out)  # fmt: skip
    result["official_score"] = official_scores(args.seed)
    for name, v in result["official_score"].items():  # type: ignore[union-attr]
        print(f"tiny model, synthetic dataset: {name}: {v:.4f}", file=out)
    print(f"CPU has AVX-512 BF16 / AMX: {bf16}" + ("" if args.bf16 else " (bf16 autocast not measured)"), file=out)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
