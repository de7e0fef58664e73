"""W&B tracking, offline: log a small evaluation (live points, then the results), then read
back what wandb wrote under OUT.

wandb 0.31 offline writes OUT/wandb/offline-run-<time>-<id>/run-<id>.wandb (a LevelDB-style
log of protobuf `Record`s: run with config, history, summary, artifact, ...) plus
files/media/table/*.table.json. Tables are logged as run_table artifacts whose full JSON
(image columns included) and media are staged in $WANDB_DATA_DIR/artifacts/staging until
`wandb sync`. There is no Python reader of the .wandb file in wandb 0.31, so `wandb_records`
below reads the log format directly.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rescue_eval.config import WandbConfig
from rescue_eval.core.masks import encode_rle
from rescue_eval.io.tracking import (RUN_ID_FILE, WandbTracker, artifact_name, group_of, resolve_mode,
                                     summary_scalars, tracker_for)
from rescue_eval.core.types import IGNORE, Sample
from tests.helpers import item_key, logged_table, read_offline_run, wandb_records
from tests.helpers import LIVE_INTERVAL_S as INTERVAL_S
from tests.helpers import append_results as append
from tests.helpers import result_line as line
from tests.helpers import result_record as rec

pytestmark = pytest.mark.unit

SECRET_IN_CONFIG = "sk-FAKE-123"
SECRET_IN_ENV = "sk-FAKE-ENV-456"
H, W = 24, 32

SUMMARY = {
    "giou": 0.5, "ciou": 0.25, "oracle_iou": 0.75, "n_samples": 3, "n_failed": 1,
    "failures": {"unreadable_image": 1},
    "per_n": {"2": {"giou": 0.5, "ciou": 0.25, "oracle_iou": 0.75, "judge_calls": 4},
              "1": {"giou": 0.4, "ciou": 0.2, "oracle_iou": 0.4, "judge_calls": 0}},
    "subsets": {"short": {"giou": 0.6, "ciou": 0.3, "oracle_iou": 0.8, "n_samples": 2, "n_failed": 0,
                          "failures": {}, "per_n": {"2": {"giou": 0.6, "ciou": 0.3, "oracle_iou": 0.8}}}},
    "roles": {"planner": {"ranks": [0, 1], "requests": 3, "batches": 2, "mean_batch": 1.5, "busy_s": 1.0,
                          "busy_fraction": 0.5, "mean_queue_wait_s": 0.01},
              "judge": {"ranks": [0], "requests": 4, "batches": 1, "mean_batch": 4.0, "busy_fraction": 0.2}},
    "mode": "comparative",
}


class FakeDataset:
    """Test double of a datamodule's dataset: `.ids` and `__getitem__` returning Samples."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples
        self.ids = [s.id for s in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def jpeg_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H), color).save(buf, format="JPEG")
    return buf.getvalue()


def gt_mask() -> np.ndarray:
    gt = np.zeros((H, W), dtype=np.uint8)
    gt[4:12, 4:12] = 1
    gt[0:2, :] = IGNORE
    return gt


def box_mask(y1, y2, x1, x2) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def record(sample_id, iou, failure=None, prediction=None, sweep=()) -> dict:
    return {"id": sample_id, "query": f"query of {sample_id}", "subset": "short", "iou": iou,
            "oracle_iou": iou, "failure": failure, "prediction": prediction,
            "sweep": {str(n): {"chosen": 0} for n in sweep}}


def fake_dataset_and_records() -> tuple[FakeDataset, dict]:
    """good: has a record; norecord: skipped; broken: unreadable image (row without image);
    extra: beyond rows=2."""
    samples = [Sample("good", jpeg_bytes((200, 30, 30)), "query of good", gt_mask(), "short"),
               Sample("norecord", jpeg_bytes((30, 200, 30)), "q", gt_mask(), "long"),
               Sample("broken", b"not a jpeg", "query of broken", gt_mask(), "short"),
               Sample("extra", jpeg_bytes((30, 30, 200)), "q", gt_mask(), "long")]
    records = {"good": record("good", 0.5, prediction=encode_rle(box_mask(4, 10, 4, 10)), sweep=(1, 8, 2)),
               "broken": record("broken", 0.0, failure="unreadable_image",
                                prediction=encode_rle(np.zeros((H, W), dtype=bool))),
               "extra": record("extra", 1.0, prediction=encode_rle(box_mask(0, 5, 0, 5)))}
    return FakeDataset(samples), records


