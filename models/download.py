"""`rescue-eval download`: fetch the checkpoints a config names into the Hugging Face cache.

Run it on a machine with hub access (then copy the cache, or share it), because evaluation
jobs load checkpoints with `from_pretrained` and often run where the hub is out of reach.
"""
from __future__ import annotations

from pathlib import Path

from rescue_eval.core.errors import UsageError

# backends that load a checkpoint themselves (remote ones use a server's model; gt_box and
# grabcut have none)
LOADS_CHECKPOINT = {"transformers", "vllm", "sam3"}


def checkpoints_of(sections: dict) -> dict[str, str]:
    """role -> hub id for every role section whose checkpoint is neither tiny:NAME nor a local folder."""
    found = {}
    for role, section in sections.items():
        spec = section.checkpoint
        if section.backend in LOADS_CHECKPOINT and spec and not spec.startswith("tiny:") and not Path(spec).exists():
            found[role] = spec
    return found


def download(sections: dict) -> dict[str, str]:
    """Download each hub checkpoint of the role sections once; returns hub id -> local folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    paths = {}
    for repo_id in dict.fromkeys(checkpoints_of(sections).values()):
        try:
            paths[repo_id] = snapshot_download(repo_id)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as exc:
            raise UsageError(f"Could not reach the Hugging Face hub for {repo_id} ({type(exc).__name__}); run "
                             f"`rescue-eval download` on a machine with hub access and copy its Hugging Face "
                             f"cache (HF_HOME) here.") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "no response"
            raise UsageError(f"The Hugging Face hub refused {repo_id} ({status}); check the name, and for gated "
                             f"models (facebook/sam3) accept the licence and log in with `hf auth login`.") from exc
    return paths
