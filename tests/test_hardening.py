"""Faults that must stop the job in one clear sentence, and keys that must never be written."""
import os
import shutil

from tests.helpers import cli, records

import pytest
pytestmark = pytest.mark.cli


def test_strict_stops_at_the_first_bad_sample(tmp_path):
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache")}
    from rescue_eval.datamodules.demo import ensure_demo_set

    demo = ensure_demo_set(tmp_path / "demo")
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    (data / "val" / "demo_05.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    common = ["--data.name", "reasonseg", "--data.root", str(data), "--max_n", "1", "--mode", "heuristic",
              "--executor.backend", "grabcut", "--planner.backend", "gt_box", "--run.progress", "false",
              "--wandb.enabled", "false", "--run.parallel_requests", "1"]
    strict = cli(env, "run", "--output", str(tmp_path / "strict"), *common, "--run.strict", "true", check=False)
    assert strict.returncode == 2 and "demo_05" in strict.stderr and "--run.strict" in strict.stderr
    assert "demo_05" not in {r["id"] for r in records(tmp_path / "strict")}

    cli(env, "run", "--output", str(tmp_path / "lenient"), *common)  # without strict: scored, counted
    recs = {r["id"]: r for r in records(tmp_path / "lenient")}
    assert len(recs) == 16 and recs["demo_05"]["failure"] == "bad_input"


def test_keys_in_the_environment_never_reach_an_output_file(tmp_path):
    """Fake keys for every service the harness may talk to; W&B forced offline (with a key set,
    auto would go online). Every file written under OUT, W&B's included, is searched."""
    keys = {"OPENAI_API_KEY": "sk-FAKE-openai-41c2", "WANDB_API_KEY": "FAKEwandb0123456789abcdef0123456789abcdef",
            "HF_TOKEN": "hf_FAKEtoken9f8e7d"}
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache"), **keys}
    out = tmp_path / "out"
    cli(env, "run", "--output", str(out), "--max_n", "2", "--fraction", "0.25", "--wandb.mode", "offline",
        "--run.progress", "false")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, key in keys.items():
            assert key.encode() not in data, f"{name} found in {path}"


def test_an_unreachable_planner_server_stops_the_run_or_fails_each_sample_as_transient(tmp_path):
    import json
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache")}
    args = ["--max_n", "2", "--fraction", "0.25", "--mode", "heuristic", "--planner.backend", "openai",
            "--planner.url", f"http://127.0.0.1:{port}/v1", "--planner.retries", "1", "--planner.timeout_s", "2",
            "--run.progress", "false", "--wandb.enabled", "false"]
    stopped = cli(env, "run", "--output", str(tmp_path / "stopped"), *args, check=False)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert f"planner server http://127.0.0.1:{port}/v1/chat/completions: connection failed" in stopped.stderr
    out = tmp_path / "out"  # told to go on, the run scores every sample as failed, each marked for a retry
    done = cli(env, "run", "--output", str(out), *args, "--run.transient_stop_share", "1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 4 and summary["failures"] == {"planner_error": 4}
    assert summary["transient_failures"] == {"planner_error": 4}
    assert "failures: planner_error 4 (4 transient: the next run retries them)" in done.stdout
    assert all(f"127.0.0.1:{port}" in r["error"] and r["transient"] for r in records(out))


def test_an_output_directory_that_cannot_be_made_is_one_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache")}
    proc = cli(env, "run", "--output", str(blocker / "out"), "--max_n", "1", check=False)
    assert proc.returncode == 2 and "choose a writable --output" in proc.stderr and "Traceback" not in proc.stderr
