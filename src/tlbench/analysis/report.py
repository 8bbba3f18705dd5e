"""Many runs → one table and a few charts: `python -m tlbench.report outputs/multirun/<sweep>`.

Finds the runs (collect.py), works out what they say (summary.py) and writes, into that folder:
results.csv (one row per run folder), summary.md / summary.json (the table, the verdicts, the crossings and
the cost/accuracy Pareto table) and the charts of plots.py."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tlbench.analysis import caveats, plots, racing, transfer_check, tuning, verdict
from tlbench.analysis.collect import Found, Problem, count_line, counts, find_runs
from tlbench.analysis.markdown import code, md, table
from tlbench.analysis.summary import (
    COSTS,
    METRICS,
    RANK_BY,
    Analysis,
    analyse,
    fmt_mean,
    fmt_stat,
    render_table,
    size_label,
    summarize,
)
from tlbench.results.files import ERROR_FILE, RESULTS_FILE, write_atomic

__all__ = ["Found", "Problem", "count_line", "find_runs", "main", "render_table", "summarize", "write_report"]

METHOD = (
    "Every pair of strategies within one backbone × data × data size, on {metric}: the difference A − B with "
    "a 95% interval from a paired bootstrap over seeds and test images (runs with the same seed share "
    "subset and split, and are compared image by image), a two-sided p-value, and Holm's correction over "
    "the pairs of the group. A strategy wins when it is separated (Holm p < 0.05) from every other over two "
    "or more seeds; one seed never wins (its interval resamples that seed's test images only, not training "
    "randomness); else "
    "the strategies not separated from the best cannot be told apart, and the seeds that would separate "
    "them are estimated as the smallest n with t(0.975, n−1)·sqrt(s²/n + v) < |difference| (s: "
    "between-seed SD of the difference, v: test-image variance that more seeds do not reduce). Runs "
    "without predictions.csv fall back to a paired t-test over seeds, and say so. Details: "
    "`tlbench/analysis/verdict.py`."
)


def relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else "."


def where(context: tuple) -> str:
    data, backbone, per_class = context
    return f"**{md(backbone)}** on {md(data)}, {per_class} images/class"


def render_ranking(analysis: Analysis, decision: verdict.GroupVerdict) -> str:
    """The strategies of one verdict best first, with the table's mean ± std and n."""
    stats = {g.label: g.stats[RANK_BY] for g in analysis.groups if g.context == decision.context}
    ranked = ", ".join(
        f"{md(label)} {fmt_stat(stats[label], RANK_BY)} (n={stats[label].n})" for label, _ in decision.ranking
    )
    return f"By mean {METRICS[RANK_BY]}: {ranked}."


def render_comparisons(decision: verdict.GroupVerdict) -> list[str]:
    header = ["A − B", "difference [95% interval]", "p", "Holm p", "method", "seeds", "images"]
    rows = (
        [f"{md(c.a)} − {md(c.b)}", verdict.fmt_diff(c), verdict.fmt_p(c.p), verdict.fmt_p(c.p_holm)]
        + [c.method + (f" ({c.note})" if c.note else ""), str(len(c.seeds)), str(c.n_images or "–")]
        for c in decision.comparisons
    )
    return table(header, rows, indent="  ")


def render_pareto(analysis: Analysis) -> list[str]:
    header = ["data", "configuration", METRICS[RANK_BY], *COSTS.values(), "Pareto"]
    rows = (
        [md(f"{g.data}, {size_label(g.per_class)}"), md(g.name), fmt_stat(g.stats[RANK_BY], RANK_BY)]
        + [fmt_mean(g.stats[k].mean, k) for k in COSTS]
        + [f"dominated by {', '.join(map(md, by))}" if by else "not dominated"]
        for g, by in analysis.pareto
    )
    return table(header, rows)


