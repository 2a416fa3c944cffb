"""Peak memory of `asd score --window` against the recording's length: flat, not proportional.

    python bench/long_recording_memory.py                  # 1, 10, 60 min at 44.1 kHz (~2 min on 2 cores)
    python bench/long_recording_memory.py --minutes 1 5    # quicker

Each recording (pink-ish noise plus a drifting tone, 16-bit WAV at 44.1 kHz, so it is resampled
block-wise too) is written in blocks and scored by `python -m asdcli score --window 10` in its own
process with a tiny random BEATs; the peak resident set size of that process comes from
``os.wait4``. A whole-file reader would need 4 bytes per sample at 44.1 kHz (about 635 MB per hour)
before resampling; the table shows what the streamed one needs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATE = 44100


def write_recording(path: Path, minutes: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", RATE, 1, subtype="PCM_16") as f:
        done, total = 0, round(minutes * 60 * RATE)
        while done < total:
            n = min(RATE * 30, total - done)
            t = (done + np.arange(n)) / RATE
            f.write(0.05 * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * (120 + 5 * np.sin(t / 60)) * t))
            done += n


def make_bank(tmp: Path) -> Path:
    from asdcli.artifacts import save_embeddings
    from asdcli.backend.bank import save_bank
    from asdcli.backend.bank_fit import fit_bank
    from asdcli.data.dataset import discover_clips
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint
    from asdcli.frontend.embed import embed_clips
    from asdcli.frontend.embedder import EmbedConfig

    ckpt = make_tiny_checkpoint(tmp / "tiny.pt", seed=0)
    for i in range(4):
        write_recording(tmp / f"data/m/train/section_00_source_train_normal_{i:04d}_x.wav", 10 / 60, seed=100 + i)
    emb = embed_clips(discover_clips([tmp / "data"]), EmbedConfig(checkpoint=ckpt, seconds=10.0, device="cpu"))
    save_embeddings(tmp / "train.npz", emb)
    save_bank(tmp / "bank.npz", fit_bank(emb))
    return tmp / "bank.npz"


def peak_rss_mib(argv: list[str]) -> tuple[float, float, int]:
    """Run argv; (peak RSS MiB, wall seconds, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asd-long-bench-") as name:
        tmp = Path(name)
        (tmp / "data/m/train").mkdir(parents=True)
        bank = make_bank(tmp)
        print("| recording | file MB | peak RSS MiB | wall s | real time / wall |")
        print("| --- | --- | --- | --- | --- |")
        for minutes in args.minutes:
            rec = tmp / "rec.wav"
            write_recording(rec, minutes)
            argv = [
                sys.executable,
                "-m",
                "asdcli",
                "score",
                "--bank",
                str(bank),
                str(rec),
                "--window",
                "10",
                "--device",
                "cpu",
            ]
            rss, wall, code = peak_rss_mib(argv)
            if code != 0:
                raise SystemExit(f"asd score failed on the {minutes:g} min recording (exit {code})")
            print(
                f"| {minutes:g} min | {rec.stat().st_size / 1e6:.0f} | {rss:.0f} | {wall:.1f} | {minutes * 60 / wall:.0f}x |"
            )
            rec.unlink()


if __name__ == "__main__":
    main()
