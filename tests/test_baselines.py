"""The CPU baselines and one-image commands: gt_box oracle planner, GrabCut executor,
`rescue-eval segment` and `rescue-eval download`."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rescue_eval.models.grabcut import GrabCutSegmenter
from rescue_eval.models.gt_box import GroundTruthBoxPlanner
from rescue_eval.core.masks import box_iou
from rescue_eval.core.types import PlanItem, SegmentItem
from tests.helpers import cli, records

pytestmark = pytest.mark.cli


def disk_scene():
    image = Image.new("RGB", (160, 120), (200, 200, 190))
    ImageDraw.Draw(image).ellipse((50, 30, 110, 90), fill=(30, 60, 200))
    truth = np.zeros((120, 160), bool)
    yy, xx = np.mgrid[:120, :160]
    truth[(yy - 60) ** 2 + (xx - 80) ** 2 <= 30 ** 2] = True
    return image, truth


def test_grabcut_segments_the_object_in_its_box_deterministically():
    image, truth = disk_scene()
    segmenter = GrabCutSegmenter()
    (masks,) = segmenter.segment([SegmentItem(image, [(40, 20, 120, 100), (0, 0, 3, 3)])])
    iou = (masks[0] & truth).sum() / (masks[0] | truth).sum()
    assert iou > 0.85 and masks[0].shape == (120, 160)
    assert masks[1].sum() <= 9  # a box too small to model stays the box
    (again,) = segmenter.segment([SegmentItem(image, [(40, 20, 120, 100)])])
    assert np.array_equal(again[0], masks[0])


def test_gt_box_planner_jitters_around_the_truth_and_is_prefix_consistent():
    image = Image.new("RGB", (200, 100))
    planner = GroundTruthBoxPlanner(gt_jitter=0.1)
    (hyps,) = planner.propose([PlanItem(image, "q", 8, seed=3, gt_box=(50, 20, 150, 80))])
    assert hyps[0].box == (50, 20, 150, 80) and all(h.status == "ok" for h in hyps)
    assert all(box_iou(h.box, (50, 20, 150, 80)) > 0.6 for h in hyps)
    assert len({h.box for h in hyps}) == 8
    (first,) = planner.propose([PlanItem(image, "q", 3, seed=3, gt_box=(50, 20, 150, 80))])
    assert [h.box for h in first] == [h.box for h in hyps[:3]]
    (none,) = planner.propose([PlanItem(image, "q", 2, seed=3, gt_box=None)])
    assert [h.status for h in none] == ["parse_error", "parse_error"]


@pytest.fixture(scope="module")
def env(cli_env):
    return cli_env


def test_demo_with_ground_truth_boxes_and_grabcut_is_flagged_as_an_oracle(env, tmp_path):
    out = tmp_path / "oracle"
    cli(env, "run", "--output", str(out), "--planner.backend", "gt_box", "--executor.backend", "grabcut",
        "--mode", "heuristic", "--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["oracle_boxes"] is True and "ORACLE" in summary["notes"][0]
    assert "ORACLE" in (out / "report.md").read_text()
    assert all(r["oracle_boxes"] for r in records(out))
    assert summary["giou"] > 0.5  # GrabCut inside the true box of a flat-coloured shape


def test_segment_one_image(env, tmp_path):
    image_path = tmp_path / "scene.jpg"
    buf = io.BytesIO()
    disk_scene()[0].save(buf, "JPEG")
    image_path.write_bytes(buf.getvalue())
    for extra in ([], ["--executor.backend", "grabcut", "--mode", "heuristic"]):
        out = tmp_path / f"seg{len(extra)}"
        proc = cli(env, "segment", str(image_path), "the blue disk", "--output", str(out), "--max_n", "3", *extra)
        assert "mask.png" in proc.stdout
        mask = np.asarray(Image.open(out / "mask.png"))
        assert mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}
        record = json.loads((out / "candidates.json").read_text())
        assert len(record["hypotheses"]) == 3 and "iou" not in record  # nothing to score against
        assert Image.open(out / "overlay.png").size == (160, 120)


def test_download_says_clearly_when_the_hub_is_unreachable(env):
    proc = subprocess.run([sys.executable, "-m", "rescue_eval", "download"], capture_output=True, text=True,
                          env={**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_XET": "1"}, timeout=120)
    assert proc.returncode == 2
    assert "Could not reach the Hugging Face hub for Qwen/Qwen3-VL-8B-Instruct" in proc.stderr


def test_download_lists_only_hub_checkpoints():
    from rescue_eval import config
    from rescue_eval.models.download import checkpoints_of

    cfg = config.parse(["--config", "configs/reasonseg_8gpu.yaml", "--output", "x", "--data.root", "x"])[0]
    assert checkpoints_of(config.role_sections(cfg)) == {"planner": "Qwen/Qwen3-VL-8B-Instruct", "executor": "facebook/sam3",
                                   "scorer": "google/siglip2-giant-opt-patch16-384",
                                   "judge": "Qwen/Qwen3-VL-30B-A3B-Thinking"}
    assert checkpoints_of(config.role_sections(config.Config())) == {}  # tiny checkpoints are built, not downloaded


def test_serve_command_hosts_a_role_over_http(env):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rescue_eval", "serve", "scorer", "--port", str(port),
                             "--scorer.max_batch", "8"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    assert json.loads(answer.read()) == {"role": "scorer"}
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
                time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
