"""`rescue-eval train-demo`: deterministic, complete checkpoints with model cards, and the
committed demo twins are what the harness loads for `trained:NAME`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rescue_eval.core.errors import UsageError
from rescue_eval.models.tiny import TRAINED, resolve_checkpoint, trained_dir
from rescue_eval.training import STEPS, train_all
from tests.helpers import cli

WEIGHT_LIMIT = 20 * 2**20  # bytes, all four twins together


def weights_and_configs(folder: Path) -> dict[str, bytes]:
    """Every file a loader reads (the model card and training.json hold wall times: left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("README.md", "training.json")}


@pytest.mark.cli
def test_training_is_deterministic_and_writes_loadable_twins_with_cards(tmp_path):
    held_out = range(10**6, 10**6 + 2)
    first = train_all(tmp_path / "a", scale=0.004, held_out=held_out)
    train_all(tmp_path / "b", scale=0.004, held_out=held_out)
    a, b = weights_and_configs(tmp_path / "a"), weights_and_configs(tmp_path / "b")
    assert sorted({name.split("/")[0] for name in a}) == sorted(TRAINED)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)]
    for report in first:
        card = (tmp_path / "a" / report.name / "README.md").read_text()
        assert report.steps == max(1, round(0.004 * STEPS[report.name]))
        assert "## Loss" in card and "## Held-out scores" in card and report.held_out
        assert all(f"| {name} |" in card for name in report.held_out)
        assert json.loads((tmp_path / "a" / report.name / "training.json").read_text())["losses"]


@pytest.mark.unit
def test_the_committed_twins_are_complete_and_small():
    folders = [Path(resolve_checkpoint(f"trained:{name}")) for name in TRAINED]
    assert all((folder / "config.json").is_file() and (folder / "README.md").is_file() for folder in folders)
    assert sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file()) <= WEIGHT_LIMIT
    card = json.loads((trained_dir() / "planner" / "training.json").read_text())
    assert card["steps"] == STEPS["planner"]  # the committed weights are a full training run's


@pytest.mark.unit
def test_a_missing_or_unknown_twin_is_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="choose one of"):
        resolve_checkpoint("trained:planer")
    monkeypatch.setattr("rescue_eval.models.tiny.trained_dir", lambda: tmp_path)
    with pytest.raises(UsageError, match="rescue-eval train-demo"):
        resolve_checkpoint("trained:judge")


@pytest.mark.cli
def test_train_demo_refuses_a_bad_scale(tmp_path, cli_env):
    proc = cli(cli_env, "train-demo", "--scale", "0", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--scale" in proc.stderr


@pytest.mark.unit
def test_planner_answers_are_loose_boxes_on_the_step_and_only_answers_are_learnt():
    from transformers import AutoProcessor

    from rescue_eval.core.masks import mask_box
    from rescue_eval.models.tiny import resolve_checkpoint as resolve
    from rescue_eval.training.examples import BOX_STEP, answer_box_pixels, training_scene
    from rescue_eval.training.vlm import Encoder, plan_example

    for index in range(20):
        scene = training_scene(index)
        for mask in scene.masks:
            if mask.any():
                x1, y1, x2, y2 = mask_box(mask)
                loose = answer_box_pixels(mask)
                assert loose[0] <= x1 and loose[1] <= y1 and loose[2] >= x2 - 1e-9 and loose[3] >= y2 - 1e-9
    rng = np.random.default_rng(0)
    examples = [plan_example(i, rng, naming_only=i % 2 == 0) for i in range(4)]
    encode = Encoder(AutoProcessor.from_pretrained(resolve("trained:planner")))
    batch = encode(examples)
    for row, (messages, _) in enumerate(examples):
        learnt = encode.processor.tokenizer.decode(batch["input_ids"][row][batch["labels"][row] != -100])
        answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert learnt == "".join(answers)
        assert all(v % BOX_STEP == 0 for a in answers for v in json.loads(a[:-len("<|im_end|>")])["bbox_2d"])
