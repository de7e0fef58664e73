"""Weights & Biases logging of a finished evaluation, on rank 0 only.

One W&B run per output directory: its id is kept in OUT/wandb-run-id, so a resumed job logs
into the same run. Without credentials the run is written offline under OUT/wandb/ and can
be uploaded later with `wandb sync`. wandb is imported inside the class, so importing this
module costs nothing when tracking is off.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from rescue_eval.core.masks import decode_rle
from rescue_eval.core.types import IGNORE

log = logging.getLogger("rescue_eval")

RUN_ID_FILE = "wandb-run-id"
SECRET_WORDS = ("key", "token", "secret", "password")
REDACTED = "***"
TABLE_SECTIONS = {"per_n", "roles"}  # summary sections logged as tables, not as scalars
ROLE_COLUMNS = ["requests", "batches", "mean_batch", "busy_fraction", "mean_queue_wait_s"]
GT_IGNORE_CLASS = 2  # ground-truth 255 shown as its own mask class (wandb mask ids are small ints)


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: Literal["auto", "offline", "online"] = "auto"  # auto: online only when credentials exist
    project: str = "rescue-eval"
    entity: Optional[str] = None
    name: Optional[str] = None
    table_samples: int = 16  # rows of the logged sample table (image, ground truth, prediction)


def resolve_mode(settings_mode: str) -> str:
    """The wandb mode to run in: WANDB_MODE=disabled set by the user wins; "auto" is online
    only when credentials exist (WANDB_API_KEY, or a netrc entry for the W&B server)."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return "disabled"
    if settings_mode != "auto":
        return settings_mode
    return "online" if has_credentials() else "offline"


def has_credentials() -> bool:
    """Whether an API key is available; only its presence is checked, the value is never kept."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import wandb
    from wandb.sdk.lib.wbauth import read_netrc_auth

    try:  # wandb's own lookup: $NETRC or ~/.netrc, for the configured server or api.wandb.ai
        return read_netrc_auth(host=wandb.Settings().base_url) is not None
    except wandb.errors.AuthenticationError:  # a malformed key would fail online: stay offline
        return False


def redact_secrets(config: dict) -> dict:
    """A copy of the config with the value of every key that looks secret replaced by ***."""
    clean = {}
    for key, value in config.items():
        if any(word in str(key).lower() for word in SECRET_WORDS):
            clean[key] = REDACTED
        elif isinstance(value, dict):
            clean[key] = redact_secrets(value)
        else:
            clean[key] = value
    return clean


def run_id_of(out: Path) -> str:
    """The W&B run id of this output directory, created on first use."""
    path = out / RUN_ID_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    run_id = secrets.token_hex(6)
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


def summary_scalars(summary: dict, prefix: str = "") -> dict:
    """Numeric leaves of the summary as flat slash-separated keys (failures/no_box,
    subsets/short/giou, ...), without the sections that are logged as tables."""
    scalars = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if key in TABLE_SECTIONS:
            continue
        if isinstance(value, dict):
            scalars.update(summary_scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[name] = value
    return scalars


class WandbTracker:
    def __init__(self, out: Path, config: dict, settings: WandbConfig):
        import wandb

        self.wandb = wandb
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(settings.mode)
        # wandb stages table media in WANDB_DATA_DIR (default: the home folder); keep it in OUT so
        # an offline run directory is complete when copied elsewhere and synced
        os.environ.setdefault("WANDB_DATA_DIR", str(out / "wandb-data"))
        self.run = wandb.init(project=settings.project, entity=settings.entity, name=settings.name,
                              dir=str(out), id=run_id_of(out), resume="allow", mode=self.mode,
                              config=redact_secrets(config))

    def log_results(self, summary: dict, records: dict[str, dict], dataset, rows: int) -> None:
        wandb = self.wandb
        per_n = self.per_n_table(summary.get("per_n", {}))
        self.run.log({
            "iou_vs_n": per_n,
            "iou_vs_n_plot": wandb.plot.line_series(
                xs=per_n.get_column("N"), ys=[per_n.get_column(k) for k in ("giou", "ciou", "oracle_iou")],
                keys=["gIoU", "cIoU", "oracle IoU"], title="IoU vs N", xname="N"),
            "roles": self.roles_table(summary.get("roles", {})),
            "samples": self.samples_table(records, dataset, rows),
        })
        self.run.summary.update(summary_scalars(summary))

    def per_n_table(self, per_n: dict):
        columns = ["N", "giou", "ciou", "oracle_iou", "judge_calls"]
        data = [[int(n)] + [per_n[n].get(k) for k in columns[1:]] for n in sorted(per_n, key=int)]
        return self.wandb.Table(columns=columns, data=data)

    def roles_table(self, roles: dict):
        data = [[role, ",".join(str(r) for r in stats.get("ranks", []))] + [stats.get(k) for k in ROLE_COLUMNS]
                for role, stats in roles.items()]
        return self.wandb.Table(columns=["role", "ranks"] + ROLE_COLUMNS, data=data)

    def samples_table(self, records: dict[str, dict], dataset, rows: int):
        """The first `rows` samples of the dataset that have a record, each with its image and
        the ground-truth and predicted masks as switchable layers."""
        table = self.wandb.Table(columns=["id", "query", "subset", "iou", "oracle_iou", "failure", "image"])
        for index, sample_id in enumerate(dataset.ids):
            if len(table.data) >= rows:
                break
            record = records.get(sample_id)
            if record is None:
                continue
            sample = dataset[index]
            table.add_data(sample_id, record.get("query", sample.query), record.get("subset", sample.subset),
                           record.get("iou"), record.get("oracle_iou"), record.get("failure"),
                           self.masked_image(sample, record))
        return table

    def masked_image(self, sample, record: dict):
        """wandb.Image with prediction and ground-truth layers, or None when the image (or a
        mask) cannot be read: a bad sample costs its picture, never the logging."""
        try:
            image = sample.decode_image()
            masks = {}
            if record.get("prediction") is not None:
                masks["prediction"] = {"mask_data": decode_rle(record["prediction"]).astype("uint8"),
                                       "class_labels": {1: "prediction"}}
            if sample.gt_mask is not None:
                gt = sample.gt_mask.astype("uint8")
                gt[sample.gt_mask == IGNORE] = GT_IGNORE_CLASS
                masks["ground_truth"] = {"mask_data": gt,
                                         "class_labels": {1: "target", GT_IGNORE_CLASS: "ignore"}}
            return self.wandb.Image(image, masks=masks or None)
        except Exception as exc:  # noqa: BLE001 - any unreadable input only loses this picture
            log.warning("wandb: no image for sample %s (%s)", sample.id, exc)
            return None

    def finish(self) -> None:
        self.run.finish()
        # finish() leaves wandb's service process running until interpreter exit; teardown
        # stops it now, so no wandb process outlives the evaluation.
        self.wandb.teardown()


def tracker_for(out: Path, config_dict: dict, settings: WandbConfig, rank: int) -> WandbTracker | None:
    """The tracker of this process: only rank 0 logs, and only when tracking is enabled."""
    if rank != 0 or not settings.enabled:
        return None
    return WandbTracker(out, config_dict, settings)
