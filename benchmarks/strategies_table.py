"""benchmarks/STRATEGIES.md's measured part, copied from a `sweep=fair` folder's own report (summary.md) so
that no number is typed by hand: its results table, verdict, ensemble and tuning sections, and its figures
into benchmarks/strategies/.

python benchmarks/strategies_table.py /tmp/sb/ref > /tmp/measured.md
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SECTIONS = ["## Results", "## Best strategy", "## Ensemble and shared errors", "## Tuning (sweep=fair)"]
FIGURES = ["accuracy_by_strategy.png", "tuning.png", "pareto.png"]
HERE = Path(__file__).parent


def sections(summary: str, wanted: list[str]) -> str:
    """The named `## ` sections of a report, in the report's order, each down to the next `## `."""
    out, keep = [], False
    for line in summary.splitlines():
        if line.startswith("## "):
            keep = any(line.startswith(title) for title in wanted)
            if keep:
                line = "#" + line  # one level down: they sit under this document's own headings
        if keep:
            out.append(line)
    return "\n".join(out).strip() + "\n"


def main(sweep: Path) -> None:
    figures = HERE / "strategies"
    figures.mkdir(exist_ok=True)
    for name in FIGURES:
        if (sweep / name).exists():  # the report writes every figure into the sweep folder itself
            shutil.copyfile(sweep / name, figures / name)
    print(sections((sweep / "summary.md").read_text(), SECTIONS))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
