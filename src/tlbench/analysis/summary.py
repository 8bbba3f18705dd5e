"""What the runs say, computed once: one group per setting with mean ± std over its replicates, the verdict
of each data × backbone × data size (verdict.py), where strategies cross, and what accuracy costs (a
configuration is dominated when another on the same data and size is as good on every axis and better on
one). report.py writes it down, plots.py draws it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.analysis import crossings, ensemble, verdict
from tlbench.analysis.collect import ALL, Run
from tlbench.analysis.markdown import md, table
from tlbench.models.strategies import STRATEGIES
from tlbench.results.predictions import Predictions, read_predictions

METRICS = {"test/acc": "test acc", "test/f1_macro": "macro-F1", "test/auroc": "AUROC", "test/ece": "ECE"}
COSTS = {
    "wall_time_s": "wall time (s)",
    "train_images_per_s": "train img/s",
    "trainable_params": "trainable params",
    # What a task keeps beside the shared pretrained network (PEFT's storage cost; models/stages.py).
    "stored_params_per_task": "stored per task",
    "peak_memory_mb": "peak mem (MB)",
}
PARAMETER_COUNTS = ("trainable_params", "stored_params_per_task")  # whole numbers, spanning decades
RANK_BY = "test/acc"
MORE_IS_BETTER = {RANK_BY, "train_images_per_s"}  # the other costs are better the smaller
# Least to most of the backbone trained; unknown strategies follow in alphabetical order.
STRATEGY_ORDER = tuple(STRATEGIES)


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std (ddof=1); None when fewer than two values
    n: int


def mean_std(values: list[float]) -> Stat:
    if not values:
        return Stat(None, None, 0)
    array = np.asarray(values, dtype=float)
    return Stat(float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None, len(array))


@dataclass
class Group:
    """The runs of one setting: data × backbone × data size × strategy, and any other param that differs
    between runs of one strategy (the learning rates of an Optuna sweep, ...): runs that differ in one are
    never averaged together."""

    data: str
    backbone: str
    per_class: int | str
    strategy: str
    setting: dict[str, Any]
    runs: list[Run]

    @property
    def context(self) -> tuple[str, str, int | str]:
        return self.data, self.backbone, self.per_class

    @property
    def label(self) -> str:
        """The strategy as the tables, charts and verdict name it: `partial (head_lr=0.003)`."""
        extra = ", ".join(f"{k}={v}" for k, v in self.setting.items())
        return f"{self.strategy} ({extra})" if extra else self.strategy

    @property
    def name(self) -> str:
        return f"{self.backbone} / {self.label}"

    @property
    def seeds(self) -> list[Any]:
        return sorted((run.replicate for run in self.runs), key=verdict.seed_key)

    @cached_property
    def stats(self) -> dict[str, Stat]:
        return {
            key: mean_std([v for run in self.runs if (v := run.get(key)) is not None])
            for key in (*METRICS, *COSTS)
        }


def strategy_rank(name: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER), name)


def size_rank(per_class: int | str) -> tuple[int, int]:
    return (1, 0) if per_class == ALL else (0, int(per_class))


def varying_params(runs: list[Run]) -> list[str]:
    """Params besides the grouping keys and the replicate that vary within one cell."""
    fixed = {"data", "backbone", "per_class", "strategy", "seed", "fold"}
    keys = {k for run in runs for k in run.params} - fixed
    values: dict[tuple, set[str]] = {}
    for run in runs:
        for k in keys:
            cell = (*run.context, run.strategy, k)
            values.setdefault(cell, set()).add(json.dumps(run.params.get(k), sort_keys=True))
    return sorted({cell[-1] for cell, seen in values.items() if len(seen) > 1})


def summarize(runs: list[Run]) -> list[Group]:
    """One group per data × backbone × data size × strategy (× any other param that varies within one)."""
    split = varying_params(runs)
    members: dict[tuple, list[Run]] = {}
    for run in runs:
        setting = tuple((k, run.params.get(k)) for k in split)
        members.setdefault((*run.context, run.strategy, setting), []).append(run)
    groups = [Group(*key[:4], dict(key[4]), group_runs) for key, group_runs in members.items()]
    return sorted(
        groups,
        key=lambda g: (g.data, g.backbone, size_rank(g.per_class), strategy_rank(g.strategy), str(g.setting)),
    )


def decimals(key: str, value: float) -> int:
    if key in METRICS:
        return 4
    return 1 if abs(value) < 100 and key not in PARAMETER_COUNTS else 0


def fmt_mean(value: float | None, key: str) -> str:
    return "–" if value is None else f"{value:,.{decimals(key, value)}f}"


def fmt_stat(stat: Stat, key: str) -> str:
    """`mean ± std`, both at the mean's precision; `mean ± –` for a single run."""
    if stat.mean is None:
        return "–"
    if key in PARAMETER_COUNTS and not stat.std:
        return fmt_mean(stat.mean, key)  # a property of the setting, the same for every seed
    std = "–" if stat.std is None else f"{stat.std:,.{decimals(key, stat.mean)}f}"
    return f"{fmt_mean(stat.mean, key)} ± {std}"


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
    header = ["data", "backbone", "images/class", "strategy", "n", *(METRICS[k] for k in metrics)]
    header += COSTS.values()
    rows = (
        [md(g.data), md(g.backbone), str(g.per_class), md(g.label), str(len(g.runs))]
        + [fmt_stat(g.stats[k], k) for k in (*metrics, *COSTS)]
        for g in groups
    )
    return "\n".join(table(header, rows))


