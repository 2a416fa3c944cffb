"""One Markdown performance table from the benchmarks' JSON files (what ``bench/run_all.sh`` prints).

    python bench/summarize.py --machine [--quick] > DIR/machine.json   # this machine, now
    python bench/summarize.py DIR                                       # DIR/{machine,embed,knn,finetune}.json

The table reads ``embed.json`` (``bench/embed_speed.py --json``), ``knn.json`` (``bench/knn_speed.py
--json``) and ``finetune.json`` (``bench/finetune_speed.py --json``); a missing file gives a
"not run / failed" row, so one crashed benchmark does not hide the others. The header line comes
from ``machine.json`` (or, if that is missing, from the machine running this script).
Standard library only, apart from the optional torch version and GPU name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = ("embed", "knn", "finetune")
COLUMNS = (
    "benchmark", "case", "ours", "reference", "speed, ours vs reference",
    "ours peak MiB", "reference peak MiB", "peak memory ours / reference",
)  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(quick: bool = False) -> dict[str, Any]:
    """What the header line names: CPU, cores, memory, OS, Python/torch/numpy/scikit-learn versions, date."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
        "quick": quick,
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = pages * page_size / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    for name, module in (("torch", "torch"), ("numpy", "numpy"), ("scikit-learn", "sklearn")):
        try:
            info[name] = __import__(module).__version__
        except ImportError:
            info[name] = None
    with contextlib.suppress(Exception):  # a broken CUDA setup must not stop the summary
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def header(m: dict[str, Any]) -> str:
    """One line naming the machine and the software, e.g. for the README above the table."""
    cores = f"{m.get('cores')} cores"
    if m.get("usable_cores") not in (None, m.get("cores")):
        cores += f" ({m['usable_cores']} usable)"
    parts = [m.get("cpu", "unknown CPU"), cores]
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']:.0f} GiB RAM")
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    if m.get("os"):
        parts.append(m["os"])
    soft = [f"Python {m['python']}"] if m.get("python") else []
    soft += [f"{name} {m[name]}" for name in ("torch", "numpy", "scikit-learn") if m.get(name)]
    line = f"Machine: {', '.join(parts)}; {', '.join(soft)}; {m.get('date', 'date unknown')}"
    if m.get("quick"):
        line += " (QUICK smoke run: reduced sizes, not for the README)"
    return line


def num(x: float | None, unit: str = "") -> str:
    """``x`` with 3 to 4 significant digits and thousands separators; ``-`` for None."""
    if x is None:
        return "-"
    a = abs(x)
    text = f"{x:,.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"
    return f"{text} {unit}".rstrip()


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def faster(ours_speed: float | None, ref_speed: float | None) -> str:
    """``2.50x faster`` / ``0.80x (slower)`` from two speeds (higher is better)."""
    if not ours_speed or not ref_speed:
        return "-"
    r = ours_speed / ref_speed
    return f"{r:.2f}x faster" if r >= 1 else f"{r:.2f}x (slower)"


def bank_label(m: int) -> str:
    """1000 -> ``1e3``; sizes that are not powers of ten keep their digits."""
    exp = len(str(m)) - 1
    return f"1e{exp}" if m == 10**exp else f"{m:,}"


def embed_rows(e: dict[str, Any]) -> list[list[str]]:
    device = e.get("device", "cpu")  # JSON of an earlier embed_speed.py holds no device: it ran on CPU
    where = e.get("device_name", "") if device == "cuda" else f"{e['threads']} threads"
    cast = f", {e['autocast']} autocast" if e.get("autocast", "none") != "none" else ""
    case = (
        f"fbank + BEATs iter3 + mean pool, {e['clip_seconds']:g} s clips, batch {e['batch_size']}, "
        f"{where}{cast}, best of {e['iters']}"
    )
    return [[
        f"embed (`asd embed` forward, {device})", case,
        f"{num(e['clips_per_s'], 'clips/s')} ({num(e['model_gflops'], 'GFLOP/s')})",
        f"fp32 matmul peak {num(e['matmul_gflops'], 'GFLOP/s')}",
        f"{e['pct_of_peak']:.0f} % of matmul peak",
        f"{num(e['peak_rss_mib'])} ({e.get('peak_memory_kind', 'process RSS')})", "-", "-",
    ]]  # fmt: skip


