#!/usr/bin/env bash
# Runs every speed benchmark in sequence and prints ONE Markdown table (machine header line, embed
# clips/s and % of the matmul peak, KNN ours vs scikit-learn per bank size, LoRA vs full fine-tuning)
# on stdout, ready to paste into the README. Each benchmark's own output goes to stderr.
#
#   bash bench/run_all.sh                 # full sizes: banks 1e3/1e5/1e6, batch 2 x 3 iters, 3 steps
#                                         # (~4 min on 2 quiet cores; the 1e6 x 768 bank needs ~8 GiB RAM)
#   bash bench/run_all.sh --quick         # smoke run (~40-90 s on 2 cores): no 1e6 bank, 200 queries,
#                                         # 1 clip x 1 iter, 1 s clips x 1 step; header says QUICK
#   bash bench/run_all.sh --out DIR       # keep the JSON files (and the table, summary.md) in DIR
#   bash bench/run_all.sh --device cuda   # embed and fine-tune on the GPU (default cpu; KNN is CPU)
#
# Run it on a quiet machine: the benchmarks time wall clock on all cores. Not part of the tests.
# Python: $PYTHON, else the active virtualenv's python, else the repository's .venv, else python3.
set -euo pipefail

usage() { sed -n '2,13s/^# \{0,1\}//p' "$0"; }

quick=0
device=cpu
out=""
kept=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    --out) [[ $# -ge 2 ]] || { echo "run_all.sh: --out needs a folder" >&2; exit 2; }; out=$2; shift ;;
    --device) [[ $# -ge 2 && $2 =~ ^(cpu|cuda)$ ]] || { echo "run_all.sh: --device takes cpu or cuda" >&2; exit 2; }
      device=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
if [[ -n ${PYTHON:-} ]]; then py=$PYTHON
elif [[ -n ${VIRTUAL_ENV:-} ]]; then py=python
elif [[ -x $root/.venv/bin/python ]]; then py=$root/.venv/bin/python
else py=python3
fi

if [[ -n $out ]]; then
  mkdir -p "$out"
  rm -f "$out"/{machine,embed,knn,finetune}.json  # no stale results from an earlier run
else
  out=$(mktemp -d "${TMPDIR:-/tmp}/asd-bench.XXXXXX")
  trap 'rm -rf "$out"' EXIT
  kept=" (temporary; --out DIR keeps them)"
fi

if (( quick )); then
  embed_args=(--batch-size 1 --iters 1)
  knn_args=(--sizes 1000 100000 --queries 200)
  finetune_args=(--seconds 1 --steps 1)
  quick_flag=(--quick)
else
  embed_args=()
  knn_args=()
  finetune_args=()
  quick_flag=()
fi

cd "$root"
"$py" bench/summarize.py --machine "${quick_flag[@]}" > "$out/machine.json"

failed=()
bench() {  # bench NAME SCRIPT ARGS...: run one benchmark into $out/NAME.json, keep going if it fails
  local name=$1 script=$2 start rc=0
  shift 2
  echo "== $name: $py $script $* --json $out/$name.json" >&2
  start=$SECONDS
  "$py" "$script" "$@" --json "$out/$name.json" >&2 || rc=$?
  if (( rc )); then
    failed+=("$name")
    echo "== $name FAILED (exit $rc) after $((SECONDS - start)) s" >&2
  else
    echo "== $name done in $((SECONDS - start)) s" >&2
  fi
}

total=$SECONDS
bench embed bench/embed_speed.py --device "$device" "${embed_args[@]}"
bench knn bench/knn_speed.py "${knn_args[@]}"
bench finetune bench/finetune_speed.py --device "$device" "${finetune_args[@]}"
echo "== all benchmarks: $((SECONDS - total)) s, JSON in $out$kept" >&2
echo >&2

"$py" bench/summarize.py "$out" | tee "$out/summary.md"
if (( ${#failed[@]} )); then
  echo "run_all.sh: failed: ${failed[*]}" >&2
  exit 1
fi
