"""The table of benchmarks/IMBALANCE.md from a sweep folder: mean ± std over seeds per data.balance.

python benchmarks/imbalance_table.py outputs/multirun/imbalance
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from tlbench.results.files import read_results

# results.json key → column; the minority class (Shirt) is the positive class, so its recall is sensitivity.
COLUMNS = {
    "test/balanced_acc": "balanced acc @0.5",
    "test/sensitivity": "minority recall @0.5",
    "test/auroc": "AUROC",
    "test/acc": "acc @0.5",
    "test/acc@thr": "acc @thr",
    "test/balanced_acc@thr": "balanced acc @thr",
    "test/sensitivity@thr": "minority recall @thr",
    "threshold": "threshold",
    "wall_time_s": "wall s",
}


def main(sweep: Path) -> None:
    rows = defaultdict(lambda: defaultdict(list))
    for results_file in sorted(sweep.glob("*/results.json")):
        results = read_results(results_file.parent)
        if results is None:
            continue
        balance = results["config"]["data"]["balance"]
        values = results["metrics"] | {k: results[k] for k in ("wall_time_s", "threshold")}
        for key in COLUMNS:
            rows[balance][key].append(values[key])
    print("| data.balance | seeds | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for balance in ("none", "loss", "sampler"):
        if balance not in rows:
            continue
        cells = []
        for key in COLUMNS:
            v = np.asarray(rows[balance][key])
            cells.append(
                f"{v.mean():.0f} ± {v.std(ddof=1):.0f}"
                if key == "wall_time_s"
                else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"
            )
        print(f"| {balance} | {len(rows[balance]['test/acc'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
