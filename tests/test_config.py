from pathlib import Path

import pytest

from rescue_eval import config
from rescue_eval.core.errors import UsageError
from rescue_eval.roles import validate as validate_placement

pytestmark = pytest.mark.unit

# run configs; the suite files (suite_*.yaml) are checked in tests/test_suite.py
CONFIGS = [p for p in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")) if not p.name.startswith("suite_")]


def parse(*args):
    return config.parse([*args, "--output", "out"])[0]


def test_demo_yaml_lists_the_defaults():
    assert parse("--config", "configs/demo.yaml") == config.Config()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_sets_what_it_says(path):
    """Every key the file sets arrives in the config, and every section's keys are ones its
    backend takes (a key the backend would ignore is refused)."""
    import yaml

    cfg = parse("--config", str(path), "--data.root", "/data")
    written = yaml.safe_load(path.read_text())
    for section, keys in written.items():
        for key, value in keys.items():
            if not (section == "data" and key == "root"):
                assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    config.validate(cfg)


def test_overrides_and_original_rescue_options():
    cfg = parse("--planner.max_n", "16", "--fraction=0.5", "--parallel_requests", "2", "--mode", "heuristic")
    assert (cfg.planner.max_n, cfg.data.fraction, cfg.run.parallel_requests, cfg.verifier.mode) == \
        (16, 0.5, 2, "heuristic")
    assert parse("--max_n", "4").planner.max_n == 4


@pytest.mark.parametrize("args, words", [
    (["--planner.max_nn", "3"], "max_nn"),
    (["--judge.dtype", "fp8"], "judge.dtype"),
    (["--fraction", "0"], "--fraction 0.1"),
    (["--data.name", "reasonseg"], "--data.root"),
])
def test_mistakes_name_the_key(args, words):
    with pytest.raises(UsageError, match=words.replace(".", r"\.")):
        parse(*args)


def test_unknown_key_in_a_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("planner:\n  max_n: 4\n  temprature: 0.3\n")
    with pytest.raises(UsageError, match="temprature"):
        parse("--config", str(bad))


def test_resume_compares_only_keys_that_change_results():
    a = config.to_dict(config.Config())
    b = config.to_dict(parse("--parallel_requests", "9", "--placement.judge=[1]", "--max_n", "3"))
    assert config.result_affecting_diff(a, b) == ["planner.max_n"]


@pytest.mark.parametrize("args, world, words", [
    (["--placement.judge=[3]"], 2, "placement.judge names rank(s) [3] but the job has 2 rank(s)"),
    (["--placement.scorer=[]"], 2, "placement.scorer is empty"),
    (["--placement.executor=[1, 1]"], 2, "lists a rank twice"),
    (["--executor.device", "cuda:3"], 1, "executor.device is 'cuda:3' but 0 CUDA device(s) are visible"),
    (["--planner.device", "cuda", "--placement.planner=[1]"], 2, None),  # rank 0 does not host it
])
def test_placement_mistakes_are_caught_before_loading(args, world, words):
    cfg = parse(*args)
    if words is None:
        validate_placement(cfg, world, rank=0, local_rank=0)
        return
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        validate_placement(cfg, world, rank=0, local_rank=0)


def test_eight_gpu_layout():
    cfg = parse("--config", "configs/reasonseg_8gpu.yaml", "--data.root", "/data")
    p = cfg.placement
    assert (p.judge, p.planner, p.executor, p.scorer) == ([0], [4, 5], [6], [7])


def test_a_key_the_chosen_backend_does_not_take_is_refused_by_name(caplog):
    with pytest.raises(UsageError, match=r"executor.url is set but executor.backend grabcut does not use it.*\(http\)"):
        parse("--executor.backend", "grabcut", "--executor.url", "http://127.0.0.1:1")
    with pytest.raises(UsageError, match=r"planner.max_model_len .*transformers does not use it.*vllm"):
        parse("--planner.max_model_len", "4096")
    # every role has a checkpoint: switching the backend of a config that names one only warns
    cfg = parse("--planner.checkpoint", "Qwen/Qwen3-VL-4B-Instruct", "--planner.backend", "gt_box")
    assert cfg.planner.backend == "gt_box"
    assert "planner.checkpoint ('Qwen/Qwen3-VL-4B-Instruct') is not used by planner.backend gt_box" in caplog.text
