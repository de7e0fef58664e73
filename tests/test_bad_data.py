"""Bad data, written by other tools (PIL, cv2, raw bytes, json in cp1252, pyarrow, symlinks).

Every file either loads as LISA's cv2.imread sees it (checked pixel by pixel, the ground truth
lying on the right pixels, EXIF rotation included) or becomes a failed sample whose error starts
with its reason; a real run over the folder counts each bad file and loses nothing.
"""
from __future__ import annotations

import io
import json
from collections import Counter
import os
import subprocess
import sys

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rescue_eval.datamodules.reasonseg import ReasonSegFolderDataset
from rescue_eval.datamodules.reasonseg_parquet import ReasonSegParquetDataset


W, H = 64, 48
RED, BACKGROUND = (220, 30, 30), (120, 160, 200)
TARGET = [[16, 12], [39, 12], [39, 35], [16, 35]]  # the red block, x 16..39, y 12..35 (displayed image)


def scene() -> np.ndarray:
    """An RGB HxW image: background with the red target block."""
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:] = BACKGROUND
    rgb[12:36, 16:40] = RED
    return rgb


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gray16_png() -> bytes:
    """16-bit grayscale PNG written by cv2: the high byte is the 8-bit gray, the low byte noise."""
    gray8 = np.asarray(Image.fromarray(scene()).convert("L"), dtype=np.uint16)
    noise = np.random.default_rng(0).integers(0, 256, gray8.shape, dtype=np.uint16)
    ok, data = cv2.imencode(".png", (gray8 << 8) | noise)
    assert ok
    return data.tobytes()


