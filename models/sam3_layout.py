"""Loading SAM 3's tracker from either checkpoint layout.

facebook/sam3 is a `sam3_video` checkpoint: one safetensors holding the concept detector and the
tracker (`detector_model.*`, `tracker_model.*`, `tracker_neck.*`), the tracker's configuration
under `tracker_config`. `Sam3TrackerModel.from_pretrained` reads that config, and transformers
has renaming rules for the weights (conversion_mapping.py, "sam3_tracker"), but with transformers
5.24 a folder in that layout loaded with every tracker weight missing. The tracker's weights are
then read here with the same renames: the shared ViT from the detector, the tracker's neck, and
everything else from the tracker. Whatever is still missing is an error (loading.check_loading_info).
"""
from __future__ import annotations

import json
from pathlib import Path

RENAMES = (  # prefix in a sam3_video checkpoint -> prefix in Sam3TrackerModel
    ("detector_model.vision_encoder.backbone.", "vision_encoder.backbone."),
    ("tracker_neck.", "vision_encoder.neck."),
    ("tracker_model.", ""),
)


def checkpoint_folder(path: str) -> Path:
    """The local folder of a checkpoint: the path itself, or its Hugging Face cache snapshot."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))


def is_video_layout(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "sam3_video"


def tracker_weights(folder: Path) -> dict:
    """The tracker's weights of a sam3_video checkpoint, under Sam3TrackerModel's names."""
    from safetensors.torch import load_file

    renamed = {}
    for file in sorted(folder.glob("*.safetensors")):
        for key, tensor in load_file(file).items():
            for old, new in RENAMES:
                if key.startswith(old):
                    renamed[new + key[len(old):]] = tensor
                    break
    return renamed


def load_tracker(path: str, dtype):
    """Sam3TrackerModel and transformers' loading report, from either layout."""
    from transformers import Sam3TrackerModel

    model, info = Sam3TrackerModel.from_pretrained(path, dtype=dtype, output_loading_info=True)
    if info.get("missing_keys"):
        folder = checkpoint_folder(path)
        if is_video_layout(folder):
            wanted = model.state_dict()
            found = {k: v for k, v in tracker_weights(folder).items() if k in wanted}
            mismatched = {k for k, v in found.items() if v.shape != wanted[k].shape}
            result = model.load_state_dict({k: v for k, v in found.items() if k not in mismatched}, strict=False)
            info = {**info, "missing_keys": set(result.missing_keys) - mismatched, "mismatched_keys": mismatched}
    return model, info
