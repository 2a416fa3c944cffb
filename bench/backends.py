"""Every back-end option on frozen (and fine-tuned) tiny-model embeddings of synthetic data.

    python bench/backends.py                      # 3 generator seeds, frozen embeddings
    python bench/backends.py --finetune           # also LoRA-fine-tuned embeddings and their fusion
    python bench/backends.py --work DIR --seeds 0 1 --json out.json
    python bench/backends.py --k-sweep            # also plain density, K = 1..10, on banks of 35..110 vectors

Per generator seed: a synthetic dataset larger than the demo's (4 machines, 100 source + 10 target
train clips and 40 test clips per machine, 2 s), embedded once with the demo's tiny *randomly
initialised* BEATs through `asd run` (frozen; with --finetune also 5 epochs of LoRA, lr 1e-3).
Then every back-end variant is fitted on the same train embeddings and scored; the official score
(harmonic mean of AUC source/target and pAUC, in %) is printed as a Markdown table, mean ± std
over the seeds, and per seed. The work folder is reused: datasets and embeddings are made once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asdcli.artifacts import Embeddings, load_embeddings
from asdcli.backend.bank import BankConfig, save_banks
from asdcli.backend.bank_fit import fit_banks
from asdcli.backend.score import write_submission
from asdcli.evaluate.ground_truth import load_ground_truth
from asdcli.evaluate.report import evaluate_submission

SYNTH = {
    "machines": ("fan", "gearbox", "bearing", "valve"),
    "seconds": 2.0,
    "n_train_source": 100,
    "n_train_target": 10,
    "n_test_per_cell": 10,
    "n_supplemental": 0,
}
VARIANTS: dict[str, BankConfig] = {
    "none (seed)": BankConfig(),
    "none, k = 3": BankConfig(k=3),
    "density, K = 1": BankConfig(score_norm="density", density_k=1),
    "density, K = 2": BankConfig(score_norm="density", density_k=2),
    "density, K = 10": BankConfig(score_norm="density", density_k=10),
    "density, K = 20": BankConfig(score_norm="density", density_k=20),
    "density, default K (3)": BankConfig(score_norm="density"),
    "domain-density, K_s = 1, K_t = 1": BankConfig(score_norm="domain-density", density_k=1, density_k_target=1),
    "domain-density, K_s = 5, K_t = 9": BankConfig(score_norm="domain-density", density_k=5, density_k_target=9),
    "domain-density, K_s = 10, K_t = 3": BankConfig(score_norm="domain-density", density_k=10, density_k_target=3),
    "domain-density, K_s = 20, K_t = 9": BankConfig(score_norm="domain-density", density_k=20, density_k_target=9),
    "domain-density, default K (3, 1)": BankConfig(score_norm="domain-density"),
    "domain-zscore": BankConfig(score_norm="domain-zscore"),
}


def make_run(work: Path, seed: int, ckpt: Path, finetune: bool) -> Path:
    """The dataset of ``seed`` and an `asd run` folder on it (skipped when already done)."""
    from asdcli.finetune.config import FinetuneConfig
    from asdcli.pipeline.run import RunConfig, run_pipeline
    from asdcli.synth.dataset import SynthConfig, make_dataset

    data = work / f"data-seed{seed}"
    if not (data / "asd-synth.json").is_file():
        make_dataset(data, SynthConfig(seed=seed, **SYNTH))  # type: ignore[arg-type]
    name = "finetuned" if finetune else "frozen"
    ft = (
        FinetuneConfig(
            checkpoint=ckpt, epochs=5, lr=1e-3, batch_size=16, seed=0, seconds=2.0, device="cpu", val_fraction=0.0
        )
        if finetune
        else None
    )
    run = work / f"{name}-seed{seed}"
    run_pipeline(
        RunConfig(data_root=data, run_dir=run, checkpoint=ckpt, finetune=ft, seconds=2.0, device="cpu", batch_size=16)
    )
    return run


def official(train: Embeddings, test: Embeddings, data: Path, cfg: BankConfig, out: Path) -> float:
    """Official score (%) of ``cfg``'s banks fitted on ``train``; banks and submission go to ``out``."""
    banks = fit_banks(train, cfg)
    save_banks(out / "banks", banks)
    write_submission(banks, test, out / "submission")
    return 100 * evaluate_submission(out / "submission", load_ground_truth(None, data)).official_score


