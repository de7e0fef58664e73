"""Where each role runs: placement checks, role servers on their hosting ranks, clients on all.

A role placed on `all` ranks is served in every process (data-parallel, no RPC). A role placed
on some ranks is served there; the other ranks reach it through `transport.RemoteRole`.
"""
from __future__ import annotations

import dataclasses

from rescue_eval.config import Config
from rescue_eval.errors import UsageError
from rescue_eval.rescue import Roles
from rescue_eval.serving import LocalRole, RoleServer

ROLE_NAMES = ("planner", "executor", "scorer", "judge")


def needed_roles(cfg: Config) -> list[str]:
    """The judge is only built when the verifier uses it."""
    return [r for r in ROLE_NAMES if r != "judge" or cfg.verifier.mode == "comparative"]


def hosts_of(cfg: Config, role: str, world: int) -> list[int]:
    hosts = getattr(cfg.placement, role)
    return list(range(world)) if hosts == "all" else list(hosts)


def device_of(cfg: Config, role: str, local_rank: int) -> str:
    """`cuda` alone means this rank's own GPU (cuda:LOCAL_RANK), as torchrun assigns them."""
    device = getattr(cfg, role).device
    return f"cuda:{local_rank}" if device == "cuda" else device


def validate_placement(cfg: Config, world: int, rank: int, local_rank: int) -> None:
    """One sentence per mistake, before any model is loaded."""
    from models import check_device

    for role in needed_roles(cfg):
        hosts = getattr(cfg.placement, role)
        if hosts == "all":
            pass
        elif not hosts:
            raise UsageError(f"placement.{role} is empty; list the ranks that host it, or write all.")
        elif len(set(hosts)) != len(hosts):
            raise UsageError(f"placement.{role} lists a rank twice ({hosts}); list each rank once.")
        elif any(not 0 <= r < world for r in hosts):
            raise UsageError(f"placement.{role} names rank(s) {[r for r in hosts if not 0 <= r < world]} but the "
                             f"job has {world} rank(s) (0-{world - 1}); start more ranks "
                             f"(torchrun --nproc_per_node) or change placement.{role}.")
        if rank in hosts_of(cfg, role, world):
            check_device(role, device_of(cfg, role, local_rank))


def start_servers(cfg: Config, rank: int, world: int, local_rank: int) -> dict[str, RoleServer]:
    """Build and serve the roles this rank hosts."""
    from models import build_role  # adapters import their model libraries only when built

    servers = {}
    for role in needed_roles(cfg):
        if rank in hosts_of(cfg, role, world):
            section = dataclasses.replace(getattr(cfg, role), device=device_of(cfg, role, local_rank))
            servers[role] = RoleServer(role, build_role(role, section), max_batch=section.max_batch,
                                       max_wait_s=cfg.run.max_wait_ms / 1000)
    return servers


def clients(cfg: Config, servers: dict[str, RoleServer], world: int) -> Roles:
    """Each role through this rank's own server when it hosts one, else over RPC."""
    by_role = {}
    for role in needed_roles(cfg):
        if role in servers:
            by_role[role] = LocalRole(servers[role])
        else:
            from rescue_eval.transport import RemoteRole

            by_role[role] = RemoteRole(role, hosts_of(cfg, role, world))
    return Roles(planner=by_role["planner"], executor=by_role["executor"], scorer=by_role["scorer"],
                 judge=by_role.get("judge"))


def merge_role_stats(per_rank: list[dict[str, dict]]) -> dict[str, dict]:
    """Role stats of every rank -> one row per role (sums; busy fraction averaged over hosts)."""
    merged: dict[str, dict] = {}
    for rank, stats in enumerate(per_rank):
        for role, s in stats.items():
            m = merged.setdefault(role, {"ranks": [], "requests": 0, "batches": 0, "busy_s": 0.0,
                                         "busy_fraction": 0.0, "queue_wait_s": 0.0})
            m["ranks"].append(rank)
            m["requests"] += s["requests"]
            m["batches"] += s["batches"]
            m["busy_s"] += s["busy_s"]
            m["busy_fraction"] += s["busy_fraction"]
            m["queue_wait_s"] += s["mean_queue_wait_s"] * s["batches"]
    for m in merged.values():
        m["mean_batch"] = m["requests"] / m["batches"] if m["batches"] else 0.0
        m["busy_fraction"] /= len(m["ranks"])
        m["mean_queue_wait_s"] = m.pop("queue_wait_s") / m["batches"] if m["batches"] else 0.0
    return merged