def wandb_children() -> list[str]:
    """Command lines of wandb processes started by this process (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if ppid == os.getpid() and "wandb" in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No credentials (auto -> offline), quiet, and wandb's own files kept under tmp_path."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # a developer's ~/.netrc must not count
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name, folder in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / folder))
    return tmp_path


def write_output_files(out: Path, records: dict) -> dict[str, bytes]:
    """What the job writes before log_results (report.md left out: it may be missing): path in
    the artifact -> bytes."""
    files = {"results/rank-0.jsonl": "".join(json.dumps(r) + "\n" for r in list(records.values())[:2]),
             "results/rank-1.jsonl": json.dumps(records["extra"]) + "\n",
             "summary.json": json.dumps(SUMMARY), "plots/iou_vs_n.png": "not really a png"}
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return {name: text.encode() for name, text in files.items()}


def test_offline_run_logs_results_without_secrets_and_resumes(offline_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_IN_ENV)
    out = offline_env / "out"
    config = {"planner": {"max_n": 2}, "openai": {"api_key": SECRET_IN_CONFIG, "Auth_Token": "t"},
              "data": {"name": "reasonseg", "split": "val"}}
    dataset, records = fake_dataset_and_records()

    tracker = WandbTracker(out, config, WandbConfig(table_samples=2, tags=["nightly", "qwen3"], notes="a note"))
    assert tracker.mode == "offline"
    written = write_output_files(out, records)
    tracker.log_results(SUMMARY, records, dataset, rows=2)
    tracker.finish()
    assert wandb_children() == []

    run = read_offline_run(out)
    assert run["id"] == (out / RUN_ID_FILE).read_text().strip()
    (run_record,) = [r.run for r in wandb_records(next(run["dir"].glob("run-*.wandb"))) if r.HasField("run")]
    assert (list(run_record.tags), run_record.run_group, run_record.notes) == (["nightly", "qwen3"],
                                                                              "reasonseg-val", "a note")
    assert run["config"]["planner"] == {"max_n": 2}
    assert run["config"]["openai"] == {"api_key": "***", "Auth_Token": "***"}

    per_n = logged_table(run, "iou_vs_n")
    assert per_n["columns"] == ["N", "giou", "ciou", "oracle_iou", "judge_calls"]
    assert per_n["data"] == [[1, 0.4, 0.2, 0.4, 0], [2, 0.5, 0.25, 0.75, 4]]
    plot = run["config"]["_wandb/visualize/iou_vs_n_plot"]
    assert plot["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
    assert len(logged_table(run, "iou_vs_n_plot_table")["data"]) == 3 * 2  # 3 curves x 2 N

    roles = {row[0]: row for row in logged_table(run, "roles")["data"]}
    assert roles["planner"] == ["planner", "0,1", 3, 2, 1.5, 0.5, 0.01]
    assert roles["judge"] == ["judge", "0", 4, 1, 4.0, 0.2, None]

    samples = logged_table(run, "samples")
    assert samples["columns"] == ["id", "query", "subset", "N", "iou", "oracle_iou", "failure", "image"]
    rows = {row[0]: row for row in samples["data"]}
    assert list(rows) == ["good", "broken"]  # dataset order, records only, at most rows=2
    assert rows["good"][1:6] == ["query of good", "short", 8, 0.5, 0.5]  # N: the sweep's largest, as a number
    assert rows["broken"][3] is None  # a failed sample has no sweep
    assert rows["broken"][6] == "unreadable_image" and rows["broken"][7] is None
    image = rows["good"][7]
    assert image["_type"] == "image-file" and set(image["masks"]) == {"prediction", "ground_truth"}
    gt_png = run["staged"][("run-" + run["id"] + "-samples", image["masks"]["ground_truth"]["path"])]
    assert set(np.unique(np.asarray(Image.open(gt_png)))) == {0, 1, 2}  # 255 -> class 2 "ignore"

    for key, value in {"giou": 0.5, "ciou": 0.25, "oracle_iou": 0.75, "n_samples": 3, "n_failed": 1,
                       "failures/unreadable_image": 1, "subsets/short/giou": 0.6,
                       "subsets/short/n_samples": 2, "giou@1": 0.4, "ciou@1": 0.2, "oracle_iou@1": 0.4,
                       "giou@2": 0.5, "ciou@2": 0.25, "oracle_iou@2": 0.75, "subsets/short/giou@2": 0.6,
                       "units": "fraction"}.items():
        assert run["summary"][key] == value, key
    assert "per_n/1/giou" not in run["summary"] and "roles/planner/requests" not in run["summary"]  # tables

    name = artifact_name(out, run["id"])
    (artifact,) = [r.artifact for r in wandb_records(next(run["dir"].glob("run-*.wandb")))
                   if r.HasField("artifact") and r.artifact.name == name]
    assert artifact.type == "evaluation"
    staged = {path: file.read_bytes() for (art, path), file in run["staged"].items() if art == name}
    assert staged == written  # every file the job wrote, report.md absent as on disk

    for path in offline_env.rglob("*"):  # OUT and wandb's staging dirs, every file, as bytes
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_IN_CONFIG.encode() not in data and SECRET_IN_ENV.encode() not in data, path

    resumed = WandbTracker(out, config, WandbConfig())
    assert resumed.run.id == run["id"]
    resumed.finish()
    assert wandb_children() == []


def test_auto_mode_is_online_only_with_credentials(offline_env, monkeypatch):
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("online") == "online"

    monkeypatch.setenv("WANDB_API_KEY", "fake-key-never-used")
    assert resolve_mode("auto") == "online"
    assert resolve_mode("offline") == "offline"
    monkeypatch.delenv("WANDB_API_KEY")

    netrc = offline_env / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "f" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode("auto") == "online"

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("online") == "disabled"


def test_group_artifact_name_and_per_n_scalars():
    data = {"data": {"name": "refcoco+", "split": "testA"}}
    assert group_of(data, WandbConfig()) == "refcoco+-testA"
    assert group_of(data, WandbConfig(group="ablation")) == "ablation"
    assert group_of({}, WandbConfig()) is None  # a config without a dataset: no group
    assert artifact_name(Path("/runs/refcoco+ testA (v2)"), "ab12") == "refcoco-testA-v2-ab12"
    long = artifact_name(Path("/runs") / ("x" * 300), "ab12")
    assert len(long) == 128 and long.endswith("-ab12")
    assert summary_scalars({"per_n": {8: {"giou": 0.9, "judge_calls": 3}}}) == {"giou@8": 0.9}


def test_tracker_only_on_rank_zero_when_enabled(tmp_path):
    assert tracker_for(tmp_path, {}, WandbConfig(), rank=1) is None
    assert tracker_for(tmp_path, {}, WandbConfig(enabled=False), rank=0) is None
    assert not (tmp_path / RUN_ID_FILE).exists()


def history_rows(out: Path) -> list[dict]:
    """Every history row of the one offline run under OUT, in order (read_offline_run keeps
    only each key's last value)."""
    (log_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    return [{item_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in wandb_records(log_file) if r.WhichOneof("record_type") == "history"]


def test_live_points_reach_the_offline_run_before_the_results(offline_env):
    out = offline_env / "out"
    append(out, 0, line(rec("a", 0.5, 1, 2)))
    tracker = WandbTracker(out, {}, WandbConfig(log_every_s=INTERVAL_S))
    tracker.start_live(total=4, role_stats=lambda: {"judge": {"busy_fraction": 0.3, "mean_queue_wait_s": 0.0}})
    time.sleep(5 * INTERVAL_S)
    append(out, 1, line(rec("b", 1.0, 3, 3)) + line(rec("c", 0.0, 0, 5, failure="bad_input")))
    time.sleep(5 * INTERVAL_S)
    tracker.log_results(SUMMARY, {}, FakeDataset([]), rows=0)  # stops the live points first
    assert tracker.live is None
    tracker.finish()
    assert wandb_children() == []

    rows = history_rows(out)
    live = [r for r in rows if "live/samples_done" in r]
    assert len(live) >= 2 and "iou_vs_n/_type" in rows[-1]  # the tables come after every live point
    assert [r["live/samples_done"] for r in live] == sorted(r["live/samples_done"] for r in live)
    last = live[-1]
    assert (last["live/samples_done"], last["live/samples_total"], last["live/failures/bad_input"]) == (3, 4, 1)
    assert last["live/giou"] == pytest.approx(1.5 / 3) and last["live/ciou"] == pytest.approx(4 / 10)
    assert last["live/oracle_iou"] == pytest.approx((0.75 + 1.0 + 0.25) / 3)
    assert last["live/eta_s"] == pytest.approx(1 / last["live/samples_per_s"])
    assert last["live/roles/judge/busy_fraction"] == 0.3


def test_runs_of_a_suite_stay_open_together(offline_env):
    """One run per split at the same time: finishing one must not stop wandb under the other."""
    first = WandbTracker(offline_env / "split-a", {}, WandbConfig())
    second = WandbTracker(offline_env / "split-b", {}, WandbConfig())
    assert first.run.id != second.run.id
    first.finish()
    second.log_results(SUMMARY, {}, FakeDataset([]), rows=0)
    second.finish()
    assert wandb_children() == []
    assert read_offline_run(offline_env / "split-b")["summary"]["giou@2"] == 0.5