ENSEMBLE_METHOD = (
    "Per backbone × data × data size, from the runs' predictions.csv: the ensemble averages the compared "
    "strategies' probabilities per seed and answers the class with the highest mean. It is compared with "
    "the best single strategy (by mean) by the verdict's paired bootstrap over seeds and test images, one "
    "comparison per group (no Holm correction), under the same rules: one seed shows no gain. Shared errors: "
    "the share of the test images that both strategies get wrong, or only one of them (mean over the seeds "
    "both ran); an ensemble can only gain where errors are not shared."
)


def render_ensembles(analysis: Analysis) -> list[str]:
    lines = []
    for e in analysis.ensembles:
        lines += [f"- {where(e.context)}: {e.text}.", ""]
        header = ["A", "B", "both wrong", "only A wrong", "only B wrong", "seeds", "images"]
        rows = (
            [md(s.a), md(s.b), f"{s.both:.3f}", f"{s.only_a:.3f}", f"{s.only_b:.3f}"]
            + [str(len(s.seeds)), str(s.n_images)]
            for s in e.shared
        )
        lines += [*table(header, rows, indent="  "), ""] if e.shared else []
    return lines


def render_crossings(analysis: Analysis) -> list[str]:
    return [f"- **{md(backbone)}** on {md(data)}: {c.text}." for (data, backbone), c in analysis.crossings]


def verdict_lines(found: Found, analysis: Analysis, decision: verdict.GroupVerdict) -> list[str]:
    """One verdict as a Markdown list item, and how to add seeds where seeds are what it lacks."""
    lines = [f"- {where(decision.context)}: {decision.text}."]
    seeds = caveats.seeds_to_suggest(decision)
    if seeds is not None:
        lines.append(f"  {caveats.add_seeds(found, seeds)}")
    return lines


def verdict_text(analysis: Analysis, found: Found) -> str:
    """The verdict (and crossings) as the sweep and `python -m tlbench.report` print them: the same
    sentences as summary.md, without the bold."""
    lines = ["Verdict (paired comparisons, Holm-corrected; the method of each in brackets):"]
    lines += [line for d in analysis.verdicts for line in verdict_lines(found, analysis, d)]
    if (left_out := caveats.not_in_verdict(found)) is not None:
        lines.append(left_out)
    if analysis.ensembles:
        lines += ["", "Ensemble of the compared strategies (mean probability per seed):"]
        lines += [f"- {where(e.context)}: {e.text}." for e in analysis.ensembles]
    if analysis.crossings:
        lines += ["", "Where strategies cross:", *render_crossings(analysis)]
    return "\n".join(line.replace("**", "") for line in lines)