def exif_rotated_jpeg() -> bytes:
    """Stored turned a quarter counter-clockwise, with EXIF orientation 6 (rotate 90 clockwise to
    display): shown upright, the scene is W wide and H high, and the polygons are drawn on that."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(np.ascontiguousarray(np.rot90(scene(), 1))), "JPEG", quality=95, subsampling=0,
                  exif=exif.tobytes())


def rgba_png() -> bytes:
    alpha = np.zeros((H, W), np.uint8)
    alpha[:, W // 2:] = 255  # half transparent: alpha is dropped, as cv2.imread drops it
    return encode(Image.fromarray(np.dstack([scene(), alpha])), "PNG")


# stem -> writer of an image that must load (each shows the red target block)
GOOD_IMAGES = {
    "good_rgb": lambda: encode(Image.fromarray(scene()), "JPEG", quality=95),
    "mode_gray": lambda: encode(Image.fromarray(scene()).convert("L"), "JPEG", quality=95),
    "mode_rgba": rgba_png,
    "mode_palette": lambda: encode(Image.fromarray(scene()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4), "PNG"),
    "mode_gray16": gray16_png,
    "mode_cmyk": lambda: encode(Image.fromarray(scene()).convert("CMYK"), "JPEG", quality=95),
    "exif_rotated": exif_rotated_jpeg,
}
GRAY_MODES = ("mode_gray", "mode_gray16")
# stem -> (shapes, warning reasons) of annotations that load with a warning
ODD_ANNOTATIONS = {
    "polygon_short": ([("target", [[8, 40], [56, 44]])], ["polygon_short"]),  # a line, as LISA draws it
    "polygon_outside": ([("target", TARGET), ("target", [[100, 100], [120, 100], [120, 130]]),
                         ("target", [[-20, -20], [20, -20], [20, 5], [-20, 5]])], ["polygon_outside"]),
    "gt_empty": ([("flag", TARGET)], ["gt_empty"]),
    "size_differs": ([("target", TARGET)], ["annotation_size_differs"]),
}
REASONS = {"image_missing", "image_empty", "image_unreadable", "path_escapes_root", "annotation_missing",
           "annotation_invalid", "text_empty", "polygon_invalid", "gt_size_mismatch", "row_unreadable"}
# stem -> reason: the files that must fail (the files are written in `write_folder`)
BAD = {
    "image_missing": "image_missing", "image_dangling_link": "image_missing", "image_empty": "image_empty",
    "image_truncated": "image_unreadable", "image_corrupt": "image_unreadable",
    "annotation_missing": "annotation_missing", "annotation_syntax": "annotation_invalid",
    "annotation_not_text": "annotation_invalid", "key_missing": "annotation_invalid",
    "is_sentence_string": "annotation_invalid", "text_empty": "text_empty", "text_no_queries": "text_empty",
    "polygon_nan": "polygon_invalid", "polygon_no_points": "polygon_invalid", "polygon_strings": "polygon_invalid",
    "escape_image": "path_escapes_root", "escape_annotation": "path_escapes_root",
}


def annotation(shapes, text=("the red block",), is_sentence=False, **extra) -> dict:
    return {"version": "5.0.1", "flags": {}, "imageData": None, "text": list(text), "is_sentence": is_sentence,
            "shapes": [{"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}
                       for label, points in shapes], **extra}


def write_json(path, value, encoding="utf-8") -> None:
    with open(path, "w", encoding=encoding) as file:
        json.dump(value, file, ensure_ascii=False)


def write_folder(root) -> None:
    """root/val/ with every case above, and root/../outside/ with files that symlinks point to."""
    val, outside = root / "val", root.parent / "outside"
    val.mkdir(parents=True)
    outside.mkdir()
    good_jpeg = GOOD_IMAGES["good_rgb"]()
    target = annotation([("target", TARGET)], imageWidth=W, imageHeight=H)
    for stem, make in GOOD_IMAGES.items():
        (val / f"{stem}.jpg").write_bytes(make())
        write_json(val / f"{stem}.json", target)
    (val / "cp1252.jpg").write_bytes(good_jpeg)
    write_json(val / "cp1252.json", annotation([("target", TARGET)], text=["the café’s red sign"]), encoding="cp1252")
    for stem, (shapes, _) in ODD_ANNOTATIONS.items():
        (val / f"{stem}.jpg").write_bytes(good_jpeg)
        write_json(val / f"{stem}.json", annotation(shapes, imageWidth=W + (stem == "size_differs"), imageHeight=H))

    for stem in BAD:
        (val / f"{stem}.jpg").write_bytes(good_jpeg)
        write_json(val / f"{stem}.json", target)
    (val / "image_missing.jpg").unlink()
    (val / "image_dangling_link.jpg").unlink()
    os.symlink(val / "no_such_file.jpg", val / "image_dangling_link.jpg")
    (val / "image_empty.jpg").write_bytes(b"")
    (val / "image_truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (val / "image_corrupt.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    (val / "annotation_missing.json").unlink()
    (val / "annotation_syntax.json").write_text(json.dumps(target)[:-30], encoding="utf-8")
    (val / "annotation_not_text.json").write_bytes(b'{"text": ["\x81\x8d\x8f\x90\x9d"], "is_sentence": false, "shapes": []}')
    write_json(val / "key_missing.json", {k: v for k, v in target.items() if k != "shapes"})
    write_json(val / "is_sentence_string.json", annotation([("target", TARGET)], is_sentence="false"))
    write_json(val / "text_empty.json", annotation([("target", TARGET)], text=["  "]))
    write_json(val / "text_no_queries.json", annotation([("target", TARGET)], text=[]))
    write_json(val / "polygon_nan.json", annotation([("target", [[16, 12], [float("nan"), 12], [39, 35]])]))
    write_json(val / "polygon_no_points.json", annotation([("target", TARGET), ("ignore", [])]))
    write_json(val / "polygon_strings.json", annotation([("target", [["x", "y"], [1, 2], [3, 4]])]))
    (outside / "secret.jpg").write_bytes(good_jpeg)  # readable: only the root check keeps it out
    write_json(outside / "secret.json", target)
    for stem, suffix in (("escape_image", ".jpg"), ("escape_annotation", ".json")):
        (val / f"{stem}{suffix}").unlink()
        os.symlink(outside / f"secret{suffix}", val / f"{stem}{suffix}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "ReasonSeg"
    write_folder(root)
    return root


def expected_colors(stem) -> tuple[np.ndarray, np.ndarray]:
    """(target, background) colour as LISA's cv2.imread gives them, in RGB order."""
    pair = Image.fromarray(np.array([[RED, BACKGROUND]], np.uint8))
    if stem in GRAY_MODES:
        pair = pair.convert("L").convert("RGB")
    return tuple(np.asarray(pair, dtype=int)[0])


