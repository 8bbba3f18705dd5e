"""What `tlbench.rank` found, and whether it was right: the rank table and chart, and the report's check of
each score against the fine-tuned test accuracy of a sweep over the same backbones (Kendall τ, weighted τ,
and how often the top-scored backbone was the best one).

The report reads the scores from rank.json files below the sweep folder (`python -m tlbench.rank
hydra.run.dir=<sweep folder>/rank ...`), not from features computed at report time: the report runs at the end
of every sweep, in seconds, without the images or the weights; ranking is what one runs before the sweep."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from tlbench.analysis.collect import Found, Run
from tlbench.analysis.markdown import code, md, table

RANK_FILE = "rank.json"
# Every score is higher-is-better. The probe is supervised: the baseline the label-free scores should beat.
SCORES = {"logme": "LogME", "leep": "LEEP", "nce": "NCE", "h_score": "H-score", "probe_acc": "probe acc"}
# The data keys that decide which images are the training split: a rank and a run must agree on them.
DATA_KEYS = (
    "source",
    "root",
    "in_chans",
    "image_size",
    "per_class",
    "val_fraction",
    "test_fraction",
    "folds",
)
ACC = "test/acc"


def fmt(value: float | None, key: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if key == "probe_acc" else f"{value:.4g}"


def render_rank_table(result: dict[str, Any]) -> str:
    """The terminal table of `tlbench.rank`: one row per backbone, best LogME first."""
    rows = sorted(result["backbones"], key=lambda r: -(r["scores"]["logme"] or -math.inf))
    header = ["backbone", *SCORES.values(), "dim", "embed s"]
    header[len(SCORES)] = f"probe acc ({result['folds']}-fold)"
    body = [
        [r["label"], *(fmt(r["scores"][k], k) for k in SCORES), str(r["feature_dim"])]
        + ["cached" if r["features_cached"] else f"{r['embed_seconds']:.0f}"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r['label']}: LEEP, NCE n/a ({r['source_note']})" for r in rows if r["source_note"]]
    where = result["data"].get("root") or result["data"]["source"]
    head = f"{result['train_images']} training images, {len(result['classes'])} classes ({where})"
    head += "; every score: higher is better"
    return "\n".join([head, "", *lines, *(["", *notes] if notes else [])])


def plot_rank(result: dict[str, Any], path: Path) -> Path:
    """One panel per score, a bar per backbone (n/a: no bar)."""
    from matplotlib.figure import Figure

    labels = [r["label"] for r in result["backbones"]]
    fig = Figure(figsize=(3.0 * len(SCORES), 0.6 + 0.45 * len(labels)), layout="constrained")
    axes = fig.subplots(1, len(SCORES), sharey=True)
    for ax, (key, name) in zip(axes, SCORES.items()):
        values = [r["scores"][key] for r in result["backbones"]]
        shown = [v if v is not None else 0.0 for v in values]
        ax.barh(range(len(labels)), shown, color=["C0" if v is not None else "none" for v in values])
        for i, v in enumerate(values):
            ax.text(0, i, f" {fmt(v, key)}", va="center", fontsize=8)
        ax.set_title(name)
        ax.axvline(0, color="grey", linewidth=0.5)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle("Transferability on the training split (higher is better)")
    fig.savefig(path, dpi=110)
    return path


def _same_path(a: Any, b: Any) -> bool:
    if not a or not b:
        return not a and not b
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def same_backbone(ranked: dict[str, Any], trained: dict[str, Any]) -> bool:
    """Whether a run trained the backbone a rank entry scored: name, weights, checkpoint."""
    if ranked["name"] != trained.get("name") or not _same_path(
        ranked["checkpoint"], trained.get("checkpoint")
    ):
        return False
    a, b = ranked["weights"], trained.get("weights")
    if ranked["name"] == "efficientnet_lite0" or ranked["name"].startswith("timm/"):
        return bool(a) == bool(b)  # any truthy tag means the one set of pretrained weights
    return a == b


def same_data(ranked: dict[str, Any], trained: dict[str, Any]) -> bool:
    return all(
        _same_path(ranked.get(k), trained.get(k)) if k == "root" else ranked.get(k) == trained.get(k)
        for k in DATA_KEYS
    )


@dataclass
class Check:
    """One rank.json against one strategy's runs."""

    rank_file: Path
    strategy: str
    labels: list[str]
    accuracy: list[float]  # mean test accuracy over seeds, per backbone
    seeds: int  # seeds every backbone ran
    scores: dict[str, list[float | None]]
    tau: dict[str, tuple[float, float]] = field(default_factory=dict)  # score → (Kendall τ, p)
    weighted_tau: dict[str, float] = field(default_factory=dict)
    top_hits: dict[str, tuple[int, int]] = field(default_factory=dict)  # score → (seeds it was best, seeds)
    scored: dict[str, int] = field(default_factory=dict)  # score → backbones it exists for


