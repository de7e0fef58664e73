"""The pictures people look at: the report's sample overlays and plots, and what `segment` draws with.

Masks are drawn as contours in cyan (ground truth) and magenta (prediction) between black lines,
so they read on any photo and are not mistaken for its own red, green or blue regions; ignore
pixels (label 255) are hatched in black and white. Everything is drawn from a record and the
dataset alone, the same inputs giving the same PNG bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from rescue_eval.core.masks import contour, decode_rle, hatch
from rescue_eval.core.types import IGNORE
from rescue_eval.io.tracking import chosen_n

GT_COLOR = (0, 255, 255)  # cyan
PRED_COLOR = (255, 0, 255)  # magenta
HALO = (0, 0, 0)
PANEL_SIDE = 640  # longer side of a report panel: large photos are scaled down, small ones kept
MIN_WIDTH = 560  # the caption's room for its legend, even under a small image
GAP, PAD, TEXT_SIZE, MAX_LINES = 8, 6, 13, 3
METRIC_LABELS = {"giou": "gIoU", "ciou": "cIoU", "oracle_iou": "oracle IoU"}
LEGEND = ((GT_COLOR, "ground truth (left)"), (PRED_COLOR, "prediction (right)"),
          (None, "ignore pixels (label 255, in neither I nor U)"))
GROUPS = ("worst", "middle", "best")


@dataclass
class Shown:
    """One sample of the report's picture section."""

    group: str  # worst, middle or best
    sample_id: str
    iou: float
    file: str | None  # its picture under overlays/, None when it could not be drawn
    problem: str = ""  # why there is no picture


