"""Start-up cost of `asd embed`: time to the first clip, whole-process time on 8 clips, vs the forward.

Random weights of BEATs_iter3's size saved as an official-format checkpoint (361 MB), 8 synthetic
10 s clips (the demo's generator). One run measures, in this order:

- forward only: fbank + BEATs + pooling of the 8 clips in this process, model already loaded,
  in batches of `asd embed`'s CPU default (2), best of ``--iters``;
- time to first clip: wall time of ``python -m asdcli embed ONE_CLIP`` (process start, imports,
  checkpoint hash and load, the clip, the write);
- whole process: wall time of ``python -m asdcli embed`` on the 8 clips (fp32, then int8);
- pieces: ``import asdcli.cli.main`` + torch in a fresh process, and ``load_beats`` here;
- with ``--official-code DIR`` (a copy of microsoft/unilm ``beats/``, not part of this project), the
  same two whole-process times for the official code (``bench/official_embed.py``: its README's
  usage, same clips, same batch, same threads), its forward time, and the largest difference
  between its embeddings and ours. ``--official-pythonpath`` is put first on that process's
  PYTHONPATH, e.g. for a folder holding ``torchaudio/compliance/kaldi.py`` where torchaudio itself
  does not install (its releases load only with older torch).

Whole-process times are medians of ``--repeats`` runs, ours and the official code's alternating.

    python bench/startup.py [--threads 2] [--iters 2] [--repeats 3] [--official-code DIR
        [--official-pythonpath PATHS] [--official-python PY]] [--json PATH|-]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_speed import write_json
from int8 import synth_waves

from asdcli.frontend.beats import BEATs, BeatsConfig, load_beats, save_official_checkpoint
from asdcli.frontend.embedder import MeanPooledBackbone, auto_batch_size
from asdcli.frontend.features import beats_fbank

CLIPS = 8
SECONDS = 10.0


def iter3_checkpoint(path: Path) -> Path:
    """Random iter3-size weights in the official format (the cfg keys a pretrained file stores)."""
    cfg = BeatsConfig().to_dict()
    for key in ("finetuned_model", "predictor_dropout", "predictor_class"):
        cfg.pop(key)
    torch.manual_seed(0)
    save_official_checkpoint(path, BEATs(BeatsConfig.from_dict(cfg)), cfg)
    return path


def wall(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of a child process; its stderr is shown if it fails."""
    return timed_run(cmd, env)[0]


