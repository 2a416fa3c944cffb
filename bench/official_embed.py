"""Embed clips with the official BEATs code, as its README shows; a whole process for bench/startup.py.

The official code (microsoft/unilm ``beats/``: BEATs.py, backbone.py, modules.py) is not part of
this project: pass the folder that holds it. It imports ``torchaudio.compliance.kaldi``, so
torchaudio (or a copy of that one module) must be importable by this Python.

    python bench/official_embed.py --official-code DIR --checkpoint CKPT --out EMB.npy CLIP.wav...

Loads the checkpoint (``weights_only=True``), reads the clips with soundfile, runs
``extract_features`` with an all-False padding mask in batches of ``--batch-size`` under
``torch.no_grad()``, mean-pools the tokens and saves the (clips, dim) array. Prints one JSON line
on stdout: the seconds spent in ``extract_features`` (the official forward, fbank included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-code", type=Path, required=True, help="folder with the official BEATs.py")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where to save the mean-pooled embeddings (.npy)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("clips", type=Path, nargs="+")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official_code))
    from BEATs import BEATs, BEATsConfig  # the official module, from --official-code

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = BEATs(BEATsConfig(checkpoint["cfg"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    pooled = []
    forward = 0.0
    for start in range(0, len(args.clips), args.batch_size):
        waves = torch.from_numpy(
            np.stack([sf.read(p, dtype="float32")[0] for p in args.clips[start : start + args.batch_size]])
        )
        padding_mask = torch.zeros(waves.shape, dtype=torch.bool)
        t = time.perf_counter()
        with torch.no_grad():
            tokens = model.extract_features(waves, padding_mask=padding_mask)[0]
        forward += time.perf_counter() - t
        pooled.append(tokens.mean(dim=1).numpy())
    np.save(args.out, np.concatenate(pooled), allow_pickle=False)
    print(json.dumps({"forward_s": forward}))


if __name__ == "__main__":
    main()
