"""summary.json -> report.md, plots/iou_vs_n.png and overlays/*.png.

Everything here is rebuilt from the output directory alone (plus the dataset for the overlay
images), so `rescue-eval report OUT` regenerates it after a run or a resume.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from rescue_eval.core.masks import decode_rle, overlay

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


LABELS = {"giou": "gIoU", "ciou": "cIoU"}


def metric_order(dataset_entry: dict) -> tuple[str, str]:
    """The dataset's headline metric first: cIoU for RefCOCO (the papers' table), else gIoU."""
    return ("ciou", "giou") if dataset_entry.get("headline") == "ciou" else ("giou", "ciou")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_report(out: Path, summary: dict, records: dict[str, dict], dataset=None, overlays: int = 8) -> None:
    out = Path(out)
    plot = write_plot(out, summary)
    shown = write_overlays(out, records, dataset, overlays) if dataset is not None else []
    (out / "report.md").write_text(render_markdown(summary, plot, shown), encoding="utf-8")


def render_markdown(summary: dict, plot: Path | None, overlays: list[str]) -> str:
    ds = summary.get("dataset", {})
    lines = [f"# RESCue-eval: {ds.get('name', '?')} / {ds.get('split', '?')}", ""]
    lines += [f"- samples: {summary['n_samples']} (failed: {summary['n_failed']})",
              f"- mode: {summary.get('mode', '?')}, max N: {max(map(int, summary['per_n']))}"]
    for note in summary.get("notes", []):
        lines.append(f"- **note:** {note}")
    first, second = metric_order(ds)
    lines += ["", "| metric | value |", "|---|---|",
              f"| {LABELS[first]} (headline) | {_pct(summary[first])} |", f"| {LABELS[second]} | {_pct(summary[second])} |",
              f"| oracle IoU | {_pct(summary['oracle_iou'])} |", ""]
    lines += ["## Scores against N (selection among the first N hypotheses)", "",
              f"| N | {LABELS[first]} | {LABELS[second]} | oracle IoU | judge calls |", "|---|---|---|---|---|"]
    for n, row in sorted(summary["per_n"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | {_pct(row[first])} | {_pct(row[second])} | {_pct(row['oracle_iou'])} | "
                     f"{row['judge_calls']} |")
    if plot is not None:
        lines += ["", f"![IoU against N]({plot.relative_to(plot.parent.parent).as_posix()})"]
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
    if overlays:
        lines += ["", "## First samples (green: ground truth, red: prediction)", ""]
        lines += [f"![{name}](overlays/{name})" for name in overlays]
    lines += ["", "## Metric policy", "", METRIC_POLICY, "", "## Selection policy", "",
              selection_policy(summary.get("siglip_scaling", "minmax")), ""]
    env = summary.get("environment", {})
    if env:
        lines += ["## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def write_plot(out: Path, summary: dict) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["per_n"].items(), key=lambda kv: int(kv[0]))
    ns = [int(n) for n, _ in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, label in (("giou", "gIoU"), ("ciou", "cIoU"), ("oracle_iou", "oracle IoU")):
        ax.plot(ns, [100 * r[key] for _, r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (hypotheses)")
    ax.set_ylabel("IoU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "plots" / "iou_vs_n.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_overlays(out: Path, records: dict[str, dict], dataset, limit: int) -> list[str]:
    """Ground truth (green) and prediction (red) on the image, side by side, for the first
    `limit` samples of the dataset that have a record."""
    folder = out / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(len(dataset)):
        if len(names) >= limit:
            break
        sample_id = dataset.ids[index]
        rec = records.get(sample_id)
        if rec is None or rec.get("prediction") is None:
            continue
        sample = dataset[index]
        try:
            image = sample.decode_image()
        except Exception:  # noqa: BLE001 - an unreadable image has nothing to draw on
            continue
        gt = sample.gt_mask == 1
        pred = decode_rle(rec["prediction"])
        panels = [overlay(image, gt, color=(0, 200, 0)), overlay(image, pred, color=(230, 0, 0))]
        canvas = Image.new("RGB", (image.width * 2 + 8, image.height), "white")
        canvas.paste(panels[0], (0, 0))
        canvas.paste(panels[1], (image.width + 8, 0))
        name = f"{_safe(sample_id)}.png"
        canvas.save(folder / name)
        names.append(name)
    return names


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
