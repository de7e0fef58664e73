"""Device names as the config writes them (cpu, cuda, cuda:K), checked before anything loads."""
from __future__ import annotations

from rescue_eval.core.errors import UsageError


def check_device(role: str, device: str) -> None:
    """Fail early, in one sentence, when a role is placed on a device that is not there."""
    if device == "cpu":
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UsageError(f"{role}.device is {device!r}; write cpu, cuda (this rank's own GPU) or cuda:K.")
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    visible = torch.cuda.device_count()
    if index >= visible:
        raise UsageError(f"{role}.device is {device!r} but {visible} CUDA device(s) are visible; "
                         f"set --{role}.device cpu or a device below cuda:{visible}.")
