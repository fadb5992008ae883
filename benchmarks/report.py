"""Print the Markdown tables of docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/report.py layers_numpy_b64 models_numpy
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def layers_table(d):
    rows = ["| layer | minicnn ms | GFLOP/s | GEMMs alone ms | % of GEMM speed | textbook ms "
            "| × faster than textbook | PyTorch ms | minicnn / PyTorch |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in d["rows"]:
        frac = r.get("fraction_of_gemm")
        pct = None if frac is None else 100 * frac
        rows.append(
            f"| {r['layer']} | {r['ms']:.1f} | {fmt(r.get('gflops'), '.0f')} | "
            f"{fmt(r.get('gemm_ms'), '.1f')} | {fmt(pct, '.0f')} | "
            f"{fmt(r.get('textbook_ms'), '.1f')} | {fmt(r.get('speedup_vs_textbook'), '.2f')} | "
            f"{fmt(r.get('torch_ms'), '.1f')} | {fmt(r.get('ratio_vs_torch'), '.2f')} |")
    convs = [r for r in d["rows"] if "textbook_ms" in r][:8]
    if convs:
        total = sum(r["textbook_ms"] for r in convs) / sum(r["ms"] for r in convs)
        rows.append("")
        rows.append(f"The eight VGG layers 3→64 … 512→512 @4² together: **{total:.2f}×** faster "
                    "than the textbook code.")
    return "\n".join(rows)


def models_table(d):
    rows = ["| model | batch | minicnn ms/step | PyTorch ms/step | minicnn / PyTorch |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for r in d["rows"]:
        rows.append(f"| {r['model']} | {r['batch']} | {r['ms']:.0f} | "
                    f"{fmt(r.get('torch_ms'), '.0f')} | {fmt(r.get('ratio_vs_torch'), '.2f')} |")
    return "\n".join(rows)


def machine(d):
    m = d["machine"]
    kernel = m.get("blas_kernel", "not recorded")
    override = m.get("openblas_env") or "none"
    return (f"{m.get('processor')}, {m.get('cpu_count')} cores; Python {m.get('python')}, "
            f"NumPy {m.get('numpy')} ({m.get('blas')}; kernel {kernel}; override {override}); "
            f"PyTorch {m.get('torch', 'not installed')} with {m.get('torch_threads', '–')} "
            f"threads; backend {m.get('backend')}")


def main(names):
    for name in names:
        d = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"### {name}\n\nMachine: {machine(d)}.\n")
        print(models_table(d) if "model" in d["rows"][0] else layers_table(d))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