def embeddings(run: Path) -> tuple[Embeddings, Embeddings]:
    return load_embeddings(run / "embeddings" / "train.npz"), load_embeddings(run / "embeddings" / "test.npz")


def first_source_clips(train: Embeddings, n: int) -> Embeddings:
    """Per machine/section, the first ``n`` source train clips and every target one."""
    source = train.domain == "source"
    keep = ~source
    for m, s in {(m, s) for m, s in zip(train.machine, train.section)}:
        keep[np.nonzero(source & (train.machine == m) & (train.section == s))[0][:n]] = True
    return train.select(keep)


def k_sweep(
    runs: dict[int, Path],
    work: Path,
    sizes: tuple[int, ...] = (25, 50, 100),
    ks: tuple[int, ...] = (1, 2, 3, 4, 5, 7, 10),
) -> None:
    """Plain density with fixed K on banks of the first n source train clips (+ the 10 target
    ones) of each section: which K is best for which bank size (the default-K rule's evidence)."""
    from asdcli.backend.norm import default_density_k

    table: dict[int, dict[int, list[float]]] = {}
    for seed, run in runs.items():
        train, test = embeddings(run)
        for n in sizes:
            for k in ks:
                cfg = BankConfig(score_norm="density", density_k=k)
                out = work / "sweep" / f"seed{seed}-n{n}-k{k}"
                score = official(first_source_clips(train, n), test, work / f"data-seed{seed}", cfg, out)
                table.setdefault(n, {}).setdefault(k, []).append(score)
    print(f"\n| bank n (source + 10 target) | {' | '.join(f'K = {k}' for k in ks)} |")
    print("| --- |" + " --- |" * len(ks))
    for n, row in table.items():
        rule = default_density_k(n + 10)
        cells = [f"**{np.mean(v):.2f}**" if k == rule else f"{np.mean(v):.2f}" for k, v in row.items()]
        print(f"| {n + 10} | {' | '.join(cells)} |")


def fused(systems: list[Path], data: Path, out: Path) -> float:
    from asdcli.backend.fuse import fuse

    fuse([f"{s / 'submission'}:{s / 'banks'}" for s in systems], out)
    return 100 * evaluate_submission(out, load_ground_truth(None, data)).official_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune", action="store_true", help="also fine-tuned embeddings and fusion")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--k-sweep", action="store_true", help="also plain density, K = 1..10, on smaller banks")
    args = parser.parse_args()
    from asdcli.frontend.beats.checkpoint import make_tiny_checkpoint

    work = args.work or Path(tempfile.mkdtemp(prefix="asd-backends-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "beats_tiny_random_seed0.pt"
    if not ckpt.is_file():
        make_tiny_checkpoint(ckpt, seed=0)
    results: dict[str, list[float]] = {}
    frozen: dict[int, Path] = {}
    for seed in args.seeds:
        fronts = {"frozen": make_run(work, seed, ckpt, False)}
        frozen[seed] = fronts["frozen"]
        if args.finetune:
            fronts["fine-tuned"] = make_run(work, seed, ckpt, True)
        for front, run in fronts.items():
            for name, cfg in VARIANTS.items():
                out = work / "variants" / f"{front}-{seed}-{name.replace(' ', '_').replace(',', '')}"
                results.setdefault(f"{front} | {name}", []).append(
                    official(*embeddings(run), work / f"data-seed{seed}", cfg, out)
                )
        for name in ("none (seed)", "density, default K (3)", "domain-density, default K (3, 1)"):
            slug = name.replace(" ", "_").replace(",", "")
            if args.finetune:
                systems = [work / "variants" / f"{f}-{seed}-{slug}" for f in ("frozen", "fine-tuned")]
                results.setdefault(f"fused frozen + fine-tuned | {name}", []).append(
                    fused(systems, work / f"data-seed{seed}", work / "fused" / f"ft-{seed}-{slug}")
                )
        print(f"seed {seed} done", file=sys.stderr)
    print(
        f"| front end | back end | official score, mean ± std over seeds {', '.join(map(str, args.seeds))} | per seed |"
    )
    print("| --- | --- | --- | --- |")
    for key, values in results.items():
        v = np.asarray(values)
        print(f"| {key} | {v.mean():.2f} ± {v.std():.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.k_sweep:
        k_sweep(frozen, work)


if __name__ == "__main__":
    main()
