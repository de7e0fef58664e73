"""The CLI end to end on the demo set with the tiny checkpoints, as a user runs it."""
import json
from pathlib import Path

import pytest

from rescue_eval.core.masks import decode_rle, intersection_union, sample_iou
from tests.helpers import FAKE_KEY, cli, logged_table, read_offline_run, records, records_by_id, scores

pytestmark = pytest.mark.cli

@pytest.fixture(scope="module")
def env(cli_env):
    return {**cli_env, "OPENAI_API_KEY": FAKE_KEY}


@pytest.fixture(scope="module")
def demo_run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    cli(env, "run", "--config", "configs/demo.yaml", "--output", str(out), "--max_n", "4", "--run.progress", "false")
    return out


def test_output_directory_contract(demo_run):
    out = demo_run
    for name in ("config.yaml", "summary.json", "report.md", "plots/iou_vs_n.png", "plots/judge_calls_vs_n.png",
                 "results/rank-0.jsonl"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 16 and set(summary["per_n"]) == {"1", "2", "4"}
    assert set(summary["subsets"]) == {"short", "long"}
    assert summary["subsets"]["short"]["n_samples"] + summary["subsets"]["long"]["n_samples"] == 16
    assert {"planner", "executor", "scorer", "judge"} <= set(summary["roles"])
    assert summary["roles"]["planner"]["requests"] == 16
    report = (out / "report.md").read_text()
    assert "Metric policy" in report and "tiny random-weight" in report and "| 4 |" in report
    run = read_offline_run(out)  # the W&B offline run directory, read back
    assert run["id"] == (out / "wandb-run-id").read_text().strip()
    assert run["summary"]["giou"] == pytest.approx(summary["giou"])
    assert run["config"]["planner"]["max_n"] == 4
    assert [row[0] for row in logged_table(run, "iou_vs_n")["data"]] == [1, 2, 4]
    assert len(logged_table(run, "samples")["data"]) == 16
    assert {row[0] for row in logged_table(run, "roles")["data"]} == {"planner", "executor", "scorer", "judge"}
    for path in out.rglob("*"):  # keys in the environment never reach an output file
        assert not path.is_file() or FAKE_KEY.encode() not in path.read_bytes(), path


def test_records_score_what_the_summary_says(env, demo_run):
    """Recompute gIoU/cIoU from the JSONL prediction masks and the dataset's ground truth."""
    from rescue_eval.datamodules.demo import DemoDataModule

    recs = records(demo_run)
    assert len(recs) == len({r["id"] for r in recs}) == 16
    dm = DemoDataModule(root=str(Path(env["RESCUE_EVAL_CACHE"]) / "demo-v1"))
    dm.setup()
    gts = {dm.dataset.ids[i]: dm.dataset[i].gt_mask for i in range(len(dm.dataset))}
    ious, inter, union = [], 0, 0
    for r in recs:
        i, u = intersection_union(decode_rle(r["prediction"]), gts[r["id"]])
        ious.append(sample_iou(i, u))
        inter, union = inter + i, union + u
        assert len(r["hypotheses"]) == 4 and {"1", "2", "4"} == set(r["sweep"])
        assert all(c["iou"] <= r["oracle_iou"] for c in r["candidates"])
    s = scores(demo_run)
    assert s["giou"] == pytest.approx(sum(ious) / len(ious), abs=1e-9)
    assert s["ciou"] == pytest.approx(inter / union, abs=1e-9)


def test_resume_skips_finished_samples_and_repairs_a_torn_line(env, demo_run, tmp_path):
    before = scores(demo_run)
    run_id = (demo_run / "wandb-run-id").read_text()
    cli(env, "run", "--config", "configs/demo.yaml", "--output", str(demo_run), "--max_n", "4",
        "--run.progress", "false")
    assert (demo_run / "wandb-run-id").read_text() == run_id  # the resumed job continues the W&B run
    again = json.loads((demo_run / "summary.json").read_text())
    assert again["attempts"][-1]["timing"]["new_samples"] == 0 and scores(demo_run) == before
    # timing and roles accumulate over the attempts: a rerun with nothing to do keeps the job's
    assert again["timing"]["new_samples"] == 16 and again["timing"]["attempts"] == len(again["attempts"]) == 2
    assert again["roles"] == again["attempts"][0]["roles"] and again["roles"]["executor"]["requests"] > 0

    # a crash: the last 5 samples are lost, the one being written is torn
    crashed = tmp_path / "crashed"
    (crashed / "results").mkdir(parents=True)
    (crashed / "config.yaml").write_text((demo_run / "config.yaml").read_text())
    lines = (demo_run / "results" / "rank-0.jsonl").read_text().splitlines(keepends=True)
    (crashed / "results" / "rank-0.jsonl").write_text("".join(lines[:11]) + lines[11][:200])
    cli(env, "run", "--config", "configs/demo.yaml", "--output", str(crashed), "--max_n", "4",
        "--run.progress", "false")
    assert json.loads((crashed / "summary.json").read_text())["timing"]["new_samples"] == 5
    assert scores(crashed) == before
    assert records_by_id(crashed) == records_by_id(demo_run)


@pytest.mark.parametrize("in_flight", [1, 8])
def test_samples_in_flight_change_no_record(env, demo_run, tmp_path, in_flight):
    """1 or 8 samples in flight batch other mixes of samples in every role than the default 4: the
    records are the same, every mask and model score in them included (timing aside)."""
    out = tmp_path / f"in-flight-{in_flight}"
    cli(env, "run", "--config", "configs/demo.yaml", "--output", str(out), "--max_n", "4", "--run.progress", "false",
        "--run.parallel_requests", str(in_flight))
    assert scores(out) == scores(demo_run) and records_by_id(out) == records_by_id(demo_run)


def test_a_different_config_is_refused_unless_forced(env, demo_run):
    proc = cli(env, "run", "--output", str(demo_run), "--max_n", "2", check=False)
    assert proc.returncode == 2 and "planner.max_n" in proc.stderr and "--run.force" in proc.stderr


def test_report_rebuilds_the_same_scores(env, demo_run):
    before = scores(demo_run)
    (demo_run / "report.md").unlink()
    cli(env, "report", str(demo_run))
    assert scores(demo_run) == before and (demo_run / "report.md").exists()


def test_original_rescue_options_and_heuristic_mode(env, tmp_path):
    out = tmp_path / "legacy"
    cli(env, "run", "--output", str(out), "--fraction", "0.25", "--max_n", "2", "--mode", "heuristic",
        "--parallel_requests", "2", "--run.progress=false")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 4 and "judge" not in summary["roles"]
    assert all(row["judge_calls"] == 0 for row in summary["per_n"].values())
    assert "4 %" not in summary["notes"][-1] and "25%" in summary["notes"][-1]


@pytest.mark.parametrize("args, words", [
    (["--planner.max_nn", "3"], "max_nn"),
    (["--verifier.mode", "fast"], "verifier.mode"),
    (["--executor.device", "cuda:7"], "executor.device"),
    (["--data.name", "reasonseg", "--data.root", "/nonexistent"], "--data.root"),
])
def test_configuration_mistakes_are_one_clear_sentence(env, tmp_path, args, words):
    proc = cli(env, "run", "--output", str(tmp_path / "x"), *args, check=False)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_limit_takes_the_first_samples_and_a_run_without_it_resumes_the_rest(env, tmp_path):
    out = tmp_path / "limited"
    cli(env, "run", "--output", str(out), "--max_n", "2", "--limit", "3", "--run.progress", "false",
        "--wandb.enabled", "false")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == summary["dataset"]["n_total"] == 3
    assert sorted(r["id"] for r in records(out)) == ["demo_00", "demo_01", "demo_02"]
    assert any("first 3 samples" in note for note in summary["notes"])
    cli(env, "run", "--output", str(out), "--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 16 and [a["timing"]["new_samples"] for a in summary["attempts"]] == [3, 13]
    assert summary["timing"]["new_samples"] == 16 and "--limit" in summary["attempts"][0]["command"]


def test_version(env):
    assert cli(env, "--version").stdout.startswith("rescue-eval 0.1.0")