def render_summary_md(found: Found, analysis: Analysis) -> str:
    total = len(found.runs) + len(found.unfinished)
    others = ", ".join(f"{n} {state}" for state, n in counts(found).items() if state != "complete")
    lines = [
        f"# Sweep report: {md(found.root)}",
        "",
        f"{len(found.runs)} of {total} runs complete, {others}.",
        "",
        "## Results",
        "",
        "Each cell is mean ± sample standard deviation (ddof=1) over the seeds (× folds, under k-fold) of "
        "that setting; n is the number of runs; – where there is a single run. AUROC only for two-class "
        "data. Peak memory is GPU memory allocated on a GPU, the process's peak resident memory on a CPU.",
        "",
        render_table(analysis.groups),
        "",
    ]
    if analysis.verdicts:
        lines += ["## Best strategy", "", METHOD.format(metric=METRICS[RANK_BY]), ""]
        if any(run.params.get("fold") is not None for run in found.runs):
            lines += [
                "Cross-validated runs (data.folds) are paired by seed and fold, and a seed above is one "
                "(seed, fold) pair. Folds share most of their training images, so the spread between folds "
                "understates how much results vary with new data: read these intervals as optimistic.",
                "",
            ]
        for d in analysis.verdicts:
            lines += [*verdict_lines(found, analysis, d), f"  {render_ranking(analysis, d)}", ""]
            lines += [*render_comparisons(d), ""]
        if (left_out := caveats.not_in_verdict(found)) is not None:
            lines += [left_out, ""]
    if analysis.ensembles:
        lines += ["## Ensemble and shared errors", "", ENSEMBLE_METHOD, "", *render_ensembles(analysis)]
    if analysis.crossings:
        lines += [
            "## Where strategies cross",
            "",
            "Per backbone over the data sizes of the sweep: from which images per class one strategy "
            "overtakes another (the last change of lead, interpolated in log images/class; its 95% interval "
            "from the bootstrap replicates of each size).",
            "",
            *render_crossings(analysis),
            "",
        ]
    if analysis.pareto:
        lines += [
            "## Cost and accuracy",
            "",
            f"Mean {METRICS[RANK_BY]} against mean cost over seeds (`pareto.png`). A configuration is "
            "dominated when another on the same data and data size is as good on every axis (accuracy, wall "
            "time, train images/s, trainable parameters, peak memory) and better on at least one. This "
            "compares means: which accuracy differences the runs can tell apart is the verdict's to say.",
            "",
            *render_pareto(analysis),
            "",
            "## Calibration",
            "",
            "ECE in the results table is each run's expected calibration error on the test set (15 bins, "
            "torchmetrics). `reliability_<backbone>.png`: accuracy against confidence per strategy, from "
            "the runs' predictions.csv.",
            "",
        ]
    lines += transfer_check.render_section(found)  # rank.json below the folder: scores against accuracy
    lines += tuning.section(found.root) + racing.section(found.root)  # sweep=fair / sweep=race, if either ran
    duplicates = [g for g in analysis.groups if len(set(map(str, g.seeds))) < len(g.seeds)]
    if duplicates:
        lines += ["Settings that ran a seed more than once (each run counts in n):"]
        lines += [
            f"- {md(g.data)} / {md(g.backbone)} / {g.per_class} / {md(g.label)}: seeds {g.seeds}"
            for g in duplicates
        ]
        lines += [""]
    for title, problems in (
        ("Running runs", found.running),
        ("Interrupted runs", found.interrupted),
        ("Failed runs", found.failed),
        ("Missing runs", found.missing),
    ):
        if problems or title in ("Failed runs", "Missing runs"):
            items = [f"- {code(relative(p.path, found.root))}: {md(p.detail)}" for p in problems]
            lines += [f"## {title} ({len(problems)})", "", *(items or ["None."]), ""]
    eager = [r for r in found.runs if r.results.get("cuda_graph_error")]  # optim.cuda_graph fell back
    if eager:
        rows = [f"- {code(relative(r.path, found.root))}: {md(r.results['cuda_graph_error'])}" for r in eager]
        lines += [f"## CUDA graph capture failed, trained eagerly ({len(eager)})", "", *rows, ""]
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """NaN and infinity as null: summary.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def summary_json(found: Found, analysis: Analysis) -> dict[str, Any]:
    groups = [
        {"data": g.data, "backbone": g.backbone, "per_class": g.per_class, "strategy": g.strategy}
        | {"setting": g.setting, "n": len(g.runs), "seeds": g.seeds}
        | {key: asdict(g.stats[key]) for key in (*METRICS, *COSTS)}
        for g in analysis.groups
    ]
    verdicts = [
        {"data": d.context[0], "backbone": d.context[1], "per_class": d.context[2], "metric": RANK_BY}
        | d.to_json()
        | {
            "add_seeds": None
            if (n := caveats.seeds_to_suggest(d)) is None
            else caveats.add_seeds_command(found, n)
        }
        for d in analysis.verdicts
    ]
    pareto_rows = [
        {"context": f"{g.data}, {size_label(g.per_class)}", "backbone": g.backbone, "strategy": g.label}
        | {key: g.stats[key].mean for key in (RANK_BY, *COSTS)}
        | {"dominated_by": by}
        for g, by in analysis.pareto
    ]
    problems = {
        state: [{"run_dir": relative(p.path, found.root), key: p.detail} for p in problems]
        for state, key, problems in (
            ("failed", "error", found.failed),
            ("missing", "why", found.missing),
            ("running", "by", found.running),
            ("interrupted", "why", found.interrupted),
        )
    }
    return json_safe(
        {
            "root": str(found.root),
            "counts": counts(found),
            "std": "sample standard deviation over seeds (ddof=1); null when n=1",
            "groups": groups,
            "verdict": verdicts,
            "not_in_verdict": caveats.not_in_verdict(found),
            "ensembles": [
                {"data": e.context[0], "backbone": e.context[1], "per_class": e.context[2]} | e.to_json()
                for e in analysis.ensembles
            ],
            "crossings": [{"data": d, "backbone": b} | asdict(c) for (d, b), c in analysis.crossings],
            "pareto": pareto_rows,
            **problems,
        }
    )


def overrides_of(folder: Path) -> str:
    """The run's command-line overrides as Hydra saved them (.hydra/overrides.yaml), one line."""
    return " ".join(caveats.hydra_overrides(folder))


def cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else ("" if value is None else value)


def results_csv(found: Found) -> str:
    """One row per run folder (unfinished ones too): status, params, every metric, costs."""
    first = ["data", "backbone", "strategy", "per_class", "seed"]
    params = sorted({k for r in found.runs for k in r.params} - set(first))
    metrics = sorted({k for r in found.runs for k in r.results.get("metrics", {})})
    costs = ["wall_time_s", "train_images_per_s", "trainable_params", "stored_params_per_task"]
    costs += ["total_params", "peak_memory_mb", "epochs_trained", "optimizer_steps"]
    costs += ["peak_memory_kind", "device", "precision", "pipeline", "cuda_graph", "cuda_graph_error"]
    text = io.StringIO()
    fields = ["run_dir", "status", *first, *params, *metrics, *costs, "overrides", "error"]
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for run in found.runs:
        row = {"run_dir": relative(run.path, found.root), "status": "complete"}
        row |= {k: cell(run.params.get(k)) for k in (*first, *params)}
        row["per_class"] = run.context[2]
        row |= {k: cell(run.results.get("metrics", {}).get(k)) for k in metrics}
        row |= {k: cell(run.results.get(k)) for k in costs}
        row["overrides"] = " ".join(map(str, run.results.get("overrides", []))) or overrides_of(run.path)
        writer.writerow(row)
    for problem in found.unfinished:
        row = {"run_dir": relative(problem.path, found.root), "status": problem.status}
        writer.writerow(row | {"overrides": overrides_of(problem.path), "error": problem.detail})
    return text.getvalue()


def write_report(found: Found, out_dir: str | Path, analysis: Analysis | None = None) -> Path:
    """Every output file of the report into out_dir; returns the path of summary.md."""
    analysis, out_dir = analysis or analyse(found.runs), Path(out_dir)
    write_atomic(out_dir / "results.csv", results_csv(found))
    write_atomic(out_dir / "summary.json", json.dumps(summary_json(found, analysis), indent=2) + "\n")
    summary = write_atomic(out_dir / "summary.md", render_summary_md(found, analysis))
    if analysis.groups:
        plots.plot_accuracy(analysis.groups, out_dir / "accuracy_by_strategy.png")
        plots.plot_learning_curves(analysis.groups, out_dir)
    if analysis.pareto:
        plots.plot_pareto(analysis.pareto, out_dir / "pareto.png")
    plots.plot_reliability(analysis, out_dir)
    tuning.plot(found.root, out_dir)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tlbench.report",
        description="Summarize every results.json below a folder (a sweep, or all of outputs/).",
    )
    parser.add_argument("folder", type=Path, help="e.g. outputs/multirun/strategies")
    parser.add_argument("--out", type=Path, help="where to write the report (default: the folder)")
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
    analysis = analyse(found.runs)
    summary = write_report(found, args.out or args.folder, analysis)
    print(render_table(analysis.groups), verdict_text(analysis, found), count_line(found), sep="\n\n")
    print(f"report: {summary}")
    return 0
