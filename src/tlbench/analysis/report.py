"""Many runs → one table and a few charts: `python -m tlbench.report outputs/multirun/<sweep>`.

Reads every results.json below a folder and writes, into that folder:
    results.csv                  one row per run folder (complete, failed or missing)
    summary.md / summary.json    strategy × backbone × data size: mean ± std over seeds, the best strategy,
                                 the statistical verdict (verdict.py), where strategies cross, the
                                 cost/accuracy Pareto table
    accuracy_by_strategy.png     test accuracy per strategy, grouped by backbone, with error bars
    learning_curve_<backbone>.png  test accuracy vs images per class, where a sweep varied data.per_class
    pareto.png                   accuracy against wall time, train images/s, trainable params, peak memory
    reliability_<backbone>.png   reliability diagram per strategy, from the runs' predictions.csv

A run folder whose claim a live process holds is running; one with interrupted.txt was stopped by a
signal (a re-run continues it); one with error.txt and no results.json failed; one with Hydra's .hydra/
and none of these is missing (killed or timed out). All are listed, never dropped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.analysis import calibration, pareto, verdict
from tlbench.models.strategies import STRATEGIES
from tlbench.results.predictions import Predictions, read_predictions
from tlbench.run.folder import ERROR_FILE, INTERRUPTED_FILE, RESULTS_FILE, claim_holder

# What a comparison is grouped by; the seed (and under k-fold the fold) is the replicate axis: replicate_of.
CONTEXT_KEYS = ("data", "backbone", "per_class")
METRICS = {"test/acc": "test acc", "test/f1_macro": "macro-F1", "test/auroc": "AUROC", "test/ece": "ECE"}
COSTS = {
    "wall_time_s": "wall time (s)",
    "train_images_per_s": "train img/s",
    "trainable_params": "trainable params",
    "peak_memory_mb": "peak mem (MB)",
}
RANK_BY = "test/acc"
# The strategy table's order (least to most of the backbone trained); unknown ones follow alphabetically.
STRATEGY_ORDER = tuple(STRATEGIES)
ALL = "all"


@dataclass
class Run:
    path: Path
    results: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        return self.results.get("params", {})

    @property
    def num_classes(self) -> int | None:
        classes = self.results.get("classes") or self.results.get("per_class_acc")
        return len(classes) if classes else None

    def get(self, key: str) -> float | None:
        """A metric or a cost of this run as a number (None when absent); AUROC for two classes only."""
        if key == "test/auroc" and (self.num_classes or 2) > 2:
            return None
        value = self.results.get("metrics", {}).get(key, self.results.get(key))
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Problem:
    path: Path
    status: str  # "running" | "interrupted" | "failed" | "missing"
    detail: str


@dataclass
class Found:
    root: Path
    runs: list[Run] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    missing: list[Problem] = field(default_factory=list)
    interrupted: list[Problem] = field(default_factory=list)
    running: list[Problem] = field(default_factory=list)

    @property
    def has_outcomes(self) -> bool:
        """Whether any run got far enough to say how it went (missing folders say nothing)."""
        return bool(self.runs or self.failed or self.interrupted or self.running)

    @property
    def unfinished(self) -> list[Problem]:
        """Every run folder without complete results, in the order the report lists them."""
        return [*self.running, *self.interrupted, *self.failed, *self.missing]


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std (ddof=1); None when fewer than two values
    n: int


@dataclass
class Group:
    data: str
    backbone: str
    per_class: int | str
    strategy: str
    seeds: list[Any]  # each run's replicate_of: its seed, or (seed, fold) under k-fold
    stats: dict[str, Stat]
    # Other params that differ between runs of the same strategy (learning rates of an Optuna sweep, ...):
    # runs that differ in them are never averaged together.
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> tuple[str, str, int | str]:
        return self.data, self.backbone, self.per_class

    @property
    def label(self) -> str:
        return strategy_label(self.strategy, self.setting)


def strategy_label(strategy: str, setting: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in setting.items())
    return f"{strategy} ({extra})" if extra else strategy


@dataclass
class Verdict:
    data: str
    backbone: str
    per_class: int | str
    best: str
    best_stat: Stat
    runner_up: str | None = None
    runner_up_stat: Stat | None = None
    margin: float | None = None
    pooled_std: float | None = None
    margin_in_spread: float | None = None
    note: str = ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(empty error.txt)"


def find_runs(root: str | Path) -> Found:
    """Every run folder below root (root included): finished, running, interrupted, failed and missing."""
    root = Path(root)
    found = Found(root)
    folders = {p.parent for name in (RESULTS_FILE, ERROR_FILE, INTERRUPTED_FILE) for p in root.rglob(name)}
    folders |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    for folder in sorted(folders):
        results, why = read_results(folder / RESULTS_FILE)
        holder = claim_holder(folder)
        if holder is not None:  # first: a forced re-run in progress is running, whatever the folder holds
            found.running.append(Problem(folder, "running", f"running: {holder}"))
        elif results is not None:
            found.runs.append(Run(folder, results))
        elif (folder / INTERRUPTED_FILE).exists():
            text = (folder / INTERRUPTED_FILE).read_text(errors="replace")
            found.interrupted.append(Problem(folder, "interrupted", last_line(text)))
        elif (folder / ERROR_FILE).exists():
            found.failed.append(
                Problem(folder, "failed", last_line((folder / ERROR_FILE).read_text(errors="replace")))
            )
        else:
            found.missing.append(Problem(folder, "missing", why))
    return found


def counts(found: Found) -> dict[str, int]:
    """Run folders by state; running and interrupted only when there are some (most reports have none)."""
    extra = {"interrupted": len(found.interrupted), "running": len(found.running)}
    return {
        "complete": len(found.runs),
        "failed": len(found.failed),
        "missing": len(found.missing),
        **{k: v for k, v in extra.items() if v},
    }


def count_line(found: Found) -> str:
    """`3 complete, 0 failed, 2 missing, 1 interrupted`: the sweep's state in one line."""
    return ", ".join(f"{n} {state}" for state, n in counts(found).items())


