"""`rescue-eval serve`: the tiny executor and scorer behind the HTTP role protocol answer as
the local backends do, and a demo run through them scores as a local one."""
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from rescue_eval.core.types import ScoreItem, SegmentItem
from rescue_eval.models.http_roles import HttpScorer, HttpSegmenter, RemoteRoleError
from rescue_eval.models.sam3_tracker import Sam3TrackerSegmenter
from rescue_eval.models.siglip2 import Siglip2Scorer
from rescue_eval.serve import make_server
from tests.helpers import box_mask, sample_image

FAKE_KEY = "sk-FAKE-serve-91b2"

@pytest.fixture(scope="module")
def local():
    return {"executor": Sam3TrackerSegmenter(checkpoint="tiny:sam3-tracker"),
            "scorer": Siglip2Scorer(checkpoint="tiny:siglip2")}


@pytest.fixture(scope="module")
def served(local):
    servers = {role: make_server(backend, role) for role, backend in local.items()}
    yield servers
    for server in servers.values():
        server.close()


@pytest.mark.unit
def test_http_roles_answer_as_the_local_backends(monkeypatch, local, served, remote):
    monkeypatch.setenv("EXECUTOR_URL", served["executor"].url)
    monkeypatch.setenv("CLIP_SERVER_URL", served["scorer"].url + "/verify")
    images = [sample_image(0), sample_image(1)]
    segment_items = [SegmentItem(images[0], [(40.0, 20.0, 160.0, 80.0), (5.5, 5.5, 60.2, 90.7)]),
                     SegmentItem(images[1], []), SegmentItem(images[1], [(0.0, 0.0, 200.0, 100.0)])]
    score_items = [ScoreItem(images[0], [box_mask(40, 20, 160, 80), box_mask(0, 0, 0, 0)], "the red thing"),
                   ScoreItem(images[1], [box_mask(10, 10, 90, 60)], "a dog")]

    requests_before = served["executor"].role_server.requests
    expected_masks = local["executor"].segment(segment_items)
    masks = remote(HttpSegmenter, max_concurrency=2).segment(segment_items)
    expected_scores = local["scorer"].score(score_items)
    scores = remote(HttpScorer, max_concurrency=2).score(score_items)

    assert [len(m) for m in masks] == [2, 0, 1]
    assert all(np.array_equal(a, b) for got, want in zip(masks, expected_masks) for a, b in zip(got, want))
    assert [len(s) for s in scores] == [2, 1]
    assert scores == expected_scores  # the same bits: merged on the server, scored per sample, exact in JSON
    assert served["executor"].role_server.requests - requests_before == 3  # one item per HTTP request


@pytest.mark.unit
def test_server_rejects_malformed_requests_and_reports_backend_errors(served, remote):
    url = served["executor"].url
    assert httpx.get(url).json() == {"role": "executor"}
    for bad in (b"{not json", b'{"boxes": []}', json.dumps({"items": [{"image": "%%", "boxes": [[1, 2, 3]]}]}).encode()):
        response = httpx.post(url + "/segment", content=bad)
        assert response.status_code == 400 and "malformed request" in response.json()["error"]

    class BrokenSegmenter:
        """Test double: raises on a box at the origin, else answers no mask at all."""

        def segment(self, batch):
            if any(box[0] == 0 for item in batch for box in item.boxes):
                raise RuntimeError("scripted backend failure")
            return [[] for _ in batch]

    broken = make_server(BrokenSegmenter(), "executor")
    segmenter = remote(HttpSegmenter, url=broken.url, retries=0)
    try:
        with pytest.raises(RemoteRoleError, match=r"HTTP 500.*scripted backend failure.*after 1 attempt"):
            segmenter.segment([SegmentItem(sample_image(), [(0, 0, 9, 9)])])
        with pytest.raises(RemoteRoleError, match=r"malformed answer .*0 masks for 1 asked"):
            segmenter.segment([SegmentItem(sample_image(), [(5, 5, 9, 9)])])
    finally:
        broken.close()


# ---- the demo run through the HTTP roles scores as the local one ---------------------------------

@pytest.mark.cli
def test_demo_run_with_http_roles_scores_like_a_local_run(tmp_path, cli_env, served):
    env = {**cli_env, "OPENAI_API_KEY": FAKE_KEY}
    common = ["run", "--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false"]
    remote_roles = ["--executor.backend", "http", "--executor.url", served["executor"].url,
                    "--scorer.backend", "http", "--scorer.url", served["scorer"].url + "/verify"]
    summaries = {}
    for name, extra in (("local", []), ("http", remote_roles)):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "rescue_eval", *common, "--output", str(out), *extra],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summaries[name] = json.loads((out / "summary.json").read_text())
    assert summaries["http"]["n_failed"] == 0 and summaries["http"]["n_samples"] == 16
    assert served["executor"].role_server.requests >= 16 and served["scorer"].role_server.requests >= 16
    for key in ("giou", "ciou", "oracle_iou", "per_n"):
        assert summaries["http"][key] == summaries["local"][key], key