def pick_samples(records: dict[str, dict], limit: int) -> dict[str, list[str]]:
    """The `limit` samples to show: the worst, the middle and the best by IoU at the largest N,
    ties broken by id so the choice is deterministic; ascending IoU within each group. A third
    of `limit` (rounded up) are the worst, half the rest (rounded up) the best."""
    order = sorted(records, key=lambda i: (records[i]["iou"], i))
    limit = max(0, min(limit, len(order)))
    n_worst = -(-limit // 3)
    n_best = -(-(limit - n_worst) // 2)
    n_middle = limit - n_worst - n_best
    start = n_worst + (len(order) - limit) // 2  # the middle group sits around the median
    return {"worst": order[:n_worst], "middle": order[start:start + n_middle], "best": order[len(order) - n_best:]}


def caption_lines(record: dict) -> list[str]:
    """What a sample's picture says under it (before wrapping): id, IoU and the choice at the
    largest N, the query, and the failure when there is one."""
    n = chosen_n(record)
    entry = record["sweep"][str(n)]
    if entry.get("index") is None:
        choice = f"N = {n}: nothing chosen"
    else:
        strategy = record["candidates"][entry["chosen"]]["strategy"]
        choice = f"N = {n}: hypothesis {entry['index']} chosen ({strategy})"
    lines = [f"{record['id']}  ·  IoU {100 * record['iou']:.2f} %  ·  {choice}", f"query: {record['query']}"]
    if record["failure"] is not None:
        error, prefix = record["error"] or "", f"{record['failure']}: "
        message = error[len(prefix):] if error.startswith(prefix) else error  # the reason is said already
        lines.append(f"failed ({record['failure']})" + (f": {message}" if message else ""))
    return lines


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def fit_lines(text: str, typeface, width: float, max_lines: int = MAX_LINES) -> list[str]:
    """`text` wrapped at spaces into lines at most `width` pixels wide, at most `max_lines` of
    them; the last ends in an ellipsis when text was left out. A word wider than a line is cut."""
    lines, line = [], ""
    for word in text.split():
        joined = f"{line} {word}" if line else word
        if typeface.getlength(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and typeface.getlength(word) > width:
            cut = max((k for k in range(1, len(word)) if typeface.getlength(word[:k]) <= width), default=1)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and typeface.getlength(last + " …") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + " …"]
    return lines


def line_width(size: tuple[int, int]) -> int:
    """Contour width in pixels: 2, thicker on large images so it stays visible scaled down."""
    return max(2, round(max(size) / 320))


def sample_picture(image: Image.Image, gt: np.ndarray | None, record: dict) -> Image.Image:
    """Ground truth (left) and prediction (right) as contours on the image, over a caption
    strip: the id, the IoU, the choice, the query, the failure and the legend."""
    scale = min(1.0, PANEL_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = image.convert("RGB").resize(size, Image.BILINEAR) if scale < 1 else image.convert("RGB")

    def fitted(mask: np.ndarray) -> np.ndarray:
        if scale == 1:
            return mask
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0

    width = line_width(size)
    left = base
    if gt is not None:
        left = contour(hatch(left, fitted(gt == IGNORE)), fitted(gt == 1), GT_COLOR, width)
    right = base
    if record["prediction"] is not None:
        right = contour(base, fitted(decode_rle(record["prediction"])), PRED_COLOR, width)

    return with_caption(left, right, caption_lines(record))


def with_caption(left: Image.Image, right: Image.Image, lines: list[str]) -> Image.Image:
    """Two panels of one size side by side over a white strip: `lines` wrapped to its width, then the legend."""
    typeface, step = font(TEXT_SIZE), TEXT_SIZE + 4
    canvas_width = max(2 * left.width + GAP, MIN_WIDTH)
    rows = [row for line in lines for row in fit_lines(line, typeface, canvas_width - 2 * PAD)]
    legend = legend_layout(typeface, canvas_width - 2 * PAD)
    legend_rows = 1 + max(row for row, _, _, _ in legend)
    canvas = Image.new("RGB", (canvas_width, left.height + PAD + step * (len(rows) + legend_rows) + PAD), "white")
    x = (canvas_width - 2 * left.width - GAP) // 2
    canvas.paste(left, (x, 0))
    canvas.paste(right, (x + left.width + GAP, 0))
    draw = ImageDraw.Draw(canvas)
    y = left.height + PAD
    for row in rows:
        draw.text((PAD, y), row, fill="black", font=typeface)
        y += step
    for row, x, color, text in legend:
        canvas.paste(_swatch(color), (PAD + x, y + row * step + 1))
        draw.text((PAD + x + 2 * TEXT_SIZE + 4, y + row * step), text, fill="black", font=typeface)
    return canvas


def _swatch(color: tuple | None) -> Image.Image:
    """A legend entry's sample: a contour in `color` as the panels draw it, or the hatch (None)."""
    patch = Image.new("RGB", (2 * TEXT_SIZE, TEXT_SIZE - 1), "white")
    inside = np.zeros((patch.height, patch.width), bool)
    if color is None:
        return hatch(patch, ~inside, period=4)
    inside[3:-3, 3:-3] = True
    return contour(patch, inside, color, width=2)


def legend_layout(typeface, width: float) -> list[tuple[int, int, tuple | None, str]]:
    """(row, x, colour, text) of each legend entry (colour None: the hatch), flowing onto a
    new row when the next entry would pass `width`."""
    placed, row, x = [], 0, 0
    for color, text in LEGEND:
        size = 2 * TEXT_SIZE + 4 + int(typeface.getlength(text))
        if x and x + size > width:
            row, x = row + 1, 0
        placed.append((row, x, color, text))
        x += size + 14
    return placed


def write_overlays(out: Path, records: dict[str, dict], dataset, limit: int) -> list[Shown]:
    """overlays/<id>.png for the worst, middle and best samples that the dataset holds; a
    picture that cannot be drawn is reported as such, and pictures of an earlier selection go."""
    index_of = {sample_id: i for i, sample_id in enumerate(dataset.ids)}
    groups = pick_samples({i: r for i, r in records.items() if i in index_of}, limit)
    folder = out / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    shown = []
    for group, ids in groups.items():
        for sample_id in ids:
            record, name = records[sample_id], f"{_safe(sample_id)}.png"
            try:
                sample = dataset[index_of[sample_id]]
                sample_picture(sample.decode_image(), sample.gt_mask, record).save(folder / name)
                shown.append(Shown(group, sample_id, record["iou"], name))
            except Exception as exc:  # noqa: BLE001 - one picture that cannot be drawn costs that picture only
                shown.append(Shown(group, sample_id, record["iou"], None, f"{type(exc).__name__}: {exc}"))
    keep = {s.file for s in shown}
    for old in folder.glob("*.png"):
        if old.name not in keep:
            old.unlink()
    return shown


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _title(what: str, summary: dict) -> str:
    ds = summary.get("dataset", {})
    return f"{what}: {ds.get('name', '?')} / {ds.get('split', '?')}"


def per_n_rows(summary: dict) -> list[tuple[int, dict]]:
    """summary["per_n"] by N ascending (its keys are ints in memory, strings in summary.json)."""
    return sorted((int(n), row) for n, row in summary["per_n"].items())


def _n_axis(ax, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (hypotheses)")
    ax.grid(alpha=0.3)


def iou_figure(summary: dict, headline: str) -> Figure:
    """IoU against N, the y axis from 0, with the N = 1 headline metric as a reference line."""
    rows = per_n_rows(summary)
    ns = [n for n, _ in rows]
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    for key in ("giou", "ciou", "oracle_iou"):
        ax.plot(ns, [100 * r[key] for _, r in rows], marker="o", label=METRIC_LABELS[key])
    baseline = 100 * dict(rows)[1][headline]
    ax.axhline(baseline, color="0.3", linestyle="--", linewidth=1,
               label=f"N = 1 baseline ({METRIC_LABELS[headline]} {baseline:.2f})")
    peak = max(100 * r[key] for _, r in rows for key in ("giou", "ciou", "oracle_iou"))
    ax.set_ylim(0, max(1.0, 1.15 * peak))
    _n_axis(ax, ns)
    ax.set_ylabel("IoU (%)")
    ax.set_title(_title("IoU against N", summary))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def judge_calls_figure(summary: dict) -> Figure:
    """Judge calls (all samples together) against N, the y axis from 0."""
    rows = per_n_rows(summary)
    ns, calls = [n for n, _ in rows], [r["judge_calls"] for _, r in rows]
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    ax.plot(ns, calls, marker="o", color="tab:purple")
    ax.set_ylim(0, max(1.0, 1.15 * max(calls)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _n_axis(ax, ns)
    ax.set_ylabel("judge calls (all samples)")
    ax.set_title(_title("Judge calls against N", summary))
    fig.tight_layout()
    return fig


def write_plots(out: Path, summary: dict, headline: str) -> dict[str, Path]:
    """plots/iou_vs_n.png and plots/judge_calls_vs_n.png, by what they show."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    plots = {"IoU against N": (iou_figure(summary, headline), folder / "iou_vs_n.png"),
             "Judge calls against N": (judge_calls_figure(summary), folder / "judge_calls_vs_n.png")}
    for fig, path in plots.values():
        fig.savefig(path)
    return {title: path for title, (_, path) in plots.items()}


def label(image: Image.Image, at: tuple[int, int], text: str, typeface, background, foreground) -> None:
    """`text` on a filled rectangle whose top left corner is `at`, drawn into `image`."""
    draw = ImageDraw.Draw(image)
    x, y = at
    _, _, right, bottom = draw.textbbox((x + 2, y + 1), text, font=typeface)
    draw.rectangle((x, y, right + 2, bottom + 2), fill=background)
    draw.text((x + 2, y + 1), text, fill=foreground, font=typeface)
