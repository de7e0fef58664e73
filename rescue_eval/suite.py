"""Suites: several splits in one job, as the papers' tables list them (configs/suite_lisa.yaml).

    rescue-eval run --suite configs/suite_lisa.yaml --config MODELS.yaml --data.root /data --output OUT

A suite file lists splits: `name` and `split`, optionally `root` (relative to --data.root, or
absolute; default --data.root itself) and `split_by`. Every split is evaluated into
OUT/<name>-<split>/ (a complete output directory, resumable on its own) by one job that loads
the models once; then OUT/suite.json and OUT/suite.md give one row per split.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from rescue_eval import config as config_mod
from rescue_eval.config import Config
from rescue_eval.core.errors import UsageError
from rescue_eval.datamodules import DATASETS

ENTRY_KEYS = {"name", "split", "root", "split_by"}


def load_suite(path: str | Path, cfg: Config, out: Path) -> list[tuple[Config, Path]]:
    """(config, output directory) per split of the suite file: `cfg` with its data section replaced."""
    try:
        entries = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["splits"]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
        raise UsageError(f"--suite {path} is not a suite file ({type(exc).__name__}: {exc}); give a YAML file with a "
                         f"`splits:` list such as configs/suite_lisa.yaml.") from None
    runs, seen = [], set()
    for k, entry in enumerate(entries if isinstance(entries, list) else [None]):
        if not isinstance(entry, dict) or not {"name", "split"} <= set(entry) or set(entry) - ENTRY_KEYS:
            raise UsageError(f"--suite {path}: split {k} is {entry!r}; give name and split, and optionally root "
                             f"and split_by.")
        if entry["name"] not in DATASETS:
            raise UsageError(f"--suite {path}: split {k} names dataset {entry['name']!r}; choose one of "
                             f"{sorted(DATASETS.names())}.")
        root = Path(cfg.data.root or ".") / str(entry.get("root", ""))
        data = replace(cfg.data, name=entry["name"], split=str(entry["split"]), root=str(root),
                       split_by=entry.get("split_by"))
        split_cfg = replace(cfg, data=data)
        config_mod.validate(split_cfg)
        folder = "-".join(str(x) for x in (data.name, data.split, data.split_by) if x)
        if folder in seen:
            raise UsageError(f"--suite {path} lists {folder} twice; remove one.")
        seen.add(folder)
        runs.append((split_cfg, out / folder))
    if not runs:
        raise UsageError(f"--suite {path} lists no split.")
    return runs


def write_suite(out: Path, rows: list[tuple[Config, Path, dict]]) -> dict:
    """OUT/suite.json and OUT/suite.md from each split's config, folder and summary."""
    splits = []
    for cfg, folder, summary in rows:
        splits.append({"dataset": cfg.data.name, "split": cfg.data.split, "split_by": cfg.data.split_by,
                       "output": folder.name, "headline": summary.get("dataset", {}).get("headline", "giou"),
                       **{k: summary[k] for k in ("giou", "ciou", "oracle_iou", "n_samples", "n_failed")},
                       "per_n": {str(n): {k: row[k] for k in ("giou", "ciou", "oracle_iou")}
                                 for n, row in summary["per_n"].items()}})
    suite = {"splits": splits}
    (out / "suite.json").write_text(json.dumps(suite, indent=1), encoding="utf-8")
    (out / "suite.md").write_text(render_suite(splits), encoding="utf-8")
    return suite


def render_suite(splits: list[dict]) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = ["# RESCue-eval suite", "", "Scores in percent; each split's report.md is in its folder. RefCOCO "
             "papers lead with cIoU, ReasonSeg papers with gIoU.", "",
             "| dataset | split | gIoU | cIoU | oracle IoU | samples | failed |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['dataset']} | {s['split']} | {pct(s['giou'])} | {pct(s['ciou'])} | {pct(s['oracle_iou'])} | "
              f"{s['n_samples']} | {s['n_failed']} |" for s in splits]
    ns = sorted({int(n) for s in splits for n in s["per_n"]})
    lines += ["", "## gIoU / cIoU against N", "", "| dataset | split | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---|---|" + "---|" * len(ns)]
    for s in splits:
        cells = [f"{pct(s['per_n'][str(n)]['giou'])} / {pct(s['per_n'][str(n)]['ciou'])}" if str(n) in s["per_n"]
                 else "-" for n in ns]
        lines.append(f"| {s['dataset']} | {s['split']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rebuild_suite(out: Path) -> dict:
    """`rescue-eval report OUT` for a suite: each split's summary and report, then the suite's."""
    from rescue_eval.outdir import rebuild

    previous = json.loads((out / "suite.json").read_text(encoding="utf-8"))
    rows = []
    for entry in previous["splits"]:
        folder = out / entry["output"]
        rows.append((config_mod.load_yaml(folder / "config.yaml"), folder, rebuild(folder)))
    return write_suite(out, rows)
