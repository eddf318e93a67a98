"""Draw the sweep bench's completion->webhook latencies, sweep against per-order polling:
`python -m bench.sweep_plot [bench/results/sweep.json] [docs/img/sweep-latency.png]`.
Needs matplotlib (`pip install -e '.[bench]'`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO

BINS = [10 ** (k / 20) for k in range(-40, 51)]  # 0.01 s to 316 s, even on a log axis


def draw(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    shape = results["shape"]
    fig, (cdf, hist) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for arm, color in zip(results["arms"], ("tab:blue", "tab:orange"), strict=True):
        lat = sorted(max(x, 0.01) for x in arm["latencies"])
        name = "sweep (list endpoint)" if arm["sweep"] == "auto" else "per-order polling"
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        label = f"{name}: p99 {p99:.1f} s, {arm['gets_per_order']:.2f} GETs/order"
        cdf.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], color=color, label=label)
        hist.hist(lat, bins=BINS, color=color, alpha=0.6)
    for ax in (cdf, hist):
        ax.set_xscale("log")
        ax.axvline(10, color="grey", linestyle=":", linewidth=1)
    cdf.set_xlabel("completion → webhook, s (log scale)")
    cdf.set_ylabel("share of orders")
    fig.legend(loc="outside lower center", ncols=2, fontsize=9)
    cdf.grid(True, which="both", alpha=0.3)
    hist.set_xlabel("completion → webhook, s (log scale; dotted: 10 s)")
    hist.set_ylabel("orders per bin")
    fig.suptitle(
        f"{shape['orders']:,} orders pending at {shape['rate']} requests/s, completions over"
        f" {shape['spread_s']:.0f} s, {shape['history']:,} older orders in the account"
    )
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"written: {png}")


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results" / "sweep.json"
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "docs" / "img" / "sweep-latency.png"
    draw(json.loads(src.read_text()), png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
