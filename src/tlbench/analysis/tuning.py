"""`sweep=fair`'s tuning round, decided and reported: per cell of the sweep (a strategy, with whatever else
the grid varies besides the seed), the tuned setting whose runs scored best on the monitored validation
metric — never on test — and the report's section and figure (validation metric against learning rate).

The sweeper (run/fair.py) writes the plan, `<sweep>/tune/tuning.json`: each cell with its candidates (the
tuned values and the folders of their runs). `decide` reads the runs' results.json and chooses; the sweeper
and the report both call it, so the chosen values on disk and in the report are one decision. The tuning
runs lie below tune/, which collect.find_runs leaves out of the sweep's verdict (TUNING_PLAN marks it)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tlbench.analysis.collect import TUNING_PLAN
from tlbench.analysis.markdown import code, md, table
from tlbench.results.files import read_results, write_atomic

TUNE_DIR = "tune"
LR_SCALE = "strategy.lr_scale"
STRATEGY = "strategy"


@dataclass
class Candidate:
    setting: dict[str, str]  # tuned key -> value, as on the command line
    runs: list[str]  # run folders relative to the sweep folder (one per tuning seed)


@dataclass
class Cell:
    name: str  # what the cell's overrides set, e.g. `strategy=partial`
    overrides: list[str]
    candidates: list[Candidate]


@dataclass
class Scored:
    candidate: Candidate
    score: float | None  # mean monitored validation value over its finished runs
    finished: int
    head_lr: float | None  # the head's rate the runs trained at (head_lr × lr_scale)


@dataclass
class Choice:
    cell: Cell
    monitor: str | None
    scored: list[Scored]
    chosen: Candidate | None
    edges: list[str] = field(default_factory=list)  # `strategy.lr_scale=5 is the highest value tried`
    flat: bool = False  # every value tried scored the same

    @property
    def note(self) -> str:
        if self.flat:
            return "every value tried scored the same: the grid cannot tell them apart at this budget"
        return "; ".join(self.edges) + ("; widen the grid on that side" if self.edges else "")


def plan_path(sweep_dir: Path) -> Path:
    return sweep_dir / TUNE_DIR / TUNING_PLAN


def write_plan(sweep_dir: Path, monitor: str, cells: list[Cell], choices: list[Choice] | None = None) -> Path:
    chosen = {c.cell.name: c.chosen.setting for c in choices or [] if c.chosen is not None}
    record = {"monitor": monitor, "cells": [asdict(c) for c in cells], "chosen": chosen}
    return write_atomic(plan_path(sweep_dir), json.dumps(record, indent=1) + "\n")


def read_plan(sweep_dir: Path) -> list[Cell] | None:
    try:
        record = json.loads(plan_path(sweep_dir).read_text())
        cells = record["cells"]
        return [Cell(c["name"], c["overrides"], [Candidate(**x) for x in c["candidates"]]) for c in cells]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lower_is_better(monitor: str) -> bool:
    """As run/trainer.py picks the best checkpoint: a loss is minimised, every other metric maximised."""
    return monitor.endswith("loss")


def finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def score(sweep_dir: Path, candidate: Candidate) -> tuple[Scored, str | None]:
    """The candidate's mean best validation value (results.json's best_val: the monitored metric at the
    checkpoint that would be tested) over its finished runs, and the monitor those runs used."""
    values, monitor, head_lr = [], None, None
    for run in candidate.runs:
        results = read_results(sweep_dir / run)
        if results is None:
            continue
        config = results.get("config") or {}
        monitor = (config.get("trainer") or {}).get("monitor", monitor)
        strategy = config.get("strategy") or {}
        if finite(strategy.get("head_lr")) is not None:
            head_lr = strategy["head_lr"] * (finite(strategy.get("lr_scale")) or 1.0)
        value = finite(results.get("best_val"))
        values.append(math.nan if value is None else value)  # a diverged run counts, as the worst
    mean = None
    if values:
        mean = math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
    return Scored(candidate, mean, len(values), head_lr), monitor


def choose(scored: list[Scored], lower: bool) -> Scored | None:
    """The best score; a tie goes to the candidate listed first (the grid's order), a NaN score never wins."""
    ranked = [s for s in scored if s.score is not None and not math.isnan(s.score)]
    if not ranked:
        return None
    best = min(s.score for s in ranked) if lower else max(s.score for s in ranked)
    return next(s for s in ranked if s.score == best)


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def edges(chosen: Candidate, candidates: list[Candidate]) -> list[str]:
    """Each numeric tuned value chosen at the end of its grid (among candidates alike in every other key):
    the best may lie beyond it."""
    notes = []
    for key, value in chosen.setting.items():
        if number(value) is None:
            continue
        alike = [
            number(c.setting[key])
            for c in candidates
            if key in c.setting and all(c.setting.get(k) == v for k, v in chosen.setting.items() if k != key)
        ]
        tried = sorted(v for v in alike if v is not None)
        if len(tried) > 1 and number(value) in (tried[0], tried[-1]):
            end = "lowest" if number(value) == tried[0] else "highest"
            notes.append(f"{key}={value} is the {end} value tried")
    return notes


def decide(sweep_dir: Path, cells: list[Cell]) -> list[Choice]:
    """Per cell, the candidate whose finished runs scored best on the monitored validation metric."""
    choices = []
    for cell in cells:
        results = [score(sweep_dir, c) for c in cell.candidates]
        monitor = next((m for _, m in results if m), None)
        scored = [s for s, _ in results]
        best = choose(scored, lower_is_better(monitor or ""))
        chosen = best.candidate if best else None
        flat = len({s.score for s in scored if s.score is not None}) == 1 and len(scored) > 1
        notes = edges(chosen, cell.candidates) if chosen and not flat else []
        choices.append(Choice(cell, monitor, scored, chosen, notes, flat))
    return choices


def fmt_setting(setting: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "–"


def section(sweep_dir: Path) -> list[str]:
    """The report's tuning section (empty when the folder holds no tuning round)."""
    cells = read_plan(sweep_dir)
    if not cells:
        return []
    choices = decide(sweep_dir, cells)
    monitor = next((c.monitor for c in choices if c.monitor), "the monitored validation metric")
    runs = sum(len(x.runs) for cell in cells for x in cell.candidates)
    lines = [
        "## Tuning (sweep=fair)",
        "",
        f"Before the compared runs, each cell tried the same grid ({runs} runs in {code(TUNE_DIR + '/')}, "
        f"left out of every table and verdict above) and kept the values with the best {md(monitor)} on the "
        "validation split (mean over tuning seeds; a tie goes to the value listed first). The test split "
        "played no part. `tuning.png`: the validation metric against the head's learning rate per cell.",
        "",
    ]
    header = ["cell", "chosen", "head lr", f"best {md(monitor)}", "tried (value: score)", "note"]
    rows = []
    for choice in choices:
        tried = "; ".join(
            f"{md(fmt_setting(s.candidate.setting))}: "
            + (
                "no result"
                if s.score is None
                else f"{s.score:.4f}" + (f" (n={s.finished})" if s.finished > 1 else "")
            )
            for s in choice.scored
        )
        best = next((s for s in choice.scored if s.candidate is choice.chosen), None)
        if choice.chosen is None:
            rows.append(
                [md(choice.cell.name), "**none**", "–", "–", tried, "no tuning run finished: not compared"]
            )
            continue
        head_lr = f"{best.head_lr:.3g}" if best and best.head_lr else "–"
        rows.append(
            [
                md(choice.cell.name),
                md(fmt_setting(choice.chosen.setting)),
                head_lr,
                f"{best.score:.4f}",
                tried,
            ]
            + [md(choice.note) or "–"]
        )
    lines += [*table(header, rows), ""]
    distinct = {fmt_setting(c.chosen.setting) for c in choices if c.chosen}
    if len(distinct) == 1 and len(choices) > 1:
        lines += ["Every cell chose the same values: at this grid the strategies prefer the same rates.", ""]
    return lines


def panel_and_line(cell: Cell) -> tuple[str, str]:
    """(the panel: what the cell sets besides its strategy, e.g. `data.per_class=50`; the line: its
    strategy), so that each panel compares strategies under the same other settings."""
    varied = cell.name.split(",")  # the name holds only what varies between cells (key=value, ...)
    strategy = next((o.partition("=")[2] for o in varied if o.startswith(f"{STRATEGY}=")), None)
    rest = ",".join(o for o in varied if not o.startswith(f"{STRATEGY}="))
    return (rest or "all", strategy) if strategy else ("all", cell.name)


def plot(sweep_dir: Path, out_dir: Path) -> Path | None:
    """tuning.png: one panel per setting besides the strategy (data size, backbone, ...), one line per
    strategy (and per non-numeric tuned value) of the validation score against the head's rate; a strategy
    keeps its colour in every panel."""
    cells = read_plan(sweep_dir)
    if not cells:
        return None
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    choices = decide(sweep_dir, cells)
    panels = list(dict.fromkeys(panel_and_line(c.cell)[0] for c in choices))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.2 * columns + 2.2, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    styles: dict[str, tuple] = {}  # line label -> (colour, dash): 10 colours, then dashed, then dotted
    palette = colormaps["tab10"].colors
    for choice in choices:
        panel, strategy = panel_and_line(choice.cell)
        ax = axes[panels.index(panel)]
        lines: dict[str, list[tuple[float, float]]] = {}
        other_of: dict[str, dict[str, str]] = {}
        for s in choice.scored:
            if s.head_lr is None or s.score is None or math.isnan(s.score):
                continue
            other = {k: v for k, v in s.candidate.setting.items() if number(v) is None}
            label = strategy + (f" ({fmt_setting(other)})" if other else "")
            lines.setdefault(label, []).append((s.head_lr, s.score))
            other_of[label] = other
        for label, points in lines.items():
            n = styles.setdefault(label, (len(styles) % 10, len(styles) // 10))
            colour, dash = palette[n[0]], ["-", "--", ":"][min(n[1], 2)]
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", color=colour, linestyle=dash, label=label)
            best = next((s for s in choice.scored if s.candidate is choice.chosen), None)
            chosen_other = {
                k: v for k, v in (best.candidate.setting if best else {}).items() if number(v) is None
            }
            if best and best.head_lr in xs and chosen_other == other_of[label]:
                ax.plot([best.head_lr], [best.score], marker="*", markersize=14, color=colour)
    monitor = next((c.monitor for c in choices if c.monitor), "validation metric")
    for ax, panel in zip(axes, panels, strict=False):
        ax.set_xscale("log")
        ax.set_title(panel, fontsize="medium")
        ax.set_xlabel("head learning rate (head_lr × lr_scale)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].set_ylabel(f"best {monitor} (validation)")
    handles: dict[str, Any] = {}  # one legend entry per line label, whichever panel drew it first
    for ax in axes[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    fig.suptitle("Tuning on the validation split; ★ the value each strategy keeps", fontsize="medium")
    path = out_dir / "tuning.png"
    fig.savefig(path, dpi=110)
    return path