def read_results(path: Path) -> tuple[dict | None, str]:
    """The results if the run finished, else None and why not."""
    if not path.exists():
        return None, "no results.json and no error.txt (killed or timed out)"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"results.json is unreadable ({error})"
    if not isinstance(results, dict) or results.get("status") != "complete":
        status = results.get("status") if isinstance(results, dict) else type(results).__name__
        return None, f"results.json has status {status!r}, not 'complete'"
    return results, ""


def data_size(per_class: Any) -> int | str:
    return ALL if per_class is None else int(per_class)


def replicate_of(run: Run) -> Any:
    """Which replicate of its setting a run is: its seed, or (seed, fold) under k-fold cross-validation
    (runs from before data.folds have no fold). A setting is averaged, and strategies are paired, over it."""
    seed, fold = run.params.get("seed"), run.params.get("fold")
    return seed if fold is None else (seed, fold)


def context_of(run: Run) -> tuple[str, str, int | str]:
    p = run.params
    return str(p.get("data", "?")), str(p.get("backbone", "?")), data_size(p.get("per_class"))


def mean_std(values: list[float]) -> Stat:
    if not values:
        return Stat(None, None, 0)
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return Stat(float(array.mean()), std, len(array))


def strategy_rank(name: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER), name)


def size_rank(per_class: int | str) -> tuple[int, int]:
    return (1, 0) if per_class == ALL else (0, int(per_class))


def cell_of(run: Run) -> tuple:
    return (*context_of(run), str(run.params.get("strategy", "?")))


def varying_params(runs: list[Run]) -> list[str]:
    """Params besides the grouping keys and the replicate (seed, fold) that take more than one value among
    the runs of one data × backbone × data size × strategy cell."""
    fixed = {*CONTEXT_KEYS, "strategy", "seed", "fold"}
    values: dict[tuple, set[str]] = {}
    keys = {k for run in runs for k in run.params} - fixed
    for run in runs:
        for k in keys:
            values.setdefault((cell_of(run), k), set()).add(json.dumps(run.params.get(k), sort_keys=True))
    return sorted({k for (_, k), seen in values.items() if len(seen) > 1})


def summarize(runs: list[Run]) -> list[Group]:
    """One group per data × backbone × data size × strategy (× any other param that varies within one),
    with mean ± std over its replicates (seeds, or seeds × folds)."""
    split = varying_params(runs)
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        setting = tuple((k, run.params.get(k)) for k in split)
        by_key.setdefault((*cell_of(run), setting), []).append(run)
    groups = []
    for (data, backbone, per_class, strategy, setting), members in by_key.items():
        stats = {
            key: mean_std([v for r in members if (v := r.get(key)) is not None]) for key in (*METRICS, *COSTS)
        }
        seeds = sorted((replicate_of(r) for r in members), key=verdict.seed_key)
        groups.append(Group(data, backbone, per_class, strategy, seeds, stats, dict(setting)))
    return sorted(
        groups,
        key=lambda g: (g.data, g.backbone, size_rank(g.per_class), strategy_rank(g.strategy), str(g.setting)),
    )


