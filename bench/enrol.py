"""Does enrolling a few normal clips of a new operating condition stop its false alarms?

    python bench/enrol.py                         # tiny random BEATs; fan, gearbox, valve; ~1 min on 2 cores
    python bench/enrol.py --checkpoint BEATs_iter3.pt --machines fan
    python bench/enrol.py --json enrol.json       # also write the results as JSON

Synthetic data (asdcli.synth): the bank is fitted on the source-domain train clips only, so the
target domain (another attribute value, brown noise and mains hum) is a condition it has never
heard. The false-alarm rate is the share of the target *normal* test clips above the bank's
threshold; it is measured before and after `asd enrol` of ``--enrol`` (10) target normal train
clips (``asdcli.monitor.enrol.enrol``, mean/std kept). The detection rate of the target
anomalies and the source false-alarm rate are shown too, so a lower false-alarm rate bought by
missing every anomaly would show. Prints a Markdown table; same numbers on every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asdcli.artifacts import Embeddings
from asdcli.backend.bank_fit import fit_bank
from asdcli.backend.score import score_vectors
from asdcli.data.dataset import discover_clips
from asdcli.frontend.embed import embed_clips
from asdcli.frontend.embedder import EmbedConfig
from asdcli.monitor.enrol import enrol
from asdcli.synth.dataset import SynthConfig, make_dataset


def rates(bank: object, emb: Embeddings) -> dict[str, float]:
    scores = score_vectors(bank, emb.vectors)  # type: ignore[arg-type]
    flagged = scores > bank.threshold  # type: ignore[attr-defined]
    test = emb.split == "test"

    def share(domain: str, label: str) -> float:
        rows = test & (emb.domain == domain) & (emb.label == label)
        return float(flagged[rows].mean())

    return {
        "target_false_alarms": share("target", "normal"),
        "target_detections": share("target", "anomaly"),
        "source_false_alarms": share("source", "normal"),
    }


def run_machine(machine: str, emb: Embeddings, n_enrol: int) -> dict[str, object]:
    mine = emb.select(emb.machine == machine)
    source_train = mine.select(~((mine.split == "train") & (mine.domain == "target")))
    bank = fit_bank(source_train, machine=machine)
    new = mine.select((mine.split == "train") & (mine.domain == "target"))
    new = new.select(np.arange(len(new)) < n_enrol)
    grown = enrol(bank, new, "target")
    return {
        "machine": machine,
        "enrolled": len(new),
        "before": rates(bank, mine),
        "after": rates(grown, mine),
        "threshold_before": bank.threshold,
        "threshold_after": grown.threshold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="BEATs checkpoint (default: a tiny random one, seed 0)")
    parser.add_argument("--machines", nargs="+", default=["fan", "gearbox", "valve"])
    parser.add_argument("--enrol", type=int, default=10, help="target normal clips to enrol")
    parser.add_argument("--test", type=int, default=20, help="test clips per domain and label")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asd-enrol-bench-") as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint

            ckpt = make_tiny_checkpoint(Path(tmp) / "tiny.pt", seed=0)
        cfg = SynthConfig(seed=0, machines=tuple(args.machines), seconds=2.0, n_train_source=30,
                          n_train_target=args.enrol, n_test_per_cell=args.test, n_supplemental=0)  # fmt: skip
        make_dataset(Path(tmp) / "data", cfg)
        clips = discover_clips([Path(tmp) / "data"], splits={"train", "test"})
        emb = embed_clips(clips, EmbedConfig(checkpoint=ckpt, seconds=2.0, device="cpu"))
    results = [run_machine(m, emb, args.enrol) for m in args.machines]
    took = time.perf_counter() - start
    print(
        f"Enrolling {args.enrol} target normal clips into a source-only bank ({'tiny random BEATs' if args.checkpoint is None else args.checkpoint.name}, "
        f"{args.test} test clips per cell, {took:.0f} s)\n"
    )
    print(
        "| machine | target false alarms before → after | target anomalies flagged before → after | source false alarms before → after | threshold before → after |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        b, a = r["before"], r["after"]
        cells = [
            f"{100 * b[k]:.0f} % → {100 * a[k]:.0f} %"
            for k in ("target_false_alarms", "target_detections", "source_false_alarms")
        ]  # type: ignore[index]
        print(
            f"| {r['machine']} | "
            + " | ".join(cells)
            + f" | {r['threshold_before']:.3f} → {r['threshold_after']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": took}, indent=2) + "\n")


if __name__ == "__main__":
    main()
