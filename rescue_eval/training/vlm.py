"""The demo planner and judge: Qwen3-VL twins trained on the harness's own prompts.

The planner's vision tower is first pre-trained to read the world's pictures (vision.py). The
planner then learns, in three equal stages, to list every shape of a scene with its box, to
name shapes ("Query: the red circle") with their boxes, and to answer a scene's query, under
every planner strategy, with the target's box in the answer schema (`{"bbox_2d":[x1,y1,x2,y2]}`
on the 0..1000 grid, compactly, as the grammar makes it). Listing and naming ground the boxes
in the picture before the queries' reasoning is learnt: trained on queries from the start, the
planner learnt the answers' format and where shapes tend to be, not where they are. The vision
tower trains at a tenth of the rate throughout (vision.py says why). The judge starts from the
planner's weights and learns to rate a red-drawn candidate mask (the score is round(10 x IoU
with the target)) and to pick the better of two. On every answer with a shape's box the planner
also learns where to look and what to read there (grounding.py): without that, its box
followed the picture, not the query.
Prompts and images are built by the same functions the backends use (models/prompts.py,
models/vlm_requests.py), and the loss covers the answers and their end-of-turn tokens only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from rescue_eval.core.masks import box_iou
from rescue_eval.core.types import DuelItem, PlanItem, RateItem
from rescue_eval.models.prompts import BOX_FORMAT, STRATEGIES, duel_messages, plan_messages, rate_messages
from rescue_eval.models.qwen3_vl import Qwen3VLJudge, Qwen3VLPlanner
from rescue_eval.models.tiny import qwen3_vl
from rescue_eval.models.vlm_requests import PLANNER_MAX_PIXELS, duel_request, fit_image, rate_request
from rescue_eval.training import vision
from rescue_eval.training.examples import (BOX_STEP, answer_box, answer_box_pixels, by_kind, candidate_masks, iou,
                                          training_scene, whole_shapes, world_queries)
from rescue_eval.training.grounding import FOCUS_HEAD, FOCUS_LAYER, GroundingLoss
from rescue_eval.training.loop import Report, fit

# Width 64: a step costs two thirds of width 128's, and after equal steps (1950) its first box
# was right more often (0.23 against 0.19 of held-out scenes)
SIZES = {"width": 64, "layers": 4, "heads": 4, "kv_heads": 2, "vision_width": 64, "vision_depth": 2}
BATCH = 16
STAGES = ("listing", "naming", "queries")  # the planner's curriculum, a third of the steps each
VISION_RATE_SCALES = {"model.visual.": 0.1}  # the vision tower at a tenth of the rate (vision.py says why)
LIST_PROMPT = "List every shape with its box."
COMPACT = {"separators": (",", ":")}  # the answer as the grammar writes it
NAMING_SCENES = 30  # held-out pictures whose shapes the planner is asked for by name (evaluate_naming)


def tokenizer_corpus() -> list[str]:
    """The random twin's corpus, the harness's prompts and the world's queries: prompts of about
    150 tokens instead of 250, so training steps are shorter."""
    prompts = [BOX_FORMAT, *STRATEGIES.values(), rate_messages("")[0]["content"][1]["text"],
               duel_messages("")[0]["content"][-1]["text"]]
    return qwen3_vl.CORPUS + prompts + list(world_queries())


class Encoder:
    """Chat conversations as one right-padded batch, labelled on the assistant's turns only
    (each answer and its end-of-turn token)."""

    def __init__(self, processor):
        self.processor = processor
        self.processor.tokenizer.padding_side = "right"
        tokenizer = processor.tokenizer
        self.header = tokenizer.encode(f"{qwen3_vl.IM_START}assistant\n")
        self.im_end = tokenizer.convert_tokens_to_ids(qwen3_vl.IM_END)

    def __call__(self, examples: list[tuple[list[dict], list, list]]):
        """Each example's messages, images, and a target mask (or None) per assistant turn; gives the
        batch and, per turn with a target, (row, the positions that predict its answer, the mask)."""
        import torch

        texts = [self.processor.apply_chat_template(messages, tokenize=False) for messages, _, _ in examples]
        inputs = self.processor(text=texts, images=[im for _, images, _ in examples for im in images],
                                padding=True, return_tensors="pt")
        labels = torch.full_like(inputs["input_ids"], -100)
        size = len(self.header)
        answers = []
        for row, ids in enumerate(inputs["input_ids"].tolist()):
            targets = iter(examples[row][2])
            for start in range(len(ids) - size):
                if ids[start:start + size] == self.header:
                    end = ids.index(self.im_end, start + size) + 1
                    labels[row, start + size:end] = inputs["input_ids"][row, start + size:end]
                    if (target := next(targets)) is not None:
                        answers.append((row, range(start + size - 1, end - 1), target))
        inputs["labels"] = labels
        return inputs, answers


def answered(messages: list[dict], answer: str) -> list[dict]:
    return messages + [{"role": "assistant", "content": answer}]


def plan_example(index: int, rng: np.random.Generator, naming_only: bool):
    """A picture and turns asking for shapes, each answered with its box. The turns name each
    shape that has a unique name ("Query: the red circle"); unless `naming_only`, the first turn
    is the planner prompt for the scene's query with a random strategy. Naming teaches where
    things are with many short answers per picture; it comes before the queries (STAGES). Gives
    the messages, the picture, and the mask each answer boxes (grounding.py)."""
    scene = training_scene(index)
    names = scene.names
    unique = scene.uniquely_named
    naming_only = naming_only and bool(unique)
    messages = [] if naming_only else answered(plan_messages(scene.query, str(rng.choice(list(STRATEGIES)))),
                                               box_answer(scene.target_mask))
    targets = [] if naming_only else [scene.target_mask]
    for i in rng.permutation(unique):
        if naming_only or i != scene.target:
            ask = f"Query: the {names[i]}"
            turn = [{"type": "image"}, {"type": "text", "text": ask}] if not messages else ask
            messages = answered(messages + [{"role": "user", "content": turn}], box_answer(scene.masks[i]))
            targets.append(scene.masks[i])
    return messages, [fit_image(scene.image, PLANNER_MAX_PIXELS)], targets


def list_example(index: int):
    """A picture and a request to list its shapes, answered with one line per visible shape,
    left to right (by the answer box's left edge, then its top): its name and its box."""
    scene = training_scene(index)
    # a stable sort on the box alone: shapes with the same rounded box keep their drawing order
    boxes = sorted(((answer_box(m), name) for m, name in zip(scene.masks, scene.names) if m.any()),
                   key=lambda pair: pair[0])
    answer = "\n".join(json.dumps({"label": name, "bbox_2d": box}, **COMPACT) for box, name in boxes)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": LIST_PROMPT}]}]
    return answered(messages, answer), [fit_image(scene.image, PLANNER_MAX_PIXELS)], [None]


def planner_example(index: int, rng: np.random.Generator, step: int, steps: int):
    stage = STAGES[len(STAGES) * step // steps]
    return list_example(index) if stage == "listing" else plan_example(index, rng, naming_only=stage == "naming")


def box_answer(mask: np.ndarray) -> str:
    return json.dumps({"bbox_2d": answer_box(mask)}, **COMPACT)


def judge_example(index: int, rng: np.random.Generator, step: int):
    """A rating of one candidate or, every other time, a duel between two of different quality."""
    scene = training_scene(index)
    candidates = candidate_masks(scene, rng)
    quality = [iou(m, scene.target_mask) for m in candidates]
    if index % 2 == 0:  # the target half the time: a judge that always says 0 learns nothing
        pick = 0 if rng.random() < 0.5 else int(rng.integers(1, len(candidates)))
        messages, images = rate_request(RateItem(scene.image, candidates[pick], scene.query))
        return answered(messages, json.dumps({"score": round(10 * quality[pick])}, **COMPACT)), images, [None]
    pairs = [(a, b) for a in range(len(candidates)) for b in range(len(candidates)) if quality[a] - quality[b] > 0.25]
    a, b = pairs[int(rng.integers(len(pairs)))] if pairs else (0, 1)
    first, second, winner = (a, b, "A") if rng.random() < 0.5 else (b, a, "B")
    messages, images = duel_request(DuelItem(scene.image, candidates[first], candidates[second], scene.query))
    return answered(messages, json.dumps({"winner": winner}, **COMPACT)), images, [None]


def _train(report: Report, folder: Path, first_scene: int, make_example, before=None, grounded=False) -> None:
    """Fit the twin in `folder` on batches of `make_example(index, rng, step)`, after
    `before(model, processor)` when given, with the grounding losses (grounding.py) if `grounded`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    if before is not None:
        before(model, processor)
    encode = Encoder(processor)
    rng = np.random.default_rng(4)
    grounding = GroundingLoss(model, processor) if grounded else None

    def loss_of_step(step: int):
        start = first_scene + step * BATCH
        inputs, answers = encode([make_example(i, rng, step) for i in range(start, start + BATCH)])
        loss = model(**inputs).loss
        return loss + grounding(inputs, answers) if grounding else loss

    fit(model, report, loss_of_step)
    if grounding:
        grounding.remove()
        report.parameters = sum(p.numel() for p in model.parameters())  # without the dropped probe
    model.save_pretrained(folder)


def train_planner(out_dir: Path, steps: int, vision_steps: int, held_out: range) -> Report:
    report = Report("planner", "planner", "Qwen/Qwen3-VL-8B-Instruct", data=(
        f"demo-world training scenes 0-{steps * BATCH - 1}. First the vision tower alone, {vision_steps} steps of "
        f"{vision.SCENES_PER_STEP} pictures at {vision.LEARNING_RATE:g}: every merged image token predicts the "
        "colour and kind of the shape covering most of it, its own row and column, and that shape's box (at a "
        "quarter of the weight; rescue_eval/training/vision.py). Then a third of the steps each: \"List every "
        "shape with its box.\" answered with a line per shape, left to right; a turn for each uniquely named "
        "shape (\"Query: the red circle\"); the planner prompt for the scene's query with a random strategy, "
        "followed by such turns for the other shapes. Every box is "
        f"on the 0..1000 grid, rounded outward to multiples of {BOX_STEP}. On every answer with a shape's box, "
        f"the grounding losses (rescue_eval/training/grounding.py): head {FOCUS_HEAD} of layer {FOCUS_LAYER} "
        "attends to the shape's image tokens, and a linear probe on that layer's attention output predicts the box"),
        steps=steps, batch=str(BATCH), learning_rate=3e-3, rate_scales=VISION_RATE_SCALES)
    qwen3_vl._build(out_dir, moe=False, thinking=False, sizes=SIZES, corpus=tokenizer_corpus(), bpe_vocab_size=1000)

    def pretrain_vision(model, processor):
        accuracy, seconds = vision.pretrain(model, processor, vision_steps, held_out)
        report.held_out.update(accuracy)
        report.seconds += seconds

    _train(report, out_dir, 0, lambda index, rng, step: planner_example(index, rng, step, steps), pretrain_vision,
           grounded=True)
    report.held_out.update(evaluate_planner(out_dir, held_out))
    return report


def train_judge(out_dir: Path, planner_dir: Path, steps: int, held_out: range, first_scene: int) -> Report:
    report = Report("judge", "judge", "Qwen/Qwen3-VL-8B-Instruct", data=(
        f"demo-world training scenes {first_scene}-{first_scene + steps * BATCH - 1}, starting from the planner's "
        "weights: half ratings of one candidate mask (answer round(10 x IoU with the target)), half duels between "
        "two candidates whose IoUs differ by more than 0.25"), steps=steps, batch=str(BATCH), learning_rate=1e-3,
        rate_scales=VISION_RATE_SCALES)
    shutil.copytree(planner_dir, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md", "*.json.card"))
    _train(report, out_dir, first_scene, judge_example)
    report.held_out = evaluate_judge(out_dir, held_out)
    return report


def evaluate_planner(folder: Path, scenes: range) -> dict[str, float]:
    """How often the planner's box (through the harness's adapter, at the demo's settings) has
    IoU >= 0.5 with the box it was taught to answer: for the first hypothesis (by kind of
    query), and for the best of eight."""
    planner = Qwen3VLPlanner(str(folder), max_new_tokens=40)
    first, best, kinds = [], [], {}
    for index in scenes:
        scene = training_scene(index)
        target = answer_box_pixels(scene.target_mask)
        hypotheses = planner.propose([PlanItem(scene.image, scene.query, n=8, seed=index)])[0]
        hits = [h.box is not None and box_iou(h.box, target) >= 0.5 for h in hypotheses]
        first.append(hits[0])
        best.append(any(hits))
        kinds.setdefault(scene.reasoning, []).append(hits[0])
    return {**by_kind("first hypothesis right", kinds),
            "first hypothesis right": float(np.mean(first)), "one of 8 hypotheses right": float(np.mean(best)),
            **evaluate_naming(folder, scenes[:NAMING_SCENES])}


def evaluate_naming(folder: Path, scenes: range) -> dict[str, float]:
    """Whether the planner reads the query: each uniquely named shape of a picture asked for in
    turn ("the red circle", greedy). A planner that follows the picture but not the query gives
    one box per picture whatever the name."""
    planner = Qwen3VLPlanner(str(folder), max_new_tokens=40, strategies=["direct"], temperatures=[0.0])
    found, distinct = [], []
    for index in scenes:
        scene = training_scene(index)
        named = scene.uniquely_named
        answers = planner.propose([PlanItem(scene.image, f"the {scene.names[i]}", n=1, seed=index) for i in named])
        found += [h.box is not None and box_iou(h.box, answer_box_pixels(scene.masks[i])) >= 0.5
                  for i, (h,) in zip(named, answers)]
        distinct.append(len({h.raw_text for h, in answers}))
    return {"named shape found, each asked for in turn": float(np.mean(found)),
            "distinct boxes per picture, each shape asked for in turn": float(np.mean(distinct))}


def evaluate_judge(folder: Path, scenes: range) -> dict[str, float]:
    """Duels won by the better mask, and the target rated highest among the scene's shapes."""
    judge = Qwen3VLJudge(str(folder))
    rng = np.random.default_rng(5)
    duels, ratings = [], []
    for index in scenes:
        scene = training_scene(index)
        candidates = candidate_masks(scene, rng)
        shapes = whole_shapes(scene)
        scores = [a.value for a in judge.rate([RateItem(scene.image, m, scene.query) for m in candidates[:shapes]])]
        ratings.append(int(scores[0] is not None and all(s is None or s < scores[0] for s in scores[1:])))
        other = 1 + int(rng.integers(len(candidates) - 1))
        a_first = rng.random() < 0.5
        pair = (candidates[0], candidates[other]) if a_first else (candidates[other], candidates[0])
        verdict = judge.duel([DuelItem(scene.image, *pair, scene.query)])[0].value
        duels.append(int(verdict == ("A" if a_first else "B")))
    return {"duel won by the target against another candidate": float(np.mean(duels)),
            "target rated strictly highest among the scene's shapes": float(np.mean(ratings))}
