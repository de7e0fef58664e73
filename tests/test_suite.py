"""Suites: several splits in one job, interrupted and resumed, on one process and under torchrun."""
import json
from pathlib import Path

import pytest

from rescue_eval import config
from rescue_eval.core.errors import UsageError
from rescue_eval.suite import load_suite
from tests.helpers import cli, ok, records, records_by_id, scores, torchrun
from tests.refer_layout import write_refer_layout

ARGS = ["--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false", "--data.limit", "7"]
SPLITS = ["refcoco-val", "refcoco-testA", "refcocog-val"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A refer root and a suite file of three splits of 7 samples each (data.limit)."""
    root = tmp_path_factory.mktemp("suite-data")
    write_refer_layout(root, "refcoco")
    write_refer_layout(root, "refcocog")
    path = root / "suite.yaml"
    path.write_text("splits:\n  - {name: refcoco, split: val}\n  - {name: refcoco, split: testA}\n"
                    "  - {name: refcocog, split: val}\n")
    return root, path


@pytest.fixture(scope="module")
def one_process(cli_env, suite, tmp_path_factory):
    root, path = suite
    out = tmp_path_factory.mktemp("suite-runs") / "w1"
    cli(cli_env, "run", "--suite", str(path), "--data.root", str(root), "--output", str(out), *ARGS)
    return out


@pytest.mark.cli
def test_a_suite_interrupted_and_resumed_equals_its_splits_run_alone(cli_env, suite, one_process, tmp_path):
    root, path = suite
    out = tmp_path / "killed"
    killed = cli({**cli_env, "RESCUE_EVAL_FAULT": "0:9"}, "run", "--suite", str(path), "--data.root", str(root),
                 "--output", str(out), *ARGS, check=False)
    assert killed.returncode != 0 and not (out / "suite.json").exists()
    written = sum(len(records(out / s)) for s in SPLITS if (out / s / "results").exists())
    assert 9 <= written < 21  # kept across the split boundary it died after
    cli(cli_env, "run", "--suite", str(path), "--data.root", str(root), "--output", str(out), *ARGS)
    suite_json = json.loads((out / "suite.json").read_text())
    assert [f"{s['dataset']}-{s['split']}" for s in suite_json["splits"]] == SPLITS
    for split in SPLITS:
        recs = records(out / split)
        assert len(recs) == len({r["id"] for r in recs}) == 7  # nothing lost, nothing twice
        assert scores(out / split) == scores(one_process / split)
        assert records_by_id(out / split) == records_by_id(one_process / split)
    # a split of the suite is the same evaluation as that split alone
    alone = tmp_path / "alone"
    cli(cli_env, "run", "--config", "configs/refcoco.yaml", "--data.split", "testA", "--data.root", str(root),
        "--output", str(alone), *ARGS)
    # (its config file spells refcoco's default partition, split_by, so each record's config hash differs)
    assert scores(alone) == scores(out / "refcoco-testA")
    assert records_by_id(alone, ("timing", "config")) == records_by_id(out / "refcoco-testA", ("timing", "config"))
    table = (out / "suite.md").read_text()
    assert all(f"| {s['dataset']} | {s['split']} | {100 * s['giou']:.2f} | {100 * s['ciou']:.2f} |" in table
               for s in suite_json["splits"])
    cli(cli_env, "report", str(out))  # rebuilt from the records alone
    assert json.loads((out / "suite.json").read_text()) == suite_json


@pytest.mark.torchrun
def test_a_suite_under_torchrun_balances_ranks_across_splits(cli_env, suite, one_process, tmp_path):
    root, path = suite
    out = tmp_path / "w2"
    ok(torchrun(cli_env, 2, out, "--suite", str(path), "--data.root", str(root), "--data.limit", "7",
                "--placement.executor=[1]"))
    per_rank = [sum(len((out / s / "results" / f"rank-{r}.jsonl").read_text().splitlines()) for s in SPLITS)
                for r in (0, 1)]
    assert sorted(per_rank) == [10, 11]  # one shard over 21 samples, not 4 + 4 + 4 against 3 + 3 + 3
    for split in SPLITS:
        assert scores(out / split) == scores(one_process / split)
        assert records_by_id(out / split) == records_by_id(one_process / split)


@pytest.mark.unit
@pytest.mark.parametrize("text, message", [
    ("splits:\n  - {name: refcoco}\n", "give name and split"),
    ("splits:\n  - {name: refcoco, split: val, roots: x}\n", "give name and split"),
    ("splits:\n  - {name: coco, split: val}\n", "choose one of"),
    ("splits:\n  - {name: refcoco, split: val}\n  - {name: refcoco, split: val}\n", "lists refcoco-val twice"),
    ("splits:\n  - {name: refcoco, split: val, split_by: umd}\n", "does not apply to refcoco"),
    ("splits: []\n", "lists no split"),
    ("nothing: here\n", "is not a suite file"),
])
def test_suite_file_mistakes_are_one_sentence(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    cfg, out = config.parse(["--output", str(tmp_path / "out"), "--data.root", str(tmp_path)])
    with pytest.raises(UsageError, match=message):
        load_suite(path, cfg, out)


@pytest.mark.unit
def test_the_shipped_lisa_suite_lists_the_papers_splits(tmp_path):
    cfg, out = config.parse(["--output", str(tmp_path), "--data.root", "/data"])
    runs = load_suite(config.shipped_config("suite_lisa.yaml"), cfg, out)
    assert [o.name for _, o in runs] == ["reasonseg-val", "reasonseg-test", "refcoco-val", "refcoco-testA",
                                         "refcoco-testB", "refcoco+-val", "refcoco+-testA", "refcoco+-testB",
                                         "refcocog-val", "refcocog-test"]
    assert runs[0][0].data.root == str(Path("/data/reason_seg/ReasonSeg")) and runs[2][0].data.root == "/data"
