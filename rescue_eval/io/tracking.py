"""Weights & Biases logging of an evaluation, on rank 0 only: live points during the job, the
results at its end.

One W&B run per output directory: its id is kept in OUT/wandb-run-id, so a resumed job logs
into the same run. Without credentials the run is written offline under OUT/wandb/ and can
be uploaded later with `wandb sync`. wandb is imported inside the class, so importing this
module costs nothing when tracking is off.

Units: every IoU score W&B shows (gIoU, cIoU, oracle IoU, live or final, `giou@N` for each N
of the sweep) is a fraction in [0, 1], not a percentage as in the papers; the run's summary
says so in its `units` key. Keys ending in `_s` are seconds.

During the job, `start_live` logs a point every `log_every_s` seconds (`rescue_eval.io.live`);
at the end, `log_results` logs the per-N curve, role and sample tables and the summary, and
uploads the result files as a versioned artifact of type "evaluation". The API details here
are those of wandb 0.31 (`reinit="create_new"`, `wandb.teardown`, artifacts).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from rescue_eval.core.masks import decode_rle
from rescue_eval.core.types import IGNORE
from rescue_eval.io.results import results_dir

log = logging.getLogger("rescue_eval")

RUN_ID_FILE = "wandb-run-id"
SECRET_WORDS = ("key", "token", "secret", "password")
REDACTED = "***"
TABLE_SECTIONS = {"per_n", "roles"}  # summary sections logged as tables, not as scalars
ROLE_COLUMNS = ["requests", "batches", "mean_batch", "busy_fraction", "mean_queue_wait_s"]
PER_N_SCORES = ("giou", "ciou", "oracle_iou")  # summary scalars giou@N, ... next to the per-N table
UNITS = "fraction"  # of every IoU score logged (see the module docstring)
GT_IGNORE_CLASS = 2  # ground-truth 255 shown as its own mask class (wandb mask ids are small ints)
ARTIFACT_TYPE = "evaluation"
ARTIFACT_NAME_MAXLEN = 128  # wandb 0.31 refuses longer artifact names


@dataclass
class WandbConfig:
    """Weights & Biases: one run per output directory, logged by rank 0.

    Attributes:
        enabled: log to W&B
        mode: auto is online only when credentials exist (WANDB_API_KEY or a netrc entry), else offline
        project: the W&B project
        entity: the W&B team or user (None: the account's default)
        name: the run's display name (None: W&B picks one)
        table_samples: rows of the logged sample table (image, ground truth, prediction)
        tags: the run's tags
        group: the run's group (None: the dataset split, e.g. reasonseg-val)
        notes: the run's description
        log_every_s: seconds between two live points (progress, running scores) during the job
    """

    enabled: bool = True
    mode: Literal["auto", "offline", "online"] = "auto"
    project: str = "rescue-eval"
    entity: Optional[str] = None
    name: Optional[str] = None
    table_samples: int = 16
    tags: list[str] = field(default_factory=list)
    group: Optional[str] = None
    notes: Optional[str] = None
    log_every_s: float = 30.0


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


def group_of(config: dict, settings: WandbConfig) -> Optional[str]:
    """The run's group: the configured one, else the dataset split (reasonseg-val), so runs of
    one split compare side by side."""
    data = config.get("data", {})
    if settings.group is not None or "name" not in data:
        return settings.group
    return f"{data['name']}-{data['split']}"


def artifact_name(out: Path, run_id: str) -> str:
    """The name of the run's result artifact: the output folder's name, made of the characters
    wandb accepts, and the run id, so that each output directory has its own artifact."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(out).resolve().name).strip("-.") or "results"
    return f"{folder[:ARTIFACT_NAME_MAXLEN - len(run_id) - 1]}-{run_id}"


def summary_scalars(summary: dict, prefix: str = "") -> dict:
    """Numeric leaves of the summary as flat slash-separated keys (failures/no_box,
    subsets/short/giou, ...), without the sections that are logged as tables, plus the scores
    of each N as giou@N, ciou@N and oracle_iou@N."""
    scalars = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if key == "per_n":
            scalars.update({f"{prefix}{score}@{int(n)}": scores[score]
                            for n, scores in value.items() for score in PER_N_SCORES if score in scores})
        if key in TABLE_SECTIONS:
            continue
        if isinstance(value, dict):
            scalars.update(summary_scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[name] = value
    return scalars


def chosen_n(record: dict) -> Optional[int]:
    """The N whose selection is the sample's prediction: the largest N of its sweep."""
    return max(map(int, record["sweep"])) if record.get("sweep") else None


class WandbTracker:
    """The W&B run of one output directory. On rank 0: `start_live` when the samples start,
    `log_results` once summary.json and report.md are written, then `finish`."""

    open_runs = 0  # trackers of this process not finished yet: the last one stops wandb's service
    open_runs_lock = threading.Lock()

    def __init__(self, out: Path, config: dict, settings: WandbConfig):
        import wandb

        self.wandb, self.settings, self.live = wandb, settings, None
        self.out = out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(settings.mode)
        # wandb stages table media in WANDB_DATA_DIR (default: the home folder); keep it in OUT so
        # an offline run directory is complete when copied elsewhere and synced
        os.environ.setdefault("WANDB_DATA_DIR", str(out / "wandb-data"))
        # create_new: a suite keeps one run per split open at the same time
        self.run = wandb.init(project=settings.project, entity=settings.entity, name=settings.name,
                              dir=str(out), id=run_id_of(out), resume="allow", mode=self.mode,
                              config=redact_secrets(config), tags=list(settings.tags),
                              group=group_of(config, settings), notes=settings.notes, reinit="create_new")
        with WandbTracker.open_runs_lock:
            WandbTracker.open_runs += 1
        self.run.summary["units"] = UNITS

    def start_live(self, total: int, role_stats: Optional[Callable[[], dict]] = None) -> None:
        """Log a point every `log_every_s` seconds from a daemon thread, until `stop_live`:
        samples done (of `total`, every rank, records already there included), samples/s since
        now, ETA, running gIoU, cIoU and oracle IoU, failures by reason and, with `role_stats`
        (role -> {"busy_fraction", "mean_queue_wait_s", ...}), each role's utilisation."""
        from rescue_eval.io.live import LiveLogger  # only a job that logs live reads the result files

        self.stop_live()
        self.live = LiveLogger(self.out, self.run.log, total, self.settings.log_every_s, role_stats)

    def stop_live(self) -> None:
        """Stop the live points after logging the last one; nothing when they are not running."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    def log_results(self, summary: dict, records: dict[str, dict], dataset, rows: int) -> None:
        """The final scores, tables and result artifact; stops the live points first."""
        self.stop_live()
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
        if summary.get("warning"):  # e.g. records of mixed configs: on the run's page, not only in files
            self.run.summary["warning"] = summary["warning"]
        self.log_artifact()

    def log_artifact(self) -> None:
        """The results JSONL files, summary.json and the report with its pictures as a new
        version of the run's artifact; files that do not exist (yet) are left out."""
        artifact = self.wandb.Artifact(artifact_name(self.out, self.run.id), type=ARTIFACT_TYPE)
        for path in sorted(results_dir(self.out).glob("*.jsonl")):
            artifact.add_file(str(path), name=f"results/{path.name}")
        for name in ("summary.json", "report.md"):
            if (self.out / name).is_file():
                artifact.add_file(str(self.out / name), name=name)
        for folder in ("plots", "overlays"):  # the pictures report.md links to
            if (self.out / folder).is_dir():
                artifact.add_dir(str(self.out / folder), name=folder)
        self.run.log_artifact(artifact)

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
        table = self.wandb.Table(columns=["id", "query", "subset", "N", "iou", "oracle_iou", "failure", "image"])
        for index, sample_id in enumerate(dataset.ids):
            if len(table.data) >= rows:
                break
            record = records.get(sample_id)
            if record is None:
                continue
            sample = dataset[index]
            table.add_data(sample_id, record.get("query", sample.query), record.get("subset", sample.subset),
                           chosen_n(record), record.get("iou"), record.get("oracle_iou"), record.get("failure"),
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
        self.stop_live()
        self.run.finish()
        with WandbTracker.open_runs_lock:
            WandbTracker.open_runs -= 1
            last = WandbTracker.open_runs == 0
        # finish() leaves wandb's service process running until interpreter exit; teardown
        # stops it now, so no wandb process outlives the evaluation (once no other run needs it)
        if last:
            self.wandb.teardown()


def tracker_for(out: Path, config_dict: dict, settings: WandbConfig, rank: int) -> WandbTracker | None:
    """The tracker of this process: only rank 0 logs, and only when tracking is enabled."""
    if rank != 0 or not settings.enabled:
        return None
    return WandbTracker(out, config_dict, settings)