def pooled_std(a: Stat, b: Stat) -> float | None:
    """sqrt(((n1-1)·s1² + (n2-1)·s2²) / (n1+n2-2)): the seed-to-seed spread of both groups together."""
    dof = a.n + b.n - 2
    if dof <= 0:
        return None
    squares = sum((s.n - 1) * s.std**2 for s in (a, b) if s.std is not None)
    return math.sqrt(squares / dof)


def judge(groups: list[Group], metric: str = RANK_BY) -> list[Verdict]:
    """Per data × backbone × data size: the best strategy by mean `metric`, and its lead over the next one
    in units of their pooled standard deviation."""
    contexts: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.stats[metric].mean is not None:
            contexts.setdefault(g.context, []).append(g)
    verdicts = []
    for (data, backbone, per_class), members in contexts.items():
        ranked = sorted(members, key=lambda g: -g.stats[metric].mean)
        best = ranked[0]
        verdict = Verdict(data, backbone, per_class, best.label, best.stats[metric])
        if len(ranked) == 1:
            verdict.note = "only one strategy ran"
        else:
            second = ranked[1]
            verdict.runner_up, verdict.runner_up_stat = second.label, second.stats[metric]
            verdict.margin = best.stats[metric].mean - second.stats[metric].mean
            verdict.pooled_std = pooled_std(best.stats[metric], second.stats[metric])
            if verdict.pooled_std is None:
                verdict.note = "n=1: no spread"
            elif verdict.pooled_std == 0:
                verdict.note = "no spread: every seed gave the same value"
            else:
                verdict.margin_in_spread = verdict.margin / verdict.pooled_std
        verdicts.append(verdict)
    return verdicts


def decimals(key: str, value: float) -> int:
    if key in METRICS:
        return 4
    return 1 if abs(value) < 100 and key != "trainable_params" else 0


def fmt_stat(stat: Stat, key: str) -> str:
    """`mean ± std`, both at the mean's precision; `mean ± –` for a single run."""
    if stat.mean is None:
        return "–"
    places = decimals(key, stat.mean)
    mean = f"{stat.mean:,.{places}f}"
    if key == "trainable_params" and not stat.std:
        return mean  # a property of the setting, the same for every seed
    return f"{mean} ± {'–' if stat.std is None else f'{stat.std:,.{places}f}'}"


def fmt_size(per_class: int | str) -> str:
    return ALL if per_class == ALL else str(per_class)


def size_label(per_class: int | str) -> str:
    return "all images" if per_class == ALL else f"{per_class}/class"


def shown_metrics(groups: list[Group]) -> list[str]:
    """AUROC (two classes only) and ECE (runs from before it was measured) only when some run has them."""
    return [k for k in METRICS if k not in ("test/auroc", "test/ece") or any(g.stats[k].n for g in groups)]


