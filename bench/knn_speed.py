"""Speed and peak memory of asdcli's exact cosine KNN vs scikit-learn brute force, same process.

    python bench/knn_speed.py                       # banks 1e3, 1e5, 1e6 x 768, 1e3 queries
    python bench/knn_speed.py --sizes 1000 100000   # smaller run
    python bench/knn_speed.py --json knn.json       # also write the results as JSON ('-': stdout)

For each bank size M: random float32 data; ours = L2-normalize the queries and
``knn.knn_distances`` against the (already normalized) bank, as ``asd score`` does;
scikit-learn = ``NearestNeighbors(metric="cosine", algorithm="brute").fit(bank).kneighbors(q)``
on the raw vectors. Peak memory is tracemalloc's peak of new allocations during the call
(numpy and scikit-learn allocate through it), so the bank itself is not counted. Prints a Markdown
table on stdout and checks that both give the same distances. With ``--json PATH`` the table goes to
stderr and the results to PATH as JSON, rewritten after every bank size (so a run killed at 1e6
keeps the smaller sizes); ``--json -`` writes the JSON to stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from asdcli.backend import knn


def measure(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall time (s) over ``repeats`` runs, peak new memory (MiB) of one run, the result."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best, peak, result


def run(m: int, n_q: int, dim: int, k: int, sklearn_max: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    bank_raw = rng.standard_normal((m, dim), dtype=np.float32)
    queries = rng.standard_normal((n_q, dim), dtype=np.float32)
    bank = knn.l2_normalize(bank_raw)  # done once at fit-bank time
    repeats = 3 if m <= 100_000 else 1
    ours_t, ours_mem, ours = measure(lambda: knn.knn_distances(knn.l2_normalize(queries), bank, k), repeats)
    row = {"m": m, "ours_qps": n_q / ours_t, "ours_mem": ours_mem}
    if m <= sklearn_max:
        del bank  # give scikit-learn the same free memory

        def sk() -> np.ndarray:
            nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(bank_raw)
            return nn.kneighbors(queries)[0]

        sk_t, sk_mem, ref = measure(sk, repeats)
        row.update(sk_qps=n_q / sk_t, sk_mem=sk_mem, max_diff=float(np.abs(ref - ours).max()))
    return row


def write_json(obj: object, path: str) -> None:
    """``obj`` as indented JSON to ``path`` (replaced atomically), or to stdout when ``path`` is ``-``."""
    text = json.dumps(obj, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def json_row(r: dict[str, float]) -> dict[str, float | int | None]:
    """One bank size's results with explicit names and units (``None`` where scikit-learn was skipped)."""
    sk_qps = r.get("sk_qps")
    return {
        "bank": int(r["m"]),
        "ours_qps": r["ours_qps"],
        "ours_peak_mib": r["ours_mem"],
        "sklearn_qps": sk_qps,
        "sklearn_peak_mib": r.get("sk_mem"),
        "speedup": r["ours_qps"] / sk_qps if sk_qps else None,
        "max_abs_diff": r.get("max_diff"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--sklearn-max", type=int, default=10**7, help="Skip scikit-learn above this bank size.")
    ap.add_argument("--json", metavar="PATH", help="Also write the results as JSON to PATH ('-': stdout).")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout
    result = {
        "benchmark": "knn",
        "queries": args.queries,
        "dim": args.dim,
        "k": args.k,
        "sizes": args.sizes,
        "rows": [],
    }
    print(f"| bank M x {args.dim} | ours queries/s | sklearn queries/s | speed-up | ours peak MiB | sklearn peak MiB | max abs diff |", file=out)  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |", file=out)
    for m in args.sizes:
        print(f"bank {m} ...", file=sys.stderr, flush=True)
        r = run(m, args.queries, args.dim, args.k, args.sklearn_max)
        sk = f"{r['sk_qps']:.0f} | {r['ours_qps'] / r['sk_qps']:.2f}x" if "sk_qps" in r else "skipped | -"
        sk_mem = f"{r['sk_mem']:.0f}" if "sk_mem" in r else "-"
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "-"
        print(
            f"| {m:.0e} | {r['ours_qps']:.0f} | {sk} | {r['ours_mem']:.0f} | {sk_mem} | {diff} |", file=out, flush=True
        )
        result["rows"].append(json_row(r))
        if args.json and args.json != "-":
            write_json(result, args.json)
    if args.json == "-":
        write_json(result, "-")


if __name__ == "__main__":
    main()
