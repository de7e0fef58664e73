"""The roles of a job on this rank: the backends it hosts behind role servers, and a client of
every role (its own server when it hosts one, else the transport to a rank that does)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rescue_eval.config import Config, needed_roles, role_sections
from rescue_eval.core.devices import check_device
from rescue_eval.core.errors import UsageError
from rescue_eval.core.search import Roles
from rescue_eval.dist.placement import hosts_of, local_device, validate_placement
from rescue_eval.dist.serving import LocalRole, RoleServer
from rescue_eval.dist.transport import Transport


def validate(cfg: Config, world: int, rank: int, local_rank: int) -> None:
    """Placement and the devices of the roles this rank hosts: one sentence per mistake,
    before any model is loaded."""
    validate_placement(cfg.placement, needed_roles(cfg), world)
    for role, section in role_sections(cfg).items():
        if rank in hosts_of(cfg.placement, role, world):
            check_device(role, local_device(section.device, local_rank))


def prepare_checkpoints(cfg: Config) -> None:
    """Build the tiny checkpoints the config names (once, on rank 0, before any rank loads them)."""
    from rescue_eval.models import BACKENDS, adapter_keys
    from rescue_eval.models.loading import check_model_type
    from rescue_eval.models.tiny import resolve_checkpoint

    for role, section in role_sections(cfg).items():
        if "checkpoint" in adapter_keys(role, section.backend):
            check_local_checkpoint(section.checkpoint, f"{role}.checkpoint")
            resolved = resolve_checkpoint(section.checkpoint)
            expected = getattr(BACKENDS[role].get(section.backend), "model_types", ())
            if expected:
                check_model_type(f"{role}.checkpoint", section.checkpoint, resolved, expected)


def check_local_checkpoint(spec: str, key: str) -> None:
    """A checkpoint given as a path must be a folder that `save_pretrained` wrote; anything else
    that cannot be a hub id (namespace/name) is a path that does not exist."""
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{key} {spec} is not a checkpoint folder (it has no config.json): give the folder "
                             f"that save_pretrained wrote, or a hub id.")
    elif spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise UsageError(f"{key} {spec} does not exist: give a local checkpoint folder or a hub id "
                         f"(namespace/name), and fetch it first with `rescue-eval download`.")


def start_servers(cfg: Config, rank: int, world: int, local_rank: int) -> dict[str, RoleServer]:
    """Build and serve the roles this rank hosts."""
    from rescue_eval.models import build_role  # adapters import their model libraries only when built

    servers = {}
    for role, section in role_sections(cfg).items():
        if rank in hosts_of(cfg.placement, role, world):
            section = dataclasses.replace(section, device=local_device(section.device, local_rank))
            servers[role] = RoleServer(role, build_role(role, section), max_batch=section.max_batch,
                                       max_wait_s=cfg.run.max_wait_ms / 1000)
    return servers


def clients(cfg: Config, servers: dict[str, RoleServer], world: int, transport: Transport) -> Roles:
    """Each role through this rank's own server when it hosts one, else through the transport."""
    by_role = {role: LocalRole(servers[role]) if role in servers
               else transport.client(role, hosts_of(cfg.placement, role, world))
               for role in needed_roles(cfg)}
    return Roles(planner=by_role["planner"], executor=by_role["executor"], scorer=by_role["scorer"],
                 judge=by_role.get("judge"))