def render_table(groups: list[Group]) -> str:
    """The summary as a Markdown table (also printed to the terminal)."""
    if not groups:
        return "(no finished runs)"
    metrics = shown_metrics(groups)
    header = [
        "data",
        "backbone",
        "images/class",
        "strategy",
        "n",
        *(METRICS[k] for k in metrics),
        *COSTS.values(),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        cells = [g.data, g.backbone, fmt_size(g.per_class), g.label, str(len(g.seeds))]
        cells += [fmt_stat(g.stats[k], k) for k in (*metrics, *COSTS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_verdict(v: Verdict, metric: str = RANK_BY) -> str:
    where = f"**{v.backbone}** on {v.data}, {fmt_size(v.per_class)} images/class"
    best = f"**{v.best}** ({fmt_stat(v.best_stat, metric)})"
    if v.runner_up is None:
        return f"- {where}: {best}; {v.note}."
    second = f"{v.runner_up} ({fmt_stat(v.runner_up_stat, metric)})"
    lead = f"by {v.margin:.4f} {METRICS[metric]}"
    if v.margin_in_spread is None:
        return f"- {where}: {best} beats {second} {lead}; {v.note}."
    sds = f"{v.margin_in_spread:.2f} pooled SD"
    return f"- {where}: {best} beats {second} {lead} = {sds} (n = {v.best_stat.n} and {v.runner_up_stat.n})."


def relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else "."


# ------------------------------------------------------------------------------ the statistical verdict
def load_predictions(runs: list[Run]) -> dict[Path, Predictions | None]:
    return {run.path: read_predictions(run.path) for run in runs}


def arms_of(
    runs: list[Run], predictions: dict[Path, Predictions | None]
) -> dict[tuple, dict[str, dict[Any, verdict.Sample]]]:
    """context -> strategy label (as in the table) -> replicate (seed, or seed and fold) -> that run's
    accuracy and per-image scores. A replicate that ran twice counts once: the run folder that sorts last."""
    split = varying_params(runs)
    arms: dict[tuple, dict[str, dict[Any, verdict.Sample]]] = {}
    for run in sorted(runs, key=lambda r: r.path):
        label = strategy_label(str(run.params.get("strategy", "?")), {k: run.params.get(k) for k in split})
        found = predictions.get(run.path)
        sample = verdict.Sample(
            run.get(RANK_BY), found.items if found else None, found.correct if found else None
        )
        arms.setdefault(context_of(run), {}).setdefault(label, {})[replicate_of(run)] = sample
    return arms


def decide(runs: list[Run], predictions: dict[Path, Predictions | None]) -> list[verdict.GroupVerdict]:
    """The verdict of each data × backbone × data size (verdict.py)."""
    arms = arms_of(runs, predictions)
    contexts = sorted(arms, key=lambda c: (c[0], c[1], size_rank(c[2])))
    return [verdict.judge(context, arms[context]) for context in contexts]


def oriented(decision: verdict.GroupVerdict, a: str, b: str) -> verdict.Comparison | None:
    """The comparison of a and b in this group, read as a − b."""
    for c in decision.comparisons:
        if (c.a, c.b) == (a, b):
            return c
        if (c.a, c.b) == (b, a):
            return c.flipped()
    return None


def find_crossings(decisions: list[verdict.GroupVerdict]) -> list[tuple[tuple[str, str], verdict.Crossing]]:
    """Per data × backbone that ran two or more data sizes: for every pair of strategies, where one
    overtakes the other (or that it never does)."""
    curves: dict[tuple[str, str], list[verdict.GroupVerdict]] = {}
    for d in decisions:
        data, backbone, per_class = d.context
        if per_class != ALL:
            curves.setdefault((data, backbone), []).append(d)
    found = []
    for key, members in curves.items():
        members.sort(key=lambda d: d.context[2])
        labels = sorted({label for d in members for label, _ in d.ranking}, key=strategy_rank)
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                points = [(d.context[2], c) for d in members if (c := oriented(d, a, b)) is not None]
                if len(points) >= 2 and all(not math.isnan(c.diff) for _, c in points):
                    found.append((key, verdict.crossing([n for n, _ in points], [c for _, c in points])))
    return found


def where(context: tuple) -> str:
    data, backbone, per_class = context
    return f"**{backbone}** on {data}, {fmt_size(per_class)} images/class"


def render_verdicts(decisions: list[verdict.GroupVerdict]) -> list[str]:
    return [f"- {where(d.context)}: {d.text}." for d in decisions]


def render_comparisons(decision: verdict.GroupVerdict) -> list[str]:
    lines = [
        "  | A − B | difference [95% interval] | p | Holm p | method | seeds | images |",
        "  |---|---|---|---|---|---|---|",
    ]
    for c in decision.comparisons:
        method = c.method + (f" ({c.note})" if c.note else "")
        cells = [f"{c.a} − {c.b}", verdict.fmt_diff(c), verdict.fmt_p(c.p), verdict.fmt_p(c.p_holm), method]
        cells += [str(len(c.seeds)), "–" if c.n_images is None else str(c.n_images)]
        lines.append("  | " + " | ".join(cells) + " |")
    return lines


def render_crossings(crossings: list[tuple[tuple[str, str], verdict.Crossing]]) -> list[str]:
    return [f"- **{backbone}** on {data}: {c.text}." for (data, backbone), c in crossings]


def terminal_verdict(runs: list[Run]) -> str:
    """The verdict (and crossings) as the sweep and `python -m tlbench.report` print them."""
    decisions = decide(runs, load_predictions(runs))
    lines = ["Verdict (paired bootstrap over seeds and test images, Holm-corrected):"]
    lines += render_verdicts(decisions)
    crossings = find_crossings(decisions)
    if crossings:
        lines += ["", "Where strategies cross:", *render_crossings(crossings)]
    return "\n".join(line.replace("**", "") for line in lines)


# ------------------------------------------------------------------------------- cost and calibration
def pareto_points(groups: list[Group]) -> list[pareto.Point]:
    points = [
        pareto.Point(
            f"{g.data}, {size_label(g.per_class)}",
            g.backbone,
            g.label,
            g.stats[RANK_BY].mean,
            g.stats[RANK_BY].std,
            {k: g.stats[k].mean for k in pareto.AXES},
        )
        for g in groups
        if g.stats[RANK_BY].mean is not None
    ]
    return pareto.mark_dominated(points)


def plot_reliability(
    groups: list[Group], runs: list[Run], predictions: dict[Path, Predictions | None], out_dir: Path
) -> list[Path]:
    """reliability_<backbone>.png: a panel per data × data size, a curve per strategy (seeds pooled)."""
    split = varying_params(runs)
    ece = {(g.context, g.label): g.stats["test/ece"] for g in groups}
    pooled: dict[str, dict[tuple, dict[str, list[Predictions]]]] = {}
    for run in sorted(runs, key=lambda r: (size_rank(context_of(r)[2]), strategy_rank(cell_of(r)[3]))):
        found = predictions.get(run.path)
        if found is None:
            continue
        label = strategy_label(str(run.params.get("strategy", "?")), {k: run.params.get(k) for k in split})
        context = context_of(run)
        pooled.setdefault(context[1], {}).setdefault(context, {}).setdefault(label, []).append(found)
    paths = []
    for backbone, contexts in sorted(pooled.items()):
        panels = {}
        for context, by_label in contexts.items():
            curves = []
            for label, parts in by_label.items():
                stat = ece.get((context, label))
                shown = f" (ECE {fmt_stat(stat, 'test/ece')})" if stat and stat.mean is not None else ""
                curves.append(
                    calibration.Curve(
                        label,
                        np.concatenate([p.confidence for p in parts]),
                        np.concatenate([p.correct for p in parts]),
                        shown,
                    )
                )
            panels[f"{context[0]}, {size_label(context[2])}"] = curves
        path = out_dir / f"reliability_{backbone.replace('/', '_')}.png"
        paths.append(calibration.plot(panels, f"{backbone}: reliability (test images of every seed)", path))
    return paths


def json_safe(value: Any) -> Any:
    """NaN and infinity as null: summary.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@dataclass
class Analysis:
    """What the report says beyond the table: the verdicts, crossings and cost frontier."""

    decisions: list[verdict.GroupVerdict]
    crossings: list[tuple[tuple[str, str], verdict.Crossing]]
    points: list[pareto.Point]


def write_summary_md(
    found: Found, groups: list[Group], verdicts: list[Verdict], path: Path, analysis: Analysis
) -> None:
    total = len(found.runs) + len(found.unfinished)
    others = ", ".join(f"{n} {state}" for state, n in counts(found).items() if state != "complete")
    lines = [
        f"# Sweep report: {found.root}",
        "",
        f"{len(found.runs)} of {total} runs complete, {others}.",
        "",
        "## Results",
        "",
        "Each cell is mean ± sample standard deviation (ddof=1) over the seeds (× folds, under k-fold) of "
        "that setting; n is the number of runs; – where there is a single run. AUROC only for two-class "
        "data. Peak memory is GPU memory allocated on a GPU, the process's peak resident memory on a CPU.",
        "",
        render_table(groups),
        "",
        "## Best strategy",
        "",
        f"Ranked by mean {METRICS[RANK_BY]}. The lead over the runner-up is also given in pooled standard "
        "deviations: sqrt(((n1-1)·s1² + (n2-1)·s2²) / (n1+n2-2)), the seed-to-seed spread of the two "
        "strategies together (an effect size, like Cohen's d). With three seeds per strategy a lead needs "
        "about 2.3 pooled SD to pass a two-sided t-test at the 5% level; a smaller one is within "
        "seed-to-seed noise.",
        "",
        *(describe_verdict(v) for v in verdicts),
    ]
    if analysis.decisions:
        lines += [
            "",
            "## Verdict",
            "",
            f"Every pair of strategies within one backbone × data × data size, on {METRICS[RANK_BY]}: the "
            "difference A − B with a 95% interval from a paired bootstrap over seeds and test images (runs "
            "with the same seed share subset and split, and are compared image by image), a two-sided "
            "p-value, and Holm's correction over the pairs of the group. A strategy wins when it is "
            "separated (Holm p < 0.05) from every other; else the strategies not separated from the best "
            "cannot be told apart, and the seeds that would separate them are estimated as the smallest n "
            "with t(0.975, n−1)·sqrt(s²/n + v) < |difference| (s: between-seed SD of the difference, v: "
            "test-image variance that more seeds do not reduce). Runs without predictions.csv fall back to "
            "a paired t-test over seeds, and say so. Details: `tlbench/verdict.py`.",
            "",
        ]
        if any(run.params.get("fold") is not None for run in found.runs):
            lines += [
                "Cross-validated runs (data.folds) are paired by seed and fold, and a seed above is one "
                "(seed, fold) pair. Folds share most of their training images, so the spread between folds "
                "understates how much results vary with new data: read these intervals as optimistic.",
                "",
            ]
        for decision in analysis.decisions:
            lines += [*render_verdicts([decision]), "", *render_comparisons(decision), ""]
    if analysis.crossings:
        lines += [
            "## Where strategies cross",
            "",
            "Per backbone over the data sizes of the sweep: from which images per class one strategy "
            "overtakes another (the last change of lead, interpolated in log images/class; its 95% interval "
            "from the bootstrap replicates of each size).",
            "",
            *render_crossings(analysis.crossings),
            "",
        ]
    if analysis.points:
        lines += [
            "## Cost and accuracy",
            "",
            f"Mean {METRICS[RANK_BY]} against mean cost over seeds (`pareto.png`). A configuration is "
            "dominated when another on the same data and data size is as good on every axis (accuracy, wall "
            "time, train images/s, trainable parameters, peak memory) and better on at least one.",
            "",
            pareto.render_table(analysis.points, METRICS[RANK_BY]),
            "",
            "## Calibration",
            "",
            "ECE in the results table is each run's expected calibration error on the test set (15 bins, "
            "torchmetrics). `reliability_<backbone>.png`: accuracy against confidence per strategy, from "
            "the runs' predictions.csv.",
        ]
    duplicates = [g for g in groups if len(set(map(str, g.seeds))) < len(g.seeds)]
    if duplicates:
        lines += ["", "Settings that ran a seed more than once (each run counts in n):"]
        lines += [
            f"- {g.data} / {g.backbone} / {fmt_size(g.per_class)} / {g.label}: seeds {g.seeds}"
            for g in duplicates
        ]
    for title, problems in (
        ("Running runs", found.running),
        ("Interrupted runs", found.interrupted),
        ("Failed runs", found.failed),
        ("Missing runs", found.missing),
    ):
        if problems or title in ("Failed runs", "Missing runs"):
            lines += ["", f"## {title} ({len(problems)})", ""]
            lines += [f"- `{relative(p.path, found.root)}`: {p.detail}" for p in problems] or ["None."]
    path.write_text("\n".join(lines) + "\n")


def stat_json(stat: Stat) -> dict[str, Any]:
    return {"mean": stat.mean, "std": stat.std, "n": stat.n}


def write_summary_json(
    found: Found, groups: list[Group], verdicts: list[Verdict], path: Path, analysis: Analysis
) -> None:
    payload = {
        "root": str(found.root),
        "counts": counts(found),
        "std": "sample standard deviation over seeds (ddof=1); null when n=1",
        "groups": [
            {
                "data": g.data,
                "backbone": g.backbone,
                "per_class": g.per_class,
                "strategy": g.strategy,
                "setting": g.setting,
                "n": len(g.seeds),
                "seeds": g.seeds,
                **{key: stat_json(g.stats[key]) for key in (*METRICS, *COSTS)},
            }
            for g in groups
        ],
        "best": [
            {
                "data": v.data,
                "backbone": v.backbone,
                "per_class": v.per_class,
                "metric": RANK_BY,
                "best": v.best,
                "runner_up": v.runner_up,
                "margin": v.margin,
                "pooled_std": v.pooled_std,
                "margin_in_pooled_std": v.margin_in_spread,
                "note": v.note,
            }
            for v in verdicts
        ],
        "verdict": [
            {"data": d.context[0], "backbone": d.context[1], "per_class": d.context[2], "metric": RANK_BY}
            | d.to_json()
            for d in analysis.decisions
        ],
        "crossings": [
            {"data": data, "backbone": backbone} | c.to_json() for (data, backbone), c in analysis.crossings
        ],
        "pareto": [
            {
                "context": p.context,
                "backbone": p.backbone,
                "strategy": p.strategy,
                RANK_BY: p.accuracy,
                **p.costs,
                "dominated_by": p.dominated_by,
            }
            for p in analysis.points
        ],
        "failed": [{"run_dir": relative(p.path, found.root), "error": p.detail} for p in found.failed],
        "missing": [{"run_dir": relative(p.path, found.root), "why": p.detail} for p in found.missing],
        "running": [{"run_dir": relative(p.path, found.root), "by": p.detail} for p in found.running],
        "interrupted": [
            {"run_dir": relative(p.path, found.root), "why": p.detail} for p in found.interrupted
        ],
    }
    path.write_text(json.dumps(json_safe(payload), indent=2) + "\n")


def overrides_of(folder: Path) -> str:
    """The run's command-line overrides as Hydra saved them (.hydra/overrides.yaml), one line."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    import yaml  # PyYAML comes with OmegaConf

    loaded = yaml.safe_load(path.read_text()) or []
    return " ".join(map(str, loaded))


def cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else ("" if value is None else value)


def write_csv(found: Found, path: Path) -> None:
    """One row per run folder (failed and missing ones too): status, params, every metric, costs."""
    first = ["data", "backbone", "strategy", "per_class", "seed"]
    params = sorted({k for r in found.runs for k in r.params} - set(first))
    metrics = sorted({k for r in found.runs for k in r.results.get("metrics", {})})
    costs = ["wall_time_s", "train_images_per_s", "trainable_params", "total_params", "peak_memory_mb"]
    costs += ["peak_memory_kind", "device"]
    columns = ["run_dir", "status", *first, *params, *metrics, *costs, "overrides", "error"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for run in found.runs:
            row = {"run_dir": relative(run.path, found.root), "status": "complete"}
            row |= {k: cell(run.params.get(k)) for k in (*first, *params)}
            row["per_class"] = fmt_size(data_size(run.params.get("per_class")))
            row |= {k: cell(run.results.get("metrics", {}).get(k)) for k in metrics}
            row |= {k: cell(run.results.get(k)) for k in costs}
            row["overrides"] = " ".join(map(str, run.results.get("overrides", []))) or overrides_of(run.path)
            writer.writerow(row)
        for problem in found.unfinished:
            writer.writerow(
                {
                    "run_dir": relative(problem.path, found.root),
                    "status": problem.status,
                    "overrides": overrides_of(problem.path),
                    "error": problem.detail,
                }
            )


def plot_accuracy(groups: list[Group], path: Path, metric: str = RANK_BY) -> Path:
    """Bars of mean `metric` per strategy, grouped by backbone (and data / data size where they vary),
    with ±1 std error bars."""
    from matplotlib.figure import Figure

    contexts = list(dict.fromkeys(g.context for g in groups))
    series = list(dict.fromkeys(g.label for g in groups))
    vary_data = len({c[0] for c in contexts}) > 1
    vary_size = len({c[2] for c in contexts}) > 1
    labels = [
        b + (f"\n{d}" if vary_data else "") + (f"\n{size_label(s)}" if vary_size else "")
        for d, b, s in contexts
    ]
    width = 0.8 / len(series)
    # About 0.6 inch a bar: room for its label (mean, std, n) at the smallest font.
    fig = Figure(figsize=(max(6.0, 1.2 + len(contexts) * len(series) * 0.6), 4.5), layout="constrained")
    ax = fig.add_subplot()
    lookup = {(g.context, g.label): g.stats[metric] for g in groups}
    for i, label in enumerate(series):
        stats = [lookup.get((c, label), Stat(None, None, 0)) for c in contexts]
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(contexts))]
        means = [s.mean if s.mean is not None else np.nan for s in stats]
        errors = [s.std or 0.0 for s in stats]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=label)
        # Strategies often differ by less than a bar's outline: the numbers say what the heights cannot.
        for x, stat, error in zip(xs, stats, errors, strict=True):
            if stat.mean is not None:
                text = f"{stat.mean:.3f}\n±{'–' if stat.std is None else f'{stat.std:.3f}'}\nn={stat.n}"
                ax.text(x, stat.mean + error + 0.01, text, ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(contexts)), labels)
    ax.set_ylabel(f"{METRICS[metric]} (mean ± std over seeds)")
    ax.set_ylim(0, 1.2)  # room for the labels above a bar near 1.0
    ax.set_yticks(np.linspace(0, 1, 6))
    datasets = sorted({c[0] for c in contexts})
    ax.set_title(f"{METRICS[metric]} by strategy" + ("" if vary_data else f" on {datasets[0]}"))
    ax.legend(title="strategy", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def plot_learning_curves(groups: list[Group], out_dir: Path, metric: str = RANK_BY) -> list[Path]:
    """Per backbone whose runs cover two or more data sizes: `metric` vs images per class (log scale), one
    line per strategy with a ±1 std band; dashed where the same strategy also ran on all the images."""
    from matplotlib.figure import Figure

    by_setting = {(*g.context, g.label): g for g in groups}
    paths = []
    for backbone in sorted({g.backbone for g in groups}):
        sized = [g for g in groups if g.backbone == backbone and g.per_class != ALL and g.stats[metric].n]
        if len({g.per_class for g in sized}) < 2:
            continue
        vary_data = len({g.data for g in sized}) > 1
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        lines = list(dict.fromkeys((g.data, g.label) for g in sorted(sized, key=lambda g: g.data)))
        dashed = False
        for data, label in lines:
            points = sorted(
                (g for g in sized if (g.data, g.label) == (data, label)), key=lambda g: g.per_class
            )
            xs = np.array([g.per_class for g in points], dtype=float)
            means = np.array([g.stats[metric].mean for g in points])
            stds = np.array([g.stats[metric].std or 0.0 for g in points])
            (line,) = ax.plot(xs, means, marker="o", label=f"{label} ({data})" if vary_data else label)
            ax.fill_between(xs, means - stds, means + stds, color=line.get_color(), alpha=0.2)
            everything = by_setting.get((data, backbone, ALL, label))
            if everything is not None and everything.stats[metric].mean is not None:
                ax.axhline(everything.stats[metric].mean, color=line.get_color(), linestyle="--", alpha=0.6)
                dashed = True
        if dashed:
            ax.plot([], [], color="grey", linestyle="--", label="all images (dashed)")
        ax.set_xscale("log")
        ticks = sorted({g.per_class for g in sized})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training images per class (log scale)")
        ax.set_ylabel(f"{METRICS[metric]} (mean ± std over seeds)")
        ax.set_title(f"{backbone}: {METRICS[metric]} vs data size")
        ax.legend(title="strategy", fontsize="small")
        ax.grid(alpha=0.3)
        path = out_dir / f"learning_curve_{backbone.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def write_report(found: Found, out_dir: str | Path) -> Path:
    """Every output file of the report into out_dir; returns the path of summary.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = summarize(found.runs)
    verdicts = judge(groups)
    predictions = load_predictions(found.runs)
    decisions = decide(found.runs, predictions)
    analysis = Analysis(decisions, find_crossings(decisions), pareto_points(groups))
    write_csv(found, out_dir / "results.csv")
    write_summary_json(found, groups, verdicts, out_dir / "summary.json", analysis)
    write_summary_md(found, groups, verdicts, out_dir / "summary.md", analysis)
    if groups:
        plot_accuracy(groups, out_dir / "accuracy_by_strategy.png")
        plot_learning_curves(groups, out_dir)
    if analysis.points:
        pareto.plot(analysis.points, out_dir / "pareto.png", METRICS[RANK_BY])
    plot_reliability(groups, found.runs, predictions, out_dir)
    return out_dir / "summary.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tlbench.report",
        description="Summarize every results.json below a folder (a sweep, or all of outputs/).",
    )
    parser.add_argument("folder", type=Path, help="e.g. outputs/multirun/strategies")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: the folder)"
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    found = find_runs(args.folder)
    if not found.has_outcomes:
        print(
            f"error: no {RESULTS_FILE} or {ERROR_FILE} below {args.folder}. Point it at a sweep folder "
            "such as outputs/multirun/<sweep name>, or at outputs/ for every run.",
            file=sys.stderr,
        )
        return 1
    summary = write_report(found, args.out or args.folder)
    print(render_table(summarize(found.runs)))
    print("\n" + terminal_verdict(found.runs))
    print(f"\n{count_line(found)}")
    print(f"report: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