def check_ranking(rank_file: Path, ranking: dict[str, Any], runs: list[Run]) -> list[Check]:
    """Per strategy: the backbones of the rank that the sweep trained, their accuracies against each score."""
    matched: dict[str, dict[str, dict[Any, float]]] = {}  # strategy → label → seed → accuracy
    for run in runs:
        config, acc = run.results.get("config", {}), run.get(ACC)
        if acc is None or not same_data(ranking["data"], config.get("data", {})):
            continue
        for entry in ranking["backbones"]:
            if same_backbone(entry["backbone"], config.get("backbone", {})):
                matched.setdefault(run.strategy, {}).setdefault(entry["label"], {})[run.replicate] = acc
    checks = []
    for strategy, by_label in matched.items():
        entries = [e for e in ranking["backbones"] if e["label"] in by_label]
        labels = [e["label"] for e in entries]
        accuracy = [float(np.mean(list(by_label[label].values()))) for label in labels]
        common = set.intersection(*(set(by_label[label]) for label in labels))
        check = Check(rank_file, strategy, labels, accuracy, len(common), {})
        for key in SCORES:
            check.scores[key] = [e["scores"].get(key) for e in entries]
            # Over the backbones this score exists for (LEEP and NCE: those with a source classifier).
            scored = [i for i, v in enumerate(check.scores[key]) if v is not None]
            check.scored[key] = len(scored)
            if len(scored) < 3:
                continue
            values, accs = [check.scores[key][i] for i in scored], [accuracy[i] for i in scored]
            tau = stats.kendalltau(values, accs)
            check.tau[key] = (float(tau.statistic), float(tau.pvalue))
            check.weighted_tau[key] = float(stats.weightedtau(values, accs).statistic)
            top, rivals = labels[scored[int(np.argmax(values))]], [labels[i] for i in scored]
            # A seed counts as a hit when the top-scored backbone is (one of) the most accurate.
            hits = sum(by_label[top][s] >= max(by_label[label][s] for label in rivals) for s in common)
            check.top_hits[key] = (int(hits), len(common))
        checks.append(check)
    return checks


def find_checks(found: Found) -> tuple[list[Check], list[str]]:
    """Every rank.json below the sweep folder checked against its runs; plus a note per unreadable one."""
    checks, notes = [], []
    for path in sorted(Path(found.root).rglob(RANK_FILE)):
        try:
            ranking = json.loads(path.read_text())
            checks += check_ranking(path, ranking, found.runs)
        except (OSError, ValueError, KeyError, TypeError) as error:
            notes.append(f"{path}: not a rank.json of tlbench.rank ({type(error).__name__}: {error})")
    return checks, notes


def render_section(found: Found) -> list[str]:
    """The report's "Ranking before training" section; nothing when the sweep folder holds no rank.json."""
    checks, notes = find_checks(found)
    if not checks and not notes:
        return []
    lines = [
        "## Ranking before training",
        "",
        f"Scores from `tlbench.rank` ({RANK_FILE} below this folder) against the mean {ACC} over seeds of "
        "the same backbones fine-tuned here, per strategy: Kendall τ (with its p-value: with a handful of "
        "backbones, τ takes few values and one swapped pair moves it a lot), weighted τ (scipy's "
        "weightedtau: swaps among the best count more), and in how many seeds the top-scored backbone was "
        "the most accurate. LEEP and NCE need a source classifier: they are compared over the backbones "
        "that have one.",
        "",
    ]
    for c in checks:
        where = code(
            c.rank_file.relative_to(found.root) if c.rank_file.is_relative_to(found.root) else c.rank_file
        )
        lines += [f"**{md(c.strategy)}** ({where}, {len(c.labels)} backbones, {c.seeds} common seeds):", ""]
        accuracy = ", ".join(f"{md(label)} {acc:.3f}" for label, acc in zip(c.labels, c.accuracy))
        lines += [f"- mean {ACC}: {accuracy}", ""]
        rows = []
        for key, name in SCORES.items():
            if key not in c.tau:
                rows.append([name, str(c.scored[key]), "–", "–", "–", "needs ≥ 3 backbones with the score"])
                continue
            tau, p = c.tau[key]
            hits, seeds = c.top_hits[key]
            cells = [f"{tau:+.2f}", f"{p:.2f}", f"{c.weighted_tau[key]:+.2f}", f"{hits} of {seeds} seeds"]
            rows.append([name, str(c.scored[key]), *cells])
        header = ["score", "backbones", "Kendall τ", "p", "weighted τ", "top-scored was the most accurate"]
        lines += table(header, rows) + [""]
    lines += [f"- {md(note)}" for note in notes]
    return lines