def knn_rows(k: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in k["rows"]:
        sk = r.get("sklearn_qps")
        ours_mem, sk_mem = r["ours_peak_mib"], r.get("sklearn_peak_mib")
        rows.append([
            "KNN (cosine, exact)",
            f"bank {bank_label(r['bank'])} x {k['dim']}, {k['queries']:,} queries, k={k['k']}",
            num(r["ours_qps"], "queries/s"),
            f"scikit-learn brute {num(sk, 'queries/s')}" if sk else "scikit-learn skipped",
            faster(r["ours_qps"], sk), num(ours_mem), num(sk_mem),
            ratio(ours_mem / sk_mem) if sk_mem else "-",
        ])  # fmt: skip
    missing = [m for m in k.get("sizes", []) if m not in {r["bank"] for r in k["rows"]}]
    for m in missing:  # the run died before this size finished (e.g. killed for memory)
        rows.append(["KNN (cosine, exact)", f"bank {bank_label(m)} x {k['dim']}", "not finished",
                     "-", "-", "-", "-", "-"])  # fmt: skip
    return rows


def finetune_rows(f: dict[str, Any]) -> list[list[str]]:
    lora, full = f["modes"]["lora"], f["modes"]["full"]
    mp = "" if f["mixed_precision"] == "no" else f", {f['mixed_precision']}"
    case = (
        f"BEATs iter3 train step, {f['seconds']:g} s clips, batch {f['batch_size']}, {f['device']}{mp}, "
        f"best of {f['steps']}; LoRA r{f['rank']} ({lora['trainable']:,} trainable) vs full "
        f"({full['trainable']:,})"
    )
    step_ratio = lora["step_s"] / full["step_s"]
    return [[
        "fine-tune (LoRA vs full)", case,
        f"LoRA {num(lora['step_s'], 's/step')}", f"full {num(full['step_s'], 's/step')}",
        f"step time LoRA / full {step_ratio:.2f}x",
        num(lora["peak_mib"]), num(full["peak_mib"]), ratio(lora["peak_mib"] / full["peak_mib"]),
    ]]  # fmt: skip


ROWS = {"embed": embed_rows, "knn": knn_rows, "finetune": finetune_rows}
NAMES = {"embed": "embed", "knn": "KNN", "finetune": "fine-tune"}


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(folder: Path) -> str:
    """Header line, a blank line, the Markdown table and a note on what the memory columns measure."""
    machine = load(folder / "machine.json") or machine_info()
    lines = [header(machine), "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for name in BENCHMARKS:
        data = load(folder / f"{name}.json")
        try:
            rows = ROWS[name](data) if data else None
        except (KeyError, TypeError, ZeroDivisionError):
            rows = None
        if not rows:
            rows = [[NAMES[name], "not run / failed (see the run's stderr)"] + ["-"] * (len(COLUMNS) - 2)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += [
        "",
        (
            "Peak memory: embed = the process's peak RSS (model, fbank, activations, matmul buffers; CUDA: max "
            "allocated); "
            "KNN = tracemalloc peak of new allocations during the search (bank excluded); fine-tune = peak "
            "RSS above the child's baseline (CUDA: max allocated), i.e. weights, gradients, Adam state, activations."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, help="folder with the benchmarks' JSON files")
    ap.add_argument("--machine", action="store_true", help="print this machine's machine.json and exit")
    ap.add_argument("--quick", action="store_true", help="with --machine: mark the run as a quick smoke run")
    args = ap.parse_args(argv)
    if args.machine:
        print(json.dumps(machine_info(args.quick), indent=2))
        return 0
    if args.folder is None:
        ap.error("give a folder, or --machine")
    print(summarize(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
