"""Speed and peak memory of asdcli's exact cosine KNN vs scikit-learn brute force, same process.

    python bench/knn_speed.py                       # banks 1e3, 1e5, 1e6 x 768, 1e3 queries
    python bench/knn_speed.py --sizes 1000 100000   # smaller run

For each bank size M: random float32 data; ours = L2-normalize the queries and
``knn.knn_distances`` against the (already normalized) bank, as ``asd score`` does;
scikit-learn = ``NearestNeighbors(metric="cosine", algorithm="brute").fit(bank).kneighbors(q)``
on the raw vectors. Peak memory is tracemalloc's peak of new allocations during the call
(numpy and scikit-learn allocate through it), so the bank itself is not counted. Prints a Markdown
table on stdout and checks that both give the same distances.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from asdcli import knn  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--sklearn-max", type=int, default=10**7, help="Skip scikit-learn above this bank size.")
    args = ap.parse_args()
    print(f"| bank M x {args.dim} | ours queries/s | sklearn queries/s | speed-up | ours peak MiB | sklearn peak MiB | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m in args.sizes:
        print(f"bank {m} ...", file=sys.stderr, flush=True)
        r = run(m, args.queries, args.dim, args.k, args.sklearn_max)
        sk = (f"{r['sk_qps']:.0f} | {r['ours_qps'] / r['sk_qps']:.2f}x" if "sk_qps" in r else "skipped | -")
        sk_mem = f"{r['sk_mem']:.0f}" if "sk_mem" in r else "-"
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "-"
        print(f"| {m:.0e} | {r['ours_qps']:.0f} | {sk} | {r['ours_mem']:.0f} | {sk_mem} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
