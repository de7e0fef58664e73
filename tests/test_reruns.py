"""Reruns that heal: transient failures retried (the old records kept in the attempts log), a
run of them stops the job, a failed start does not block its fix, Ctrl-C is one line."""
import json
import signal
import subprocess
import sys
import time

import pytest

from rescue_eval.core.errors import FatalError, UsageError
from rescue_eval.dist.rpc import free_port
from rescue_eval.failures import TransientStop, retry_selector
from rescue_eval.io.results import load_records, set_aside
from rescue_eval.models.sam3_tracker import Sam3TrackerSegmenter
from rescue_eval.serve import make_server
from tests.helpers import cli, records, scores

ARGS = ["--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false"]


def record(i, failure=None, transient=False):
    return {"id": f"s{i}", "failure": failure, "transient": transient, "error": f"{failure}: x" if failure else None}


@pytest.mark.unit
def test_set_aside_moves_the_selected_records_to_the_attempts_log(tmp_path):
    (tmp_path / "results").mkdir()
    recs = [record(0), record(1, "executor_error", True), record(2, "bad_input"), record(3, "judge_error", True)]
    (tmp_path / "results/rank-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:2]))
    (tmp_path / "results/rank-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[2:]))
    assert set_aside(tmp_path, retry_selector("none")) == {}
    assert set_aside(tmp_path, retry_selector("transient")) == {"executor_error": 1, "judge_error": 1}
    assert sorted(load_records(tmp_path)) == ["s0", "s2"]
    attempts = [json.loads(line) for line in (tmp_path / "results/attempts.jsonl").read_text().splitlines()]
    assert [a["id"] for a in attempts] == ["s1", "s3"]
    assert set_aside(tmp_path, retry_selector("all")) == {"bad_input": 1}
    assert sorted(load_records(tmp_path)) == ["s0"]
    assert len((tmp_path / "results/attempts.jsonl").read_text().splitlines()) == 3  # appended, never lost


@pytest.mark.unit
def test_a_damaged_results_file_is_one_sentence_naming_it(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results/rank-0.jsonl").write_text(json.dumps(record(0)) + "\nnot json\n")
    with pytest.raises(UsageError, match=r"rank-0.jsonl line 2 is not a result record"):
        set_aside(tmp_path, retry_selector("transient"))


@pytest.mark.unit
def test_transient_stop_counts_one_reason_within_the_window():
    stop = TransientStop(share=0.2, window=50, todo=16)  # limit 3.2: the 4th transient failure stops
    for i in range(3):
        stop.check(record(i, "executor_error", True))
    stop.check(record(3, "bad_input"))  # permanent failures never stop the job
    stop.check(record(4, "judge_error", True))  # another reason counts apart
    with pytest.raises(FatalError, match="4 of the first 6 samples failed with executor_error"):
        stop.check(record(5, "executor_error", True))
    few = TransientStop(share=0.2, window=50, todo=2)  # a rerun of two samples, both failing again, finishes
    few.check(record(0, "executor_error", True))
    few.check(record(1, "executor_error", True))
    late = TransientStop(share=0.2, window=2, todo=100)
    late.check(record(0))
    late.check(record(1))
    for i in range(2, 10):
        late.check(record(i, "executor_error", True))  # past the window: counted as failures, no stop


@pytest.mark.cli
def test_a_stopped_executor_stops_the_job_and_the_rerun_after_its_restart_heals(tmp_path, cli_env):
    port = free_port()
    remote = ["--executor.backend", "http", "--executor.url", f"http://127.0.0.1:{port}/segment",
              "--executor.retries", "1"]
    out = tmp_path / "out"
    down = cli(cli_env, "run", "--output", str(out), *ARGS, *remote, check=False)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "failed with executor_error" in down.stderr and "rerun the same command" in down.stderr
    failed = records(out)
    assert failed and all(r["failure"] == "executor_error" and r["transient"] for r in failed)
    server = make_server(Sam3TrackerSegmenter(checkpoint="tiny:sam3-tracker"), "executor", port=port)
    try:
        healed = cli(cli_env, "run", "--output", str(out), *ARGS, *remote)
    finally:
        server.close()
    assert "failures: none" in healed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 16 and summary["n_failed"] == 0
    attempts = [json.loads(line) for line in (out / "results/attempts.jsonl").read_text().splitlines()]
    assert sorted(a["id"] for a in attempts) == sorted(r["id"] for r in failed)  # the old records, kept
    local = tmp_path / "local"
    cli(cli_env, "run", "--output", str(local), *ARGS)
    assert scores(out) == scores(local)  # as if the server had never been down


@pytest.mark.cli
def test_a_failed_start_leaves_no_obstacle_to_its_fix(tmp_path, cli_env):
    out = tmp_path / "out"
    bad = cli(cli_env, "run", "--output", str(out), *ARGS, "--executor.checkpoint", str(tmp_path / "nowhere"),
              check=False)
    assert bad.returncode == 2 and (out / "config.yaml").exists() and not load_records(out)
    cli(cli_env, "run", "--output", str(out), *ARGS, "--data.limit", "2")


@pytest.mark.cli
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, cli_env):
    out = tmp_path / "out"
    # One sample in flight: the samples finish one by one, so the signal lands mid-run. SIGINT at its
    # default, as in a terminal: a suite started in the background of a script ignores it, and so
    # would this child (seen in a `cmd &` run of .ci/run).
    proc = subprocess.Popen([sys.executable, "-m", "rescue_eval", "run", "--output", str(out), "--max_n", "4",
                             "--run.parallel_requests", "1", "--run.progress", "false", "--wandb.enabled", "false"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (out / "results").exists() or not load_records(out):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("rescue-eval: interrupted; every finished sample is kept")
    assert 0 < len(load_records(out)) < 16  # interrupted mid-run, the finished samples kept


@pytest.mark.cli
def test_a_forced_resume_with_another_config_is_reported_as_mixed(tmp_path, cli_env):
    out = tmp_path / "out"
    cli(cli_env, "run", "--output", str(out), *ARGS, "--mode", "heuristic", "--data.limit", "6")
    cli(cli_env, "run", "--output", str(out), *ARGS, "--run.force", "true")
    summary = json.loads((out / "summary.json").read_text())
    hashes = sorted(p.stem for p in (out / "configs").glob("*.yaml"))
    assert len(hashes) == 2 and sorted({r["config"] for r in records(out)}) == hashes
    assert sorted(summary["configs"].values()) == [6, 10]
    assert next(iter(summary)) == "warning" and summary["warning"].startswith("MIXED CONFIGS")
    assert "MIXED CONFIGS" in (out / "report.md").read_text()
    (out / "summary.json").unlink()  # as after a crash: the rebuilt summary says so as well, with its notes
    cli(cli_env, "report", str(out))
    rebuilt = json.loads((out / "summary.json").read_text())
    assert rebuilt["configs"] == summary["configs"] and rebuilt["notes"][0].startswith("MIXED CONFIGS")
    assert any("tiny random-weight" in note for note in rebuilt["notes"])


@pytest.mark.cli
def test_wandb_logs_live_points_during_the_job_and_the_scores_at_the_end(tmp_path, cli_env):
    from tests.helpers import item_key, wandb_records

    out = tmp_path / "out"
    cli(cli_env, "run", "--output", str(out), "--max_n", "2", "--run.progress", "false", "--wandb.log_every_s", "0.2",
        "--wandb.tags", "[demo,ci]")
    (log_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    points = []
    for rec in wandb_records(log_file):
        if rec.WhichOneof("record_type") == "history":
            point = {item_key(i): json.loads(i.value_json) for i in rec.history.item}
            if "live/samples_done" in point:
                points.append(point)
    done = [p["live/samples_done"] for p in points]
    assert done == sorted(done) and done[-1] == 16 and any(0 < d < 16 for d in done)  # seen mid-job
    summary = json.loads((out / "summary.json").read_text())
    assert abs(points[-1]["live/giou"] - summary["giou"]) < 1e-9
    assert points[-1]["live/roles/executor/busy_fraction"] > 0
