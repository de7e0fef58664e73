"""summary.json -> report.md, plots/iou_vs_n.png, plots/judge_calls_vs_n.png and overlays/*.png.

Everything here is rebuilt from the output directory alone (plus the dataset for the overlay
images), so `rescue-eval report OUT` regenerates it after a run or a resume.
"""
from __future__ import annotations

from pathlib import Path

from rescue_eval.io.pictures import GROUPS, METRIC_LABELS, Shown, per_n_rows, write_overlays, write_plots

METRIC_POLICY = (
    "Metric policy (LISA's): ground-truth pixels labelled 255 (ReasonSeg 'ignore' polygons) count in "
    "neither intersection nor union; per-sample IoU = I / (U + 1e-5), and a sample whose union is empty "
    "scores 1.0; gIoU is the mean per-sample IoU, cIoU = sum I / (sum U + 1e-10) over the split. A failed "
    "sample is scored as an empty prediction and counted by reason, never dropped. Oracle IoU is the best "
    "candidate's IoU among the first N hypotheses (an upper bound, never used for selection). Only `text[0]` "
    "of a ReasonSeg annotation is the query.")


def selection_policy(siglip_scaling: str) -> str:
    scaling = ("min-max scaled to [0, 1] within each candidate set, as the original verifier did"
               if siglip_scaling == "minmax" else "used raw (sigmoid of the logit, not rescaled)")
    return (f"The hybrid score weighs the VLM rating, the SigLIP2 score ({scaling}) and agreement: a "
            "candidate's mean mask IoU with the other hypotheses among the first N, where a box dropped as a "
            "duplicate keeps its vote for the box it repeats. Selection never sees the ground truth.")


def metric_order(dataset_entry: dict) -> tuple[str, str]:
    """The dataset's headline metric first: cIoU for RefCOCO (the papers' table), else gIoU."""
    return ("ciou", "giou") if dataset_entry.get("headline") == "ciou" else ("giou", "ciou")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_report(out: Path, summary: dict, records: dict[str, dict], dataset=None, overlays: int = 8) -> None:
    out = Path(out)
    plots = write_plots(out, summary, headline=metric_order(summary.get("dataset", {}))[0])
    shown = write_overlays(out, records, dataset, overlays) if dataset is not None else []
    (out / "report.md").write_text(render_markdown(summary, plots, shown), encoding="utf-8")