def mostly(pixels: np.ndarray, color: np.ndarray, tolerance: int = 40) -> bool:
    """At least 95% of the pixels within `tolerance` of `color` (JPEG blurs the block's edges)."""
    return (np.abs(pixels.astype(int) - color).max(axis=-1) <= tolerance).mean() >= 0.95


@pytest.mark.unit
def test_each_file_loads_correctly_or_fails_with_its_reason(folder):
    samples = {sample.id: sample for sample in ReasonSegFolderDataset(folder, "val")}
    assert set(samples) == set(GOOD_IMAGES) | set(ODD_ANNOTATIONS) | set(BAD) | {"cp1252"}  # nothing dropped
    for stem, reason in BAD.items():
        sample = samples[stem]
        assert sample.error and sample.error.split(":")[0] == reason, (stem, sample.error)
        assert sample.gt_mask is None and sample.image_bytes == b""
    assert samples["text_empty"].subset == "short"  # what was read before the failure is kept
    assert "secret" in samples["escape_image"].error and samples["escape_image"].query == "the red block"

    expected_gt = np.zeros((H, W), np.uint8)
    expected_gt[12:36, 16:40] = 1
    for stem in GOOD_IMAGES:
        sample = samples[stem]
        assert sample.error is None and "warnings" not in sample.meta, (stem, sample.error, sample.meta)
        decoded = np.asarray(sample.decode_image())
        lisa_view = cv2.imread(str(folder / "val" / f"{stem}.jpg"), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert decoded.shape == lisa_view.shape == (H, W, 3), stem  # EXIF rotation applied, as cv2 does
        assert np.abs(decoded.astype(int) - lisa_view).max() <= 3, stem
        np.testing.assert_array_equal(sample.gt_mask, expected_gt)
        target, background = expected_colors(stem)
        assert mostly(decoded[sample.gt_mask == 1], target) and mostly(decoded[sample.gt_mask == 0], background), stem
    gray16 = cv2.imdecode(np.frombuffer(gray16_png(), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(np.asarray(samples["mode_gray16"].decode_image())[:, :, 0], gray16 >> 8)
    rgba = np.asarray(samples["mode_rgba"].decode_image())
    np.testing.assert_array_equal(rgba, scene())  # alpha dropped, colours kept, nothing composited
    np.testing.assert_array_equal(np.asarray(samples["mode_palette"].decode_image()), scene())

    assert samples["cp1252"].error is None and samples["cp1252"].query == "the café’s red sign"
    for stem, (_, reasons) in ODD_ANNOTATIONS.items():
        sample = samples[stem]
        assert sample.error is None and [w.split(":")[0] for w in sample.meta["warnings"]] == reasons, (stem, sample.meta)
    assert samples["gt_empty"].gt_mask.shape == (H, W) and not samples["gt_empty"].gt_mask.any()
    line = samples["polygon_short"].gt_mask
    assert line[40, 8] == line[44, 56] == 1 and 40 < line.sum() < 120  # a 1-px line, as cv2 draws it for LISA
    np.testing.assert_array_equal(samples["polygon_outside"].gt_mask[6:, :], expected_gt[6:, :])
    assert samples["polygon_outside"].gt_mask[:6, :21].all()  # the polygon partly outside is clipped


@pytest.mark.unit
def test_parquet_rows_load_or_fail_with_their_reason(tmp_path):
    good = GOOD_IMAGES["good_rgb"]()
    mask = (scene() == RED).all(axis=-1)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "beside.jpg").write_bytes(good)
    (tmp_path.parent / "secret.jpg").write_bytes(good)
    rotated_mask = np.zeros((H, W), bool)
    rotated_mask[12:36, 16:40] = True
    cases = {  # image_id -> (image cell, text, mask, expected reason or None)
        "ok": ({"bytes": good, "path": "/somewhere/else/ok.jpg"}, "the red block", mask.tolist(), None),
        "ok_by_path": ({"bytes": None, "path": "images/beside.jpg"}, "the red block", mask.tolist(), None),
        "ok_exif": ({"bytes": exif_rotated_jpeg(), "path": None}, "the red block", rotated_mask.tolist(), None),
        "gt_empty": ({"bytes": good, "path": None}, "the red block", np.zeros((H, W), bool).tolist(), None),
        "escape_relative": ({"bytes": None, "path": "../secret.jpg"}, "q", mask.tolist(), "path_escapes_root"),
        "escape_absolute": ({"bytes": None, "path": "/etc/passwd"}, "q", mask.tolist(), "path_escapes_root"),
        "nul_in_name": ({"bytes": None, "path": "images/beside\0.jpg"}, "q", mask.tolist(), "image_unreadable"),
        "nul_in_folder": ({"bytes": None, "path": "ima\0ges/beside.jpg"}, "q", mask.tolist(), "image_unreadable"),
        "no_image": (None, "q", mask.tolist(), "image_missing"),
        "path_missing": ({"bytes": None, "path": "images/gone.jpg"}, "q", mask.tolist(), "image_missing"),
        "image_empty": ({"bytes": b"", "path": None}, "q", mask.tolist(), "image_empty"),
        "image_corrupt": ({"bytes": b"\x89PNG\r\n\x1a\n garbage", "path": None}, "q", mask.tolist(), "image_unreadable"),
        "text_empty": ({"bytes": good, "path": None}, "", mask.tolist(), "text_empty"),
        "text_null": ({"bytes": good, "path": None}, None, mask.tolist(), "annotation_invalid"),
        "mask_null": ({"bytes": good, "path": None}, "q", None, "annotation_invalid"),
        "mask_ragged": ({"bytes": good, "path": None}, "q", [row[: 10 + i % 3] for i, row in enumerate(mask.tolist())],
                        "annotation_invalid"),
        "mask_holes": ({"bytes": good, "path": None}, "q", [[None] * W] + mask.tolist()[1:], "annotation_invalid"),
        "mask_smaller": ({"bytes": good, "path": None}, "q", mask[:-1, :-2].tolist(), "gt_size_mismatch"),
        "mask_unrotated": ({"bytes": exif_rotated_jpeg(), "path": None}, "q", np.rot90(rotated_mask, 1).tolist(),
                           "gt_size_mismatch"),
    }
    rows = [{"image": cell, "text": text, "mask": m, "image_id": image_id, "ann_id": 0, "img_height": H, "img_width": W}
            for image_id, (cell, text, m, _) in cases.items()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "val.parquet", row_group_size=5)
    samples = list(ReasonSegParquetDataset(tmp_path / "val.parquet"))
    assert [s.id for s in samples] == list(cases)  # every row, in order
    for sample, (_, _, m, reason) in zip(samples, cases.values()):
        if reason is None:
            assert sample.error is None, (sample.id, sample.error)
            np.testing.assert_array_equal(sample.gt_mask, np.asarray(m, np.uint8))
        else:
            assert sample.error.split(":")[0] == reason and sample.gt_mask is None, (sample.id, sample.error)
    by_id = {s.id: s for s in samples}
    assert by_id["ok_by_path"].image_bytes == good and by_id["gt_empty"].meta["warnings"][0].startswith("gt_empty:")
    decoded = np.asarray(by_id["ok_exif"].decode_image())
    assert mostly(decoded[rotated_mask], np.array(RED)) and mostly(decoded[~rotated_mask], np.array(BACKGROUND))


@pytest.mark.cli
def test_a_run_counts_every_bad_file_and_loses_nothing(folder, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "rescue_eval", "run", "--data.name", "reasonseg",
                           "--data.root", str(folder), "--data.split", "val", "--max_n", "2", "--mode", "heuristic",
                           "--executor.backend", "grabcut", "--planner.backend", "gt_box", "--run.progress", "false",
                           "--wandb.enabled", "false", "--output", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["id"]: r for p in (out / "results").glob("rank-*.jsonl") for r in map(json.loads, p.open())}
    files = {p.stem for p in (folder / "val").iterdir()}
    assert len(records) == len(files) and set(records) == files  # one record per sample, nothing dropped
    for stem, reason in BAD.items():
        assert records[stem]["failure"] == "bad_input" and records[stem]["error"].startswith(reason + ":"), records[stem]
    # gt_box proposes the ground-truth box, and an empty ground truth has none: the planner's
    # "no_hypothesis", not bad input; the empty prediction still scores 1.0, as LISA scores it.
    assert records["gt_empty"]["failure"] == "no_hypothesis" and records["gt_empty"]["iou"] == 1.0
    loaded = set(GOOD_IMAGES) | set(ODD_ANNOTATIONS) | {"cp1252"}
    assert all(records[stem]["failure"] is None for stem in loaded - {"gt_empty"}), {s: records[s]["error"] for s in loaded}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == len(files) and summary["n_failed"] == len(BAD) + 1
    assert {k: v for k, v in summary["failures"].items() if v} == {"bad_input": len(BAD), "no_hypothesis": 1}
    assert summary["errors"] == {**Counter(BAD.values()), "no_hypothesis": 1}  # by reason prefix
    assert summary["warnings"]["gt_empty"] == 1 and records["gt_empty"]["warnings"][0].startswith("gt_empty:")


junk = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.lists(st.integers(), max_size=3)
coordinate = st.integers(-100, 200) | st.floats(-1e12, 1e12)
well_formed_shape = st.fixed_dictionaries({
    "label": st.sampled_from(["target", "ignore", "Flag", "other"]),
    "points": st.lists(st.lists(coordinate, min_size=2, max_size=2), min_size=1, max_size=6)})
well_formed = st.fixed_dictionaries(
    {"text": st.lists(st.text(max_size=5), min_size=1, max_size=2), "is_sentence": st.booleans(),
     "shapes": st.lists(well_formed_shape, max_size=3)},
    optional={"imageWidth": st.sampled_from([W, H]), "imageHeight": st.sampled_from([H, W])})


@st.composite
def annotation_value(draw) -> dict:
    """A well-formed annotation with up to two of its parts deleted or replaced by any JSON value."""
    annotation = draw(well_formed)
    for _ in range(draw(st.integers(0, 2))):
        part = draw(st.sampled_from(["text", "is_sentence", "shapes", "label", "points", "point", "delete"]))
        if part == "delete":
            annotation.pop(draw(st.sampled_from(sorted(annotation))), None)
        elif part in ("label", "points", "point") and isinstance(annotation.get("shapes"), list) and any(
                isinstance(s, dict) for s in annotation["shapes"]):  # an earlier step may have made them junk
            shape = draw(st.sampled_from([s for s in annotation["shapes"] if isinstance(s, dict)]))
            if part == "point" and isinstance(shape.get("points"), list) and shape["points"]:
                shape["points"][draw(st.integers(0, len(shape["points"]) - 1))] = draw(junk)
            else:
                shape[part if part != "point" else "points"] = draw(junk)
        else:
            annotation[part] = draw(junk)
    return annotation


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=annotation_value().map(lambda a: json.dumps(a).encode()) | st.binary(max_size=40),
       truncate=st.booleans())
@pytest.mark.unit
def test_any_annotation_loads_or_fails_with_a_known_reason(tmp_path, content, truncate):
    val = tmp_path / "val"
    val.mkdir(exist_ok=True)
    (val / "x.jpg").write_bytes(GOOD_IMAGES["good_rgb"]())
    (val / "x.json").write_bytes(content[: len(content) // 2] if truncate else content)
    (sample,) = ReasonSegFolderDataset(tmp_path, "val")
    if sample.error is None:
        assert sample.gt_mask.shape == (H, W) and set(np.unique(sample.gt_mask)) <= {0, 1, 255} and sample.query.strip()
    else:
        assert sample.error.split(":")[0] in REASONS and sample.gt_mask is None, sample.error