def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a child process; its stderr is shown if it fails."""
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return took, done.stdout


def forward_seconds(checkpoint: Path, waves: torch.Tensor, iters: int) -> tuple[float, float]:
    """(load_beats seconds, best forward seconds of all clips in batches of `asd embed`'s CPU default)."""
    t = time.perf_counter()
    model = MeanPooledBackbone(load_beats(checkpoint).model).eval()
    load = time.perf_counter() - t
    batch = auto_batch_size(torch.device("cpu"))
    best = float("inf")
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            for start in range(0, len(waves), batch):
                model(beats_fbank(waves[start : start + batch]))
            best = min(best, time.perf_counter() - t)
    return load, best


def official_env(env: dict[str, str], pythonpath: str | None) -> dict[str, str]:
    """The official process's environment: ours, with ``pythonpath`` first and no asdcli on the path."""
    official = dict(env)
    official["PYTHONPATH"] = pythonpath or ""
    return official


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the children (0: default)")
    parser.add_argument("--iters", type=int, default=2, help="forward-only repetitions (best is kept)")
    parser.add_argument("--repeats", type=int, default=3, help="whole-process repetitions (median is kept)")
    parser.add_argument("--official-code", type=Path, help="folder with the official BEATs.py, backbone.py, modules.py")
    parser.add_argument("--official-pythonpath", help="PYTHONPATH of the official process (e.g. a torchaudio copy)")
    parser.add_argument("--official-python", default=sys.executable, help="Python for the official code")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args()
    if args.official_code is not None and not (args.official_code / "BEATs.py").is_file():
        parser.error(f"--official-code {args.official_code} holds no BEATs.py (a copy of microsoft/unilm beats/)")
    env = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    out = sys.stderr if args.json else sys.stdout
    median = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = iter3_checkpoint(work / "iter3_random.pt")
        waves = synth_waves(CLIPS, SECONDS)
        clips = work / "clips"
        clips.mkdir()
        for i, w in enumerate(waves.numpy()):
            sf.write(clips / f"section_00_source_test_normal_{i:04d}_a_0.wav", w, 16000, subtype="PCM_16")
        paths = [str(c) for c in sorted(clips.iterdir())]
        load, forward = forward_seconds(ckpt, waves, args.iters)
        embed = [sys.executable, "-m", "asdcli", "embed", "--checkpoint", str(ckpt), "--device", "cpu"]
        ours_cmd = [*embed, str(clips), "--out", str(work / "all.npz")]
        ours_first_cmd = [*embed, paths[0], "--out", str(work / "one.npz")]
        official = []
        if args.official_code is not None:
            driver = [args.official_python, str(Path(__file__).resolve().parent / "official_embed.py"),
                      "--official-code", str(args.official_code), "--checkpoint", str(ckpt),
                      "--batch-size", str(auto_batch_size(torch.device("cpu")))]  # fmt: skip
            official_cmd = [*driver, "--out", str(work / "official.npy"), *paths]
            official_first_cmd = [*driver, "--out", str(work / "official_one.npy"), paths[0]]
            off_env = official_env(env, args.official_pythonpath)
        whole, first, off_whole, off_first, off_forward = [], [], [], [], []
        for _ in range(args.repeats):
            first.append(wall(ours_first_cmd, env))
            whole.append(wall(ours_cmd, env))
            if args.official_code is not None:
                off_first.append(wall(official_first_cmd, off_env))
                took, stdout = timed_run(official_cmd, off_env)
                off_whole.append(took)
                off_forward.append(json.loads(stdout.strip().splitlines()[-1])["forward_s"])
        whole_int8 = wall([*embed, str(clips), "--precision", "int8", "--out", str(work / "int8.npz")], env)
        imports = wall([sys.executable, "-c", "import torch, asdcli.cli.main"], env)
        if args.official_code is not None:
            ours_emb = np.load(work / "all.npz", allow_pickle=False)["embeddings"]
            official = np.load(work / "official.npy", allow_pickle=False)
    result = {"benchmark": "startup", "torch": torch.__version__, "threads": torch.get_num_threads(), "clips": CLIPS,
              "clip_seconds": SECONDS, "repeats": args.repeats, "forward_s": forward, "load_beats_s": load,
              "first_clip_s": median(first), "whole_process_s": median(whole), "whole_process_int8_s": whole_int8,
              "import_s": imports, "whole_over_forward": median(whole) / forward,
              "overhead_s": median(whole) - forward}  # fmt: skip
    print(
        f"forward only, {CLIPS} x {SECONDS:.0f} s clips (model loaded, asd embed's batches): {forward:.2f} s", file=out
    )
    print(f"time to first clip (`asd embed` on 1 clip, whole process): {median(first):.2f} s", file=out)
    print(f"whole process `asd embed` on {CLIPS} clips: {median(whole):.2f} s fp32 = "
          f"{median(whole) / forward:.2f}x the forward (overhead {median(whole) - forward:.2f} s); "
          f"int8 {whole_int8:.2f} s", file=out)  # fmt: skip
    print(f"pieces: import torch + asdcli.cli.main {imports:.2f} s (fresh process), load_beats {load:.2f} s", file=out)
    if args.official_code is None:
        print("official BEATs code: not compared (--official-code DIR to compare)", file=out)
    else:
        diff = float(np.abs(ours_emb - official).max())
        result |= {"official_first_clip_s": median(off_first), "official_whole_process_s": median(off_whole),
                   "official_forward_s": median(off_forward), "official_max_abs_diff": diff,
                   "whole_process_speedup": median(off_whole) / median(whole),
                   "first_clip_speedup": median(off_first) / median(first),
                   "forward_speedup": median(off_forward) / forward}  # fmt: skip
        print(f"official code: first clip {median(off_first):.2f} s, whole process {median(off_whole):.2f} s, "
              f"its forward {median(off_forward):.2f} s", file=out)  # fmt: skip
        print(f"asdcli vs official: whole process {result['whole_process_speedup']:.2f}x, first clip "
              f"{result['first_clip_speedup']:.2f}x, forward {result['forward_speedup']:.2f}x faster; "
              f"embeddings max abs diff {diff:.1e}", file=out)  # fmt: skip
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