def render_markdown(summary: dict, plots: dict[str, Path], shown: list[Shown]) -> str:
    ds = summary.get("dataset", {})
    lines = [f"# RESCue-eval: {ds.get('name', '?')} / {ds.get('split', '?')}", ""]
    lines += [f"- samples: {summary['n_samples']} (failed: {summary['n_failed']})",
              f"- mode: {summary.get('mode', '?')}, max N: {max(map(int, summary['per_n']))}"]
    for note in summary.get("notes", []):
        lines.append(f"- **note:** {note}")
    first, second = metric_order(ds)
    lines += ["", "| metric | value |", "|---|---|",
              f"| {METRIC_LABELS[first]} (headline) | {_pct(summary[first])} |",
              f"| {METRIC_LABELS[second]} | {_pct(summary[second])} |",
              f"| oracle IoU | {_pct(summary['oracle_iou'])} |", ""]
    judged = summary.get("mode") == "comparative"  # the heuristic's choices are recorded beside the judge's
    lines += ["## Scores against N (selection among the first N hypotheses)", "",
              f"| N | {METRIC_LABELS[first]} | {METRIC_LABELS[second]} | oracle IoU | judge calls |"
              + (" gIoU, heuristic (no judge) |" if judged else ""), "|---|---|---|---|---|" + ("---|" if judged else "")]
    for n, row in per_n_rows(summary):
        lines.append(f"| {n} | {_pct(row[first])} | {_pct(row[second])} | {_pct(row['oracle_iou'])} | "
                     f"{row['judge_calls']} |" + (f" {_pct(row['heuristic_giou'])} |" if judged else ""))
    lines += [""] + [f"![{title}](plots/{path.name})" for title, path in plots.items()]
    if summary.get("subsets"):
        lines += ["", "## Subsets", "", "| subset | samples | gIoU | cIoU | oracle IoU |", "|---|---|---|---|---|"]
        for name, s in summary["subsets"].items():
            lines.append(f"| {name} | {s['n_samples']} | {_pct(s['giou'])} | {_pct(s['ciou'])} | "
                         f"{_pct(s['oracle_iou'])} |")
    lines += ["", "## Failures", ""]
    if summary["failures"]:
        lines += ["| reason | samples |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(summary["failures"].items())]
        if summary.get("errors"):
            lines += ["", "By error: " + ", ".join(f"{k} {v}" for k, v in summary["errors"].items()) +
                      " (each record's `error` has the details)."]
    else:
        lines.append("None.")
    if summary.get("warnings"):
        lines += ["", "Loaded with warnings (scored as LISA scores them): " +
                  ", ".join(f"{k} {v}" for k, v in summary["warnings"].items()) + "."]
    if summary.get("hypotheses"):
        lines += ["", "## Hypotheses and judge", "",
                  "Planner outputs: " + ", ".join(f"{k} {v}" for k, v in summary["hypotheses"].items()) + "."]
        vlm = summary.get("vlm", {})
        if vlm.get("judge_calls"):
            lines.append(f"Judge answers: {vlm['judge_calls']}, of which {vlm['judge_unusable']} unusable "
                         f"({vlm.get('judge_errors', 0)} of them calls that raised) "
                         f"(the hybrid score decided instead).")
    roles = summary.get("roles", {})
    if roles:
        bottleneck = max(roles, key=lambda r: roles[r]["busy_fraction"])
        lines += ["", "## Roles", "", "| role | ranks | requests | batches | mean batch | busy fraction | "
                  "mean queue wait |", "|---|---|---|---|---|---|---|"]
        for name, r in roles.items():
            ranks = ",".join(map(str, r.get("ranks", [])))
            lines.append(f"| {name} | {ranks} | {r['requests']} | {r['batches']} | {r['mean_batch']:.1f} | "
                         f"{r['busy_fraction']:.2f} | {1000 * r.get('mean_queue_wait_s', 0.0):.0f} ms |")
        lines += ["", f"Bottleneck: **{bottleneck}** (the busiest role: its hosts compute the largest share "
                      f"of the time; give it more ranks or a larger batch first)."]
    timing = summary.get("timing", {})
    if timing:
        lines += ["", "## Timing", "", f"- wall: {timing.get('wall_s', 0):.1f} s, "
                  f"{timing.get('samples_per_s', 0):.3f} samples/s, over {timing.get('attempts', 1)} attempt(s) "
                  f"(summary.json lists each, with its command, times and roles)"]
        for stage, s in timing.get("mean_stage_s", {}).items():
            lines.append(f"- {stage}: {1000 * s:.1f} ms per sample (mean latency, queueing behind the other "
                         f"samples in flight included)")
    if shown:
        lines += ["", *samples_section(shown, summary["n_samples"])]
    lines += ["", "## Metric policy", "", METRIC_POLICY, "", "## Selection policy", "",
              selection_policy(summary.get("siglip_scaling", "minmax")), ""]
    env = summary.get("environment", {})
    if env:
        lines += ["## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def samples_section(shown: list[Shown], n_samples: int) -> list[str]:
    """The picture section: what is shown (worst, middle and best by IoU) and each picture,
    or why a sample has none."""
    counts = {group: sum(s.group == group for s in shown) for group in GROUPS}
    which = ", ".join(f"{counts[g]} {'in the middle' if g == 'middle' else g}" for g in GROUPS if counts[g])
    lines = [f"## Samples by IoU at the largest N: {which} of {n_samples}", "",
             "Left: ground truth (cyan contour; ignore pixels, label 255, hatched black and white). "
             "Right: prediction (magenta contour). Ties in IoU are broken by id; failed samples show "
             "their reason."]
    for group in GROUPS:
        members = [s for s in shown if s.group == group]
        if members:
            lines += ["", f"### {group.capitalize()}"]
        for s in members:  # each its own paragraph: one picture a row
            lines += ["", f"![{s.sample_id}](overlays/{s.file})" if s.file else
                      f"- {s.sample_id} (IoU {_pct(s.iou)}): no picture ({s.problem})"]
    return lines