def samples_of(groups: list[Group], predictions: dict[Path, Predictions | None]) -> dict[tuple, dict]:
    """context -> strategy -> replicate -> verdict.Sample; a replicate run twice: the last folder counts."""
    samples: dict[tuple, dict[str, dict[Any, verdict.Sample]]] = {}
    for g in groups:
        arm = samples.setdefault(g.context, {}).setdefault(g.label, {})
        for run in sorted(g.runs, key=lambda r: r.path):
            p = predictions.get(run.path)
            scores = (p.items, p.correct) if p is not None else (None, None)
            arm[run.replicate] = verdict.Sample(run.get(RANK_BY), *scores)
    return samples


def predictions_by_arm(groups: list[Group], predictions: dict[Path, Predictions | None]) -> dict[tuple, dict]:
    """context -> strategy -> replicate -> Predictions, as samples_of pairs them (the last folder counts)."""
    found: dict[tuple, dict[str, dict[Any, Predictions]]] = {}
    for g in groups:
        arm = found.setdefault(g.context, {}).setdefault(g.label, {})
        for run in sorted(g.runs, key=lambda r: r.path):
            if (p := predictions.get(run.path)) is not None:
                arm[run.replicate] = p
    return found


def oriented(decision: verdict.GroupVerdict, a: str, b: str) -> verdict.Comparison | None:
    """The comparison of a and b in this group, read as a − b."""
    for c in decision.comparisons:
        if (c.a, c.b) == (a, b):
            return c
        if (c.a, c.b) == (b, a):
            return c.flipped()
    return None


def find_crossings(decisions: list[verdict.GroupVerdict]) -> list[tuple[tuple[str, str], crossings.Crossing]]:
    """Per data × backbone with two or more data sizes: for every pair of strategies, where one overtakes."""
    curves: dict[tuple[str, str], list[verdict.GroupVerdict]] = {}
    for d in decisions:
        data, backbone, per_class = d.context
        if per_class != ALL:
            curves.setdefault((data, backbone), []).append(d)
    found = []
    for key, members in curves.items():
        members.sort(key=lambda d: d.context[2])
        labels = sorted({label for d in members for label, _ in d.ranking}, key=strategy_rank)
        for a, b in combinations(labels, 2):
            points = [(d.context[2], c) for d in members if (c := oriented(d, a, b)) is not None]
            if len(points) >= 2 and all(not math.isnan(c.diff) for _, c in points):
                found.append((key, crossings.crossing([n for n, _ in points], [c for _, c in points])))
    return found


def goodness(group: Group) -> dict[str, float]:
    """Accuracy and every cost the runs measured, as numbers where larger is better."""
    means = {k: group.stats[k].mean for k in (RANK_BY, *COSTS)}
    return {k: v if k in MORE_IS_BETTER else -v for k, v in means.items() if v is not None}


def dominates(a: Group, b: Group) -> bool:
    """a is as good as b on every axis both have and better on at least one."""
    ga, gb = goodness(a), goodness(b)
    shared = ga.keys() & gb.keys()
    return all(ga[k] >= gb[k] for k in shared) and any(ga[k] > gb[k] for k in shared)


def pareto(groups: list[Group]) -> list[tuple[Group, list[str]]]:
    """Each group with an accuracy, and the configurations (`Group.name`) that dominate it."""
    ranked = [g for g in groups if g.stats[RANK_BY].mean is not None]
    return [
        (g, [o.name for o in ranked if (o.data, o.per_class) == (g.data, g.per_class) and dominates(o, g)])
        for g in ranked
    ]


@dataclass
class Analysis:
    """Everything the report says; `predictions` is None for a run without predictions.csv."""

    groups: list[Group]
    predictions: dict[Path, Predictions | None]
    verdicts: list[verdict.GroupVerdict]
    crossings: list[tuple[tuple[str, str], crossings.Crossing]]
    pareto: list[tuple[Group, list[str]]]
    ensembles: list[ensemble.Ensemble]


def analyse(runs: list[Run]) -> Analysis:
    groups = summarize(runs)
    predictions = {run.path: read_predictions(run.path) for run in runs}
    samples = samples_of(groups, predictions)  # contexts in the order of the groups
    verdicts = [verdict.judge(context, by_label) for context, by_label in samples.items()]
    by_arm = predictions_by_arm(groups, predictions)
    combined = [ensemble.ensemble(d, by_arm.get(d.context, {}), samples[d.context]) for d in verdicts]
    ensembles = [e for e in combined if e is not None]
    return Analysis(groups, predictions, verdicts, find_crossings(verdicts), pareto(groups), ensembles)
