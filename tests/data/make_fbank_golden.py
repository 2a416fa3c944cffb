"""Make ``fbank_golden.npz``: torchaudio's Kaldi fbank of a few synthetic signals (the test oracle).

torchaudio is not a project dependency. Run this in a scratch venv that has torch and torchaudio's
pure-Python ``compliance/kaldi.py`` (torchaudio 2.11's compiled extension does not load with torch
2.13; delete ``torchaudio/lib/*.so`` and import still works)::

    python3 -m venv /tmp/ta && /tmp/ta/bin/pip install torch==2.13.0
    /tmp/ta/bin/pip install --no-deps torchaudio==2.11.0 && rm /tmp/ta/lib/python3*/site-packages/torchaudio/lib/*.so
    /tmp/ta/bin/python tests/data/make_fbank_golden.py

The input signals are not stored: ``make_signals()`` regenerates them (tests import it). Only every
``FRAME_STRIDE``-th frame of the outputs is stored, in float64 and float32, to keep the file small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 16000
FRAME_STRIDE = 16
OUT = Path(__file__).with_name("fbank_golden.npz")
# A trimmed copy of the shared fixture (fbank frames are local, so a slice of the wave suffices).
FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "beats_tiny.npz"  # ../shared beside the repo
FIXTURE_OUT = Path(__file__).with_name("beats_tiny_fbank_trim.npz")
FIRST_FRAME, N_FRAMES = 400, 50


def make_signals() -> dict[str, np.ndarray]:
    """Deterministic float64 test signals in [-1, 1] at 16 kHz."""
    rng = np.random.default_rng(20251128)
    t6 = np.arange(6 * SR) / SR
    t10 = np.arange(10 * SR) / SR
    return {
        "sine_6s": 0.5 * np.sin(2 * np.pi * 1000.0 * t6),
        "noise_10s": np.clip(0.1 * rng.standard_normal(10 * SR), -1.0, 1.0),
        "silence_6s": np.zeros(6 * SR),
        "clipped_10s": np.clip(3.0 * np.sin(2 * np.pi * 440.0 * t10) + 0.01 * rng.standard_normal(10 * SR), -1, 1),
        "chirp_odd": np.sin(2 * np.pi * (100.0 + 3000.0 * t6[: SR + 437]) * t6[: SR + 437]) * 0.3,
    }


def main() -> None:
    import torch
    from torchaudio.compliance import kaldi

    out: dict[str, np.ndarray] = {}
    for name, x in make_signals().items():
        for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
            wave = torch.from_numpy(x).to(dtype).unsqueeze(0) * 32768.0
            fb = kaldi.fbank(wave, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)
            out[f"{name}/{tag}"] = fb[::FRAME_STRIDE].numpy()
    np.savez_compressed(OUT, frame_stride=np.asarray(FRAME_STRIDE), **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    if FIXTURE.is_file():
        trim_fixture()


def trim_fixture() -> None:
    """Frames FIRST_FRAME.. of the fixture's ``fbank_norm`` and just the samples they need."""
    with np.load(FIXTURE) as z:
        start = FIRST_FRAME * 160
        wave = z["wave"][:, start : start + (N_FRAMES - 1) * 160 + 400]
        fbank = z["fbank_norm"][:, FIRST_FRAME : FIRST_FRAME + N_FRAMES]
    np.savez_compressed(FIXTURE_OUT, wave=wave, fbank_norm=fbank)
    print(f"wrote {FIXTURE_OUT} ({FIXTURE_OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
