"""Start-up cost of `asd embed`: time to the first clip, whole-process time on 8 clips, vs the forward.

Random weights of BEATs_iter3's size saved as an official-format checkpoint (361 MB), 8 synthetic
10 s clips (the demo's generator). One run measures, in this order:

- forward only: fbank + BEATs + pooling of the 8 clips in this process, model already loaded,
  batch 8 (what `asd embed` does per batch), best of ``--iters``;
- time to first clip: wall time of ``python -m asdcli embed ONE_CLIP`` (process start, imports,
  checkpoint hash and load, the clip, the write);
- whole process: wall time of ``python -m asdcli embed`` on the 8 clips (fp32, then int8);
- pieces: ``import asdcli.cli.main`` + torch in a fresh process, and ``load_beats`` here.

The official BEATs code is not part of this project, so there is no comparison with it here.

    python bench/startup.py [--threads 2] [--iters 2] [--json PATH|-]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_speed import write_json
from int8 import synth_waves

from asdcli.frontend.beats import BEATs, BeatsConfig, load_beats, save_official_checkpoint
from asdcli.frontend.embed import MeanPooledBackbone
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
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return took


def forward_seconds(checkpoint: Path, waves: torch.Tensor, iters: int) -> tuple[float, float]:
    """(load_beats seconds, best forward seconds of all clips in one batch)."""
    t = time.perf_counter()
    model = MeanPooledBackbone(load_beats(checkpoint).model).eval()
    load = time.perf_counter() - t
    best = float("inf")
    with torch.inference_mode():
        for _ in range(iters):
            t = time.perf_counter()
            model(beats_fbank(waves))
            best = min(best, time.perf_counter() - t)
    return load, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the children (0: default)")
    parser.add_argument("--iters", type=int, default=2, help="forward-only repetitions (best is kept)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    out = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = iter3_checkpoint(work / "iter3_random.pt")
        waves = synth_waves(CLIPS, SECONDS)
        clips = work / "clips"
        clips.mkdir()
        for i, w in enumerate(waves.numpy()):
            sf.write(clips / f"section_00_source_test_normal_{i:04d}_a_0.wav", w, 16000, subtype="PCM_16")
        load, forward = forward_seconds(ckpt, waves, args.iters)
        embed = [sys.executable, "-m", "asdcli", "embed", "--checkpoint", str(ckpt), "--device", "cpu"]
        first = wall([*embed, str(sorted(clips.iterdir())[0]), "--out", str(work / "one.npz")], env)
        whole = wall([*embed, str(clips), "--out", str(work / "all.npz")], env)
        whole_int8 = wall([*embed, str(clips), "--precision", "int8", "--out", str(work / "int8.npz")], env)
        imports = wall([sys.executable, "-c", "import torch, asdcli.cli.main"], env)
    result = {"benchmark": "startup", "torch": torch.__version__, "threads": torch.get_num_threads(), "clips": CLIPS,
              "clip_seconds": SECONDS, "forward_s": forward, "load_beats_s": load, "first_clip_s": first,
              "whole_process_s": whole, "whole_process_int8_s": whole_int8, "import_s": imports,
              "whole_over_forward": whole / forward, "overhead_s": whole - forward}  # fmt: skip
    print(f"forward only, {CLIPS} x {SECONDS:.0f} s clips (model loaded, batch {CLIPS}): {forward:.2f} s", file=out)
    print(f"time to first clip (`asd embed` on 1 clip, whole process): {first:.2f} s", file=out)
    print(f"whole process `asd embed` on {CLIPS} clips: {whole:.2f} s fp32 = {whole / forward:.2f}x the forward "
          f"(overhead {whole - forward:.2f} s); int8 {whole_int8:.2f} s", file=out)  # fmt: skip
    print(f"pieces: import torch + asdcli.cli.main {imports:.2f} s (fresh process), load_beats {load:.2f} s", file=out)
    print("official BEATs code: not available in this project, not compared", file=out)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
