"""A tiny random-weight SAM 3 tracker (`Sam3TrackerModel` + `Sam3TrackerProcessor`), built offline.

Same classes and file layout as the real `facebook/sam3` tracker, scaled down: 224 px input,
patch 14 (a 16 x 16 token grid), a 2-layer ViT of width 32 and a 32-wide prompt encoder / mask
decoder. About 0.5 MB; random weights, so its masks are arbitrary but deterministic.

Kept as the real checkpoint has them: the `sam3_video` layout (config under `tracker_config`,
weights under `detector_model.` / `tracker_neck.` / `tracker_model.`), four FPN levels (scale
factors 4, 2, 1, 0.5; the tracker uses the first three), and a processor config that names the
checkpoint's own processor (`Sam3VideoProcessor`), which `AutoProcessor` would return instead of
the tracker's.
"""
from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 224
PATCH_SIZE = 14
HIDDEN = 32  # ViT width, FPN width, prompt encoder and mask decoder width (the decoder needs them equal)


def build(out_dir: Path, hidden: int = HIDDEN, layers: int = 2) -> None:
    """The random twin; the trained demo executor (models/trained) is built wider and trained."""
    import torch
    from transformers import (
        Sam3ImageProcessor,
        Sam3TrackerConfig,
        Sam3TrackerModel,
        Sam3TrackerProcessor,
        Sam3ViTConfig,
        Sam3VisionConfig,
    )

    grid = IMAGE_SIZE // PATCH_SIZE  # 16 tokens a side
    backbone = Sam3ViTConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        pretrain_image_size=IMAGE_SIZE,  # position embeddings cover the grid: no tiling
        window_size=grid // 2,  # layer 0 windowed, layer 1 global, as in the real model's mix
        global_attn_indexes=list(range(1, layers, 2)),
    )
    # Four FPN levels as in facebook/sam3: the tracker uses 4x, 2x and 1x the token grid, the
    # 0.5x level serves the concept detector (models/sam3_tracker.py drops it, as SAM 3 does).
    vision = Sam3VisionConfig(
        backbone_config=backbone,
        fpn_hidden_size=hidden,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    )
    config = Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": 2 * hidden,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": hidden,
        },
    )
    torch.manual_seed(0)
    model = Sam3TrackerModel(config).eval()
    with torch.no_grad():  # trained in the real model; zeros at init would hide where it is added
        model.no_memory_embedding.normal_(std=0.02)
    save_video_layout(model, out_dir)

    image_processor = Sam3ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        mask_size={"height": 4 * grid, "width": 4 * grid},
    )
    Sam3TrackerProcessor(image_processor=image_processor).save_pretrained(out_dir)
    # facebook/sam3's processor config names its video processor, not the tracker's
    processor_config = out_dir / "processor_config.json"
    settings = json.loads(processor_config.read_text())
    settings["processor_class"] = "Sam3VideoProcessor"
    processor_config.write_text(json.dumps(settings, indent=2))


def save_video_layout(model, out_dir: Path) -> None:
    """Save the tracker in facebook/sam3's `sam3_video` layout: its config under
    `tracker_config`, its ViT under the detector's name, its neck as `tracker_neck`, the rest
    under `tracker_model` (models/sam3_layout.py reads it back). Written from the model's own
    weight names: transformers' save_pretrained would apply its own renaming rules. The twin has
    no concept detector beyond the shared ViT: `detector_config` names the model type only."""
    from safetensors.torch import save_file

    renamed = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("vision_encoder.backbone."):
            key = "detector_model." + key
        elif key.startswith("vision_encoder.neck."):
            key = "tracker_neck." + key[len("vision_encoder.neck."):]
        else:
            key = "tracker_model." + key
        renamed[key] = tensor.detach().contiguous().clone()
    save_file(renamed, out_dir / "model.safetensors", metadata={"format": "pt"})
    tracker = model.config.to_dict()
    tracker.pop("architectures", None)
    tracker["model_type"] = "sam3_tracker_video"
    video = {"architectures": ["Sam3VideoModel"], "model_type": "sam3_video", "tracker_config": tracker,
             "detector_config": {"model_type": "sam3"}}
    (out_dir / "config.json").write_text(json.dumps(video, indent=2))
