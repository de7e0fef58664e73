"""ReasonSeg readers (LISA folder, parquet), the fraction subset and the demo set.

Folder samples are written the way other tools write them (labelme JSON via json.dump, a
cp1252 file, an EXIF-rotated JPEG) and their ground truth is checked against a re-implementation
of LISA's get_mask_from_json that reads the image with cv2, as LISA does.
"""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rescue_eval.core.errors import UsageError
from PIL import Image

from rescue_eval.datamodules import build_datamodule
from rescue_eval.datamodules.demo import DemoDataModule
from rescue_eval.datamodules.reasonseg import ReasonSegDataModule
from rescue_eval.datamodules.reasonseg_parquet import ReasonSegParquetDataModule
from rescue_eval.datamodules.demo import FLAG_SCENES, NUM_SCENES, TWO_TARGET_SCENE
from rescue_eval.datamodules.reasonseg import ReasonSegFolderDataset, select_fraction

pytestmark = pytest.mark.unit


def lisa_get_mask_from_json(json_path, img):
    """LISA's utils/data_processing.py get_mask_from_json, copied (comments and returns trimmed)."""
    try:
        with open(json_path, "r") as r:
            anno = json.loads(r.read())
    except:  # noqa: E722 (as in LISA)
        with open(json_path, "r", encoding="cp1252") as r:
            anno = json.loads(r.read())
    inform = anno["shapes"]
    comments = anno["text"]
    is_sentence = anno["is_sentence"]
    height, width = img.shape[:2]
    area_list = []
    valid_poly_list = []
    for i in inform:
        label_id = i["label"]
        points = i["points"]
        if "flag" == label_id.lower():
            continue
        tmp_mask = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(tmp_mask, np.array([points], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp_mask, np.array([points], dtype=np.int32), 1)
        tmp_area = tmp_mask.sum()
        area_list.append(tmp_area)
        valid_poly_list.append(i)
    sort_index = np.argsort(area_list)[::-1].astype(np.int32)
    sort_index = list(sort_index)
    sort_inform = []
    for s_idx in sort_index:
        sort_inform.append(valid_poly_list[s_idx])
    mask = np.zeros((height, width), dtype=np.uint8)
    for i in sort_inform:
        label_id = i["label"]
        points = i["points"]
        if "ignore" in label_id.lower():
            label_value = 255
        else:
            label_value = 1
        cv2.polylines(mask, np.array([points], dtype=np.int32), True, label_value, 1)
        cv2.fillPoly(mask, np.array([points], dtype=np.int32), label_value)
    return mask, comments, is_sentence


def jpeg(width, height, color=(120, 160, 200), orientation=None) -> bytes:
    image = Image.new("RGB", (width, height), color)
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, "JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation tag
        image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def write_sample(folder, stem, image_bytes, text, is_sentence, shapes, encoding="utf-8"):
    (folder / f"{stem}.jpg").write_bytes(image_bytes)
    annotation = {"version": "4.5.6", "flags": {}, "imagePath": f"{stem}.jpg", "imageData": None,
                  "text": text, "is_sentence": is_sentence,
                  "shapes": [{"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}
                             for label, points in shapes]}
    with open(folder / f"{stem}.json", "w", encoding=encoding) as file:
        json.dump(annotation, file, ensure_ascii=encoding == "utf-8")


@pytest.fixture
def folder_root(tmp_path):
    val = tmp_path / "ReasonSeg" / "val"
    val.mkdir(parents=True)
    # Ignore polygon listed last but larger than the target: area order draws it first.
    write_sample(val, "b_overlap", jpeg(64, 48), ["the mug on the left", "a mug"], False,
                 [("target", [[10, 10], [30, 10], [30, 30], [10, 30]]),
                  ("ignore_region", [[5, 5], [50, 5], [50, 40], [5, 40]]),
                  ("Flag", [[0, 0], [63, 0], [63, 47], [0, 47]])])
    # Target larger than the ignore polygon it overlaps: the ignore pixels win there.
    write_sample(val, "a_ignore_wins", jpeg(64, 48), ["What would you use to drink coffee?"], True,
                 [("Ignore", [[20, 20], [40, 20], [40, 40]]), ("target", [[4, 4], [44, 4], [44, 44], [4, 44]])])
    write_sample(val, "c_float", jpeg(50, 40), ["the café sign"], False,
                 [("target", [[3.7, 2.2], [30.9, 5.5], [25.1, 33.8], [6.6, 28.4]])], encoding="cp1252")
    # Stored 40 wide x 30 high, EXIF orientation 6 (rotate 90): shown 30 wide x 40 high.
    write_sample(val, "d_exif", jpeg(40, 30, orientation=6), ["the tall thing"], True,
                 [("target", [[2, 2], [20, 2], [20, 35], [2, 35]])])
    write_sample(val, "e_two_polygons", jpeg(64, 48), ["the two eyes"], False,
                 [("target", [[5, 5], [15, 5], [15, 15]]), ("target", [[40, 30], [60, 30], [60, 44], [40, 44]])])
    return tmp_path / "ReasonSeg"


def test_folder_ground_truth_matches_lisa(folder_root):
    dataset = ReasonSegFolderDataset(folder_root, "val")
    assert dataset.ids == ["a_ignore_wins", "b_overlap", "c_float", "d_exif", "e_two_polygons"]
    for sample in dataset:
        path = folder_root / "val" / f"{sample.id}.json"
        expected, texts, is_sentence = lisa_get_mask_from_json(path, cv2.imread(str(path.with_suffix(".jpg"))))
        assert sample.error is None
        np.testing.assert_array_equal(sample.gt_mask, expected)
        assert sample.query == texts[0]
        assert sample.subset == ("long" if is_sentence else "short")
        assert sample.meta == {"path": str(path.with_suffix(".jpg")), "format": "lisa_folder", "is_sentence": is_sentence}
        assert sample.image_bytes == path.with_suffix(".jpg").read_bytes()
        assert sample.gt_mask.shape == sample.decode_image().size[::-1]
    by_id = {sample.id: sample for sample in dataset}
    assert by_id["b_overlap"].gt_mask[20, 20] == 1 and by_id["b_overlap"].gt_mask[35, 45] == 255
    assert by_id["b_overlap"].gt_mask[45, 60] == 0  # the flag shape is skipped
    assert by_id["a_ignore_wins"].gt_mask[30, 35] == 255 and by_id["a_ignore_wins"].gt_mask[10, 10] == 1
    assert by_id["c_float"].query == "the café sign"
    assert by_id["d_exif"].gt_mask.shape == (40, 30)


def test_bad_rows_become_samples_with_errors(folder_root):
    val = folder_root / "val"
    write_sample(val, "f_corrupt", b"\xff\xd8\xff not a jpeg", ["x"], False, [])
    write_sample(val, "g_truncated", jpeg(64, 48)[:200], ["the truncated one"], True, [])
    (val / "h_no_json.jpg").write_bytes(jpeg(8, 8))
    write_sample(val, "i_bad_json", jpeg(8, 8), ["x"], False, [])
    (val / "i_bad_json.json").write_text('{"text": ["x"], "shapes": [', encoding="utf-8")
    write_sample(val, "j_bad_points", jpeg(8, 8), ["x"], False, [("target", [[1, 2], [3]])])
    samples = {sample.id: sample for sample in ReasonSegFolderDataset(folder_root, "val")}
    for sample_id, reason in [("f_corrupt", "image_unreadable"), ("g_truncated", "image_unreadable"),
                              ("h_no_json", "annotation_missing"), ("i_bad_json", "annotation_invalid"),
                              ("j_bad_points", "polygon_invalid")]:
        sample = samples[sample_id]
        assert sample.error.startswith(reason + ": ") and sample.gt_mask is None, (sample_id, sample.error)
        assert sample.image_bytes == b""
    assert samples["g_truncated"].query == "the truncated one" and samples["g_truncated"].subset == "long"
    assert samples["a_ignore_wins"].error is None


def loaded(module):
    """The dataset of a data module, through its hooks as the job calls them."""
    module.prepare_data()
    module.setup("predict")
    return module.dataset


def test_missing_root_or_split_names_the_fix(tmp_path, folder_root):
    with pytest.raises(UsageError, match="set --data.root"):
        ReasonSegDataModule(str(tmp_path / "nowhere")).setup()
    with pytest.raises(UsageError, match=r"set --data.split to one of \['val'\]"):
        ReasonSegDataModule(str(folder_root), split="test").setup()


def test_fraction_is_deterministic_and_sized():
    assert len(select_fraction(200, 0.1, 0)) == 20
    assert select_fraction(200, 0.1, 0) == select_fraction(200, 0.1, 0) == sorted(select_fraction(200, 0.1, 0))
    assert select_fraction(200, 0.1, 1) != select_fraction(200, 0.1, 0)
    assert select_fraction(200, 1.0, 5) == list(range(200))
    assert len(select_fraction(5, 0.01, 0)) == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="--fraction"):
            ReasonSegDataModule("anywhere", fraction=bad)


def test_fraction_on_a_folder_split(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    image = jpeg(8, 8)
    for i in range(200):
        write_sample(val, f"img_{i:03d}", image, [f"query {i}"], i % 2 == 1, [("target", [[1, 1], [5, 1], [5, 5]])])
    full = loaded(ReasonSegDataModule(str(tmp_path)))
    assert len(full.ids) == 200 and full.ids == sorted(full.ids) and full.subsets == ["short", "long"]
    tenth = loaded(ReasonSegDataModule(str(tmp_path), fraction=0.1)).ids
    assert len(tenth) == 20 and tenth == sorted(tenth) and set(tenth) <= set(full.ids)
    assert loaded(ReasonSegDataModule(str(tmp_path), fraction=0.1)).ids == tenth
    assert loaded(ReasonSegDataModule(str(tmp_path), fraction=0.1, fraction_seed=1)).ids != tenth
    batch = next(iter(ReasonSegDataModule(str(tmp_path), fraction=0.1).predict_dataloader()))
    assert [sample.id for sample in batch] == tenth[:1]


def parquet_rows(image_ids, ann_ids, image_as_dict):
    rows = []
    for n, (image_id, ann_id) in enumerate(zip(image_ids, ann_ids)):
        width, height = 12 + n, 10
        mask = np.zeros((height, width), dtype=bool)
        mask[2:6, 3:3 + n + 1] = True
        encoded = jpeg(width, height)
        rows.append({"image": {"bytes": encoded, "path": f"{image_id}.jpg"} if image_as_dict else encoded,
                     "text": f"query {n}", "mask": mask.tolist(), "image_id": image_id, "ann_id": ann_id,
                     "img_height": height, "img_width": width})
    return rows


def test_parquet_folder_of_files(tmp_path):
    rows = parquet_rows(["img_b", "img_a", "img_c", "img_d"], [0, 0, 0, 0], image_as_dict=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "test-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), tmp_path / "test-00001-of-00002.parquet", row_group_size=1)
    dataset = loaded(build_datamodule("reasonseg_parquet", root=str(tmp_path)))
    assert dataset.ids == ["img_b", "img_a", "img_c", "img_d"] and dataset.subsets == []
    for n, sample in enumerate(dataset):
        assert sample.error is None and sample.query == f"query {n}" and sample.subset == ""
        assert sample.gt_mask.dtype == np.uint8 and sample.gt_mask.shape == (10, 12 + n)
        np.testing.assert_array_equal(sample.gt_mask, np.asarray(rows[n]["mask"], dtype=np.uint8))
        assert sample.image_bytes == rows[n]["image"]["bytes"]
        assert sample.meta["format"] == "parquet" and sample.meta["ignore_as_foreground"] is True


def test_parquet_ids_fall_back_to_ann_id_and_bad_rows(tmp_path):
    rows = parquet_rows(["img_a", "img_a", "img_b"], [0, 1, 0], image_as_dict=False)
    rows[1]["image"] = b"garbage"
    rows[2]["mask"] = rows[2]["mask"][:-1]  # one row short of the image height
    path = tmp_path / "ReasonSeg_val.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    samples = list(ReasonSegParquetDataModule(str(path)).predict_dataloader())
    assert [batch[0].id for batch in samples] == ["img_a_0", "img_a_1", "img_b_0"]
    first, bad_image, bad_mask = (batch[0] for batch in samples)
    assert first.error is None and first.image_bytes == rows[0]["image"]
    assert bad_image.error.startswith("image_unreadable: ") and bad_image.image_bytes == b"" and bad_image.query == "query 1"
    assert bad_mask.error.startswith("gt_size_mismatch: ") and bad_mask.gt_mask is None


def test_demo_set_is_deterministic_and_reads_through_the_folder_reader(tmp_path, monkeypatch):
    folders = []
    for name in ("first", "second"):
        monkeypatch.setenv("RESCUE_EVAL_CACHE", str(tmp_path / name))
        module = build_datamodule("demo")
        assert isinstance(module, DemoDataModule)
        loaded(module)
        folders.append(tmp_path / name / "demo-v1" / "val")
    files = sorted(path.name for path in folders[0].iterdir())
    assert len(files) == 2 * NUM_SCENES and files == sorted(path.name for path in folders[1].iterdir())
    for name in files:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name

    samples = list(module.dataset)
    assert len(samples) == NUM_SCENES and all(sample.error is None for sample in samples)
    assert {sample.subset for sample in samples} == {"short", "long"} and module.dataset.subsets == ["short", "long"]
    assert any((sample.gt_mask == 255).any() for sample in samples)
    assert all(sample.gt_mask.shape == (240, 320) and (sample.gt_mask == 1).any() for sample in samples)
    annotations = [json.loads((folders[0] / f"{sample.id}.json").read_text()) for sample in samples]
    assert all(sample.query == annotation["text"][0] for sample, annotation in zip(samples, annotations))
    assert all(any(s["label"] == "flag" for s in annotations[i]["shapes"]) for i in FLAG_SCENES)
    assert sum(s["label"] == "target" for s in annotations[TWO_TARGET_SCENE]["shapes"]) == 2
    assert len(loaded(DemoDataModule(fraction=0.5)).ids) == NUM_SCENES // 2
    # The job passes root and split to every data module: root=None means the cache.
    assert loaded(build_datamodule("demo", root=None, split="val")).ids == module.dataset.ids
    assert loaded(DemoDataModule(root=str(tmp_path / "own"))).ids == module.dataset.ids
    with pytest.raises(ValueError, match="--data.split val"):
        DemoDataModule(split="test")


def test_unknown_datamodule_name():
    with pytest.raises(ValueError, match="choose one of"):
        build_datamodule("coco")
