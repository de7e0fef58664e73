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
        assert report.cpu and f"CPU threads ({report.cpu})" in card  # weights are reproducible per CPU model
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
    from rescue_eval.training.examples import BOX_STEP, answer_box, answer_box_pixels, training_scene
    from rescue_eval.training.vlm import Encoder, list_example, plan_example

    for index in range(20):
        scene = training_scene(index)
        for mask in scene.masks:
            if mask.any():
                x1, y1, x2, y2 = mask_box(mask)
                loose = answer_box_pixels(mask)
                assert loose[0] <= x1 and loose[1] <= y1 and loose[2] >= x2 - 1e-9 and loose[3] >= y2 - 1e-9
    rng = np.random.default_rng(0)
    examples = [plan_example(i, rng, naming_only=i % 2 == 0) for i in range(4)] + [list_example(4)]
    encode = Encoder(AutoProcessor.from_pretrained(resolve("trained:planner")))
    batch, answers = encode(examples)
    tokenizer = encode.processor.tokenizer
    for row, (messages, _, targets) in enumerate(examples):
        learnt = tokenizer.decode(batch["input_ids"][row][batch["labels"][row] != -100])
        replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert learnt == "".join(replies) and len(targets) == len(replies)
        assert all(v % BOX_STEP == 0 for a in replies for line in a[:-len("<|im_end|>")].splitlines()
                   for v in json.loads(line)["bbox_2d"])
        # each answer with a target: the positions that predict its tokens, and the shape it boxes
        grounded = [(positions, mask) for r, positions, mask in answers if r == row]
        assert len(grounded) == sum(t is not None for t in targets) == (0 if row == 4 else len(replies))
        for (positions, mask), reply in zip(grounded, replies):
            predicted = batch["input_ids"][row][positions.start + 1:positions.stop + 1]
            assert tokenizer.decode(predicted) == reply
            assert json.loads(reply[:-len("<|im_end|>")])["bbox_2d"] == answer_box(mask)


@pytest.mark.unit
def test_the_listing_stage_names_every_visible_shape_left_to_right_and_the_stages_take_a_third_each():
    from rescue_eval.training.examples import answer_box, training_scene
    from rescue_eval.training.vlm import LIST_PROMPT, STAGES, list_example, planner_example

    for index in range(10):
        scene = training_scene(index)
        messages, images, _ = list_example(index)
        assert messages[0]["content"][1]["text"] == LIST_PROMPT and images[0].size == scene.image.size
        lines = [json.loads(line) for line in messages[-1]["content"].splitlines()]
        visible = [i for i, mask in enumerate(scene.masks) if mask.any()]
        assert sorted((line["label"], line["bbox_2d"]) for line in lines) == sorted(
            (scene.names[i], answer_box(scene.masks[i])) for i in visible)
        assert [line["bbox_2d"][0] for line in lines] == sorted(line["bbox_2d"][0] for line in lines)
    rng = np.random.default_rng(0)
    asked = [planner_example(0, rng, step, 9)[0][0]["content"][1]["text"] for step in range(9)]
    assert len(STAGES) == 3 and asked[:3] == [LIST_PROMPT] * 3 and LIST_PROMPT not in asked[3:]
    # naming ("Query: the red circle"), then the planner prompt (query, answer format, strategy)
    assert [a.startswith("Query: the ") and "\n" not in a for a in asked[3:]] == [True] * 3 + [False] * 3


@pytest.mark.unit
def test_vision_labels_give_each_token_the_shape_covering_its_cell_and_its_place():
    from rescue_eval.datamodules import world
    from rescue_eval.training.examples import box_steps
    from rescue_eval.training.vision import COLOURS, KINDS, token_labels

    checked = 0
    for index in range(10):
        scene = world.scene("train", index)
        rows, columns = scene.image.height // 32, scene.image.width // 32
        labels = token_labels(scene, rows, columns, 32).reshape(rows, columns, 8)
        instances = scene.instance_map()
        for row in range(rows):
            for column in range(columns):
                assert tuple(labels[row, column, 2:4]) == (row, column)
                cell = instances[row * 32:(row + 1) * 32, column * 32:(column + 1) * 32]
                values, counts = np.unique(cell, return_counts=True)
                if counts.max() < 0.75 * cell.size:
                    continue  # no shape (or background) covers most of the cell clearly
                covering = int(values[counts.argmax()])
                expected = (0, 0, -100, -100, -100, -100)  # the background has no box: ignored
                if covering:
                    shape = scene.shapes[covering - 1]
                    expected = (1 + COLOURS.index(shape.color), 1 + KINDS.index(shape.kind),
                                *box_steps(instances == covering))
                    checked += 1
                assert tuple(labels[row, column, :2]) + tuple(labels[row, column, 4:]) == expected
    assert checked >= 5
    with pytest.raises(ValueError, match="at most 16 x 16"):
        token_labels(world.scene("train", 0), 17, 4, 32)


