"""RefCOCO, RefCOCO+ and RefCOCOg in the refer toolkit's layout: the reader against files written
to the published format (tests/refer_layout.py), and an evaluation whose IoUs are recomputed here."""
import json
import os
import pickle

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from rescue_eval.core.errors import UsageError
from rescue_eval.datamodules import build_datamodule
from rescue_eval.datamodules.refcoco import RefCocoDataset, check_layout
from tests.helpers import cli, records
from tests.refer_layout import KINDS, SPLITS, gt_of, write_refer_layout


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    for name in SPLITS:
        write_refer_layout(root, name, broken=name == "refcoco")
    return root


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_sentence_of_every_split_is_a_sample_with_its_annotation_mask(refer_root, name):
    split_by, splits = SPLITS[name]
    for split in splits:
        dm = build_datamodule(name, root=str(refer_root), split=split, split_by=None)
        dm.setup("predict")
        good = [dm.dataset[i] for i in range(len(dm.dataset)) if dm.dataset[i].error is None]
        # each kind of segmentation, two sentences per ref (and the blank sentence's sibling, in refcoco val)
        assert len(good) == 2 * len(KINDS) + (name == "refcoco" and split == "val")
        assert len(set(dm.dataset.ids)) == len(dm.dataset.ids)
        for sample in good:
            source = sample.meta["source"]
            assert sample.id == f"{source['ref_id']}_{source['sent_id']}"
            assert set(source) == {"ref_id", "sent_id", "image_id", "ann_id"}
            assert np.array_equal(sample.gt_mask, gt_of(refer_root, name, source["ann_id"]))
            assert sample.gt_mask.sum() > 0 and set(np.unique(sample.gt_mask)) <= {0, 1}  # no ignore regions
            assert sample.query.startswith("the ")


@pytest.mark.unit
def test_broken_refs_are_failed_samples_with_reasons(refer_root):
    dataset = RefCocoDataset(refer_root, "refcoco", "val", "unc")
    reasons = sorted(s.error.split(":")[0] for s in (dataset[i] for i in range(len(dataset))) if s.error)
    # a missing annotation, a malformed one and a missing image fail both sentences of their ref, a
    # blank sentence itself only
    assert reasons == ["annotation_invalid"] * 2 + ["annotation_missing"] * 2 + ["image_missing"] * 2 + ["text_empty"]
    assert len(dataset) == 2 * (len(KINDS) + 4)


@pytest.mark.unit
def test_a_multi_part_annotation_is_one_merged_mask(refer_root):
    dataset = RefCocoDataset(refer_root, "refcoco", "testA", "unc")
    sample = next(dataset[i] for i in range(len(dataset)) if "two polygons" in dataset[i].query)
    coco = json.loads((refer_root / "refer_seg/refcoco/instances.json").read_text())
    polygons = next(a for a in coco["annotations"] if a["id"] == sample.meta["source"]["ann_id"])["segmentation"]
    parts = [coco_mask.decode(coco_mask.frPyObjects([p], *sample.gt_mask.shape))[:, :, 0] for p in polygons]
    assert len(parts) == 2 and all(p.sum() > 0 for p in parts)
    assert np.array_equal(sample.gt_mask, np.maximum(*parts))


class RunsCode:
    """A pickle payload that would run a command when loaded with the plain pickle module."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.unit
def test_a_refs_pickle_that_would_run_code_is_refused(tmp_path):
    root = write_refer_layout(tmp_path, "refcoco")
    marker = tmp_path / "ran"
    (root / "refer_seg/refcoco/refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "x": RunsCode(marker)}]))
    with pytest.raises(UsageError, match="only plain built-in values are accepted"):
        RefCocoDataset(root, "refcoco", "val", "unc")
    assert not marker.exists()


@pytest.mark.unit
def test_layout_mistakes_are_one_sentence_naming_the_fix(refer_root, tmp_path):
    with pytest.raises(UsageError, match=r"set --data.split to one of \['testA', 'testB', 'val'\]"):
        RefCocoDataset(refer_root, "refcoco", "test", "unc")
    with pytest.raises(UsageError, match="does not exist for refcoco; use one of"):
        build_datamodule("refcoco", root=str(refer_root), split="val", split_by="umd")
    with pytest.raises(UsageError, match="holds refer_seg/refcoco"):
        RefCocoDataset(tmp_path, "refcoco", "val", "unc")
    lines, complete = check_layout(refer_root, "refcoco")
    assert not complete and any("1 image(s)" in line for line in lines)  # the broken val split's missing image
    assert check_layout(refer_root, "refcoco+")[1]


@pytest.mark.cli
def test_an_evaluation_on_refcoco_scores_what_its_predictions_say(cli_env, refer_root, tmp_path):
    out = tmp_path / "refcoco-val"
    proc = cli(cli_env, "run", "--config", "configs/refcoco.yaml", "--data.root", str(refer_root), "--output",
               str(out), "--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false")
    # a real dataset with the tiny twins says so on stdout, at the start and at the end
    assert proc.stdout.count("note: planner, executor, scorer, judge use tiny random-weight checkpoints") == 2
    summary = json.loads((out / "summary.json").read_text())
    recs = records(out)
    assert len(recs) == summary["n_samples"] == 2 * (len(KINDS) + 4)
    assert summary["failures"] == {"bad_input": 7}
    intersections, unions, ious = [], [], []
    for rec in recs:
        assert set(rec["source"]) == {"ref_id", "sent_id", "image_id", "ann_id"}
        if rec["failure"] is not None:
            intersections.append(rec["intersection"])
            unions.append(rec["union"])
            ious.append(0.0)
            continue
        pred = coco_mask.decode({"size": rec["prediction"]["size"], "counts": rec["prediction"]["counts"].encode()})
        gt = gt_of(refer_root, "refcoco", rec["source"]["ann_id"])
        i, u = int((pred.astype(bool) & gt.astype(bool)).sum()), int((pred.astype(bool) | gt.astype(bool)).sum())
        intersections.append(i)
        unions.append(u)
        ious.append(i / (u + 1e-5) if u else 1.0)
        assert abs(rec["iou"] - ious[-1]) < 1e-6
    assert abs(summary["ciou"] - sum(intersections) / (sum(unions) + 1e-10)) < 1e-6
    assert abs(summary["giou"] - float(np.mean(ious))) < 1e-6
    assert summary["dataset"]["headline"] == "ciou"
    report = (out / "report.md").read_text()
    assert report.index("| cIoU (headline)") < report.index("| gIoU |")