@pytest.mark.unit
def test_vision_labels_line_up_with_the_towers_merged_tokens():
    """Each merged token's colour label is the world colour nearest the mean colour of the four
    patches the tower merges into it, for most shape tokens (a label read in another order than
    the tower's matches about a third of them)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rescue_eval.datamodules import world
    from rescue_eval.models.tiny import resolve_checkpoint
    from rescue_eval.training.vision import COLOURS, batch

    folder = resolve_checkpoint("trained:planner")
    processor = AutoProcessor.from_pretrained(folder)
    inputs, labels = batch(processor, range(16))
    tokens = AutoModelForImageTextToText.from_pretrained(folder).model.visual(
        inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], return_dict=True).pooler_output
    assert tokens.shape[0] == len(labels)
    images = processor.image_processor
    patches = inputs["pixel_values"].reshape(len(labels), 4, 3, -1).mean(dim=(1, 3)).numpy()  # merged token x RGB
    colours = patches * np.array(images.image_std) + np.array(images.image_mean)
    palette = np.array([world.COLORS[name][0] for name in COLOURS]) / 255
    shape_tokens = labels[:, 0].numpy() > 0
    nearest = 1 + np.argmin(((colours[:, None] - palette[None]) ** 2).sum(-1), axis=1)
    assert (nearest[shape_tokens] == labels[shape_tokens, 0].numpy()).mean() > 0.8


@pytest.mark.unit
def test_a_rate_scale_trains_the_parameters_under_its_prefix_at_that_factor():
    import torch

    from rescue_eval.training.loop import Report, fit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in model.parameters()]
    report = Report("t", "t", "none", "random", steps=1, batch="8", learning_rate=0.1, rate_scales={"0.": 0.5})
    inputs = torch.randn(8, 4)
    fit(model, report, lambda step: model(inputs).pow(2).mean(), warmup=1)
    # Adam's first step moves every parameter with a gradient by its group's rate (times the sign)
    moved = [(p.detach() - b).abs() for p, b in zip(model.parameters(), before)]
    assert all(torch.allclose(m, torch.full_like(m, 0.05), atol=2e-3) for m in moved[:2])
    assert all(torch.allclose(m, torch.full_like(m, 0.1), atol=2e-3) for m in moved[2:])
    with pytest.raises(ValueError, match="starts with"):
        fit(model, Report("t", "t", "none", "random", 1, "8", 0.1, rate_scales={"visual.": 0.1}), lambda step: 0)


@pytest.mark.unit
def test_the_trained_planners_focus_head_looks_at_the_named_shape_and_grounding_leaves_no_trace():
    """training/grounding.py: its focus head's weights are eager attention's, and on held-out
    pictures that head's attention at each answer falls on the named shape's tokens many times
    more than if spread evenly over the picture."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rescue_eval.models.tiny import resolve_checkpoint as resolve
    from rescue_eval.training import HELD_OUT
    from rescue_eval.training.grounding import FOCUS_HEAD, FOCUS_LAYER, GroundingLoss
    from rescue_eval.training.vlm import Encoder, plan_example

    folder = resolve("trained:planner")
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager")
    grounding = GroundingLoss(model, processor)
    rng = np.random.default_rng(0)
    inputs, answers = Encoder(processor)([plan_example(i, rng, naming_only=True) for i in HELD_OUT[:6]])
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True).attentions[FOCUS_LAYER][:, FOCUS_HEAD]
        real = inputs["attention_mask"].bool()  # padding rows differ: eager masks them, the causal mask not
        assert torch.allclose(grounding.focus_weights()[real], eager[real], atol=1e-5)
        mass, index = grounding.attention_on_targets(inputs, answers)
        loss = float(grounding(inputs, answers))
    ratios = [float(mass[index == a].mean()) / grounding.target_tokens(mask, inputs["image_grid_thw"][row].tolist())
              .sum() * int((inputs["input_ids"][row] == model.config.image_token_id).sum())
              for a, (row, _, mask) in enumerate(answers)]
    assert len(ratios) >= 12 and np.median(ratios) >= 4 and np.isfinite(loss) and loss > 0
    grounding.remove()
    assert "grounding_probe" not in dict(model.named_children())
    assert grounding.hook.id not in grounding.attention._forward_hooks
