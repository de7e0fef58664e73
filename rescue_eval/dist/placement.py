"""Where each role runs: the placement section, its checks, and role statistics across ranks.

A role placed on `all` ranks is served in every process (data-parallel, no role calls between
ranks). A role placed on some ranks is served there; the other ranks reach it through the
transport.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from rescue_eval.core.errors import UsageError

Hosts = Union[Literal["all"], list[int]]


@dataclass
class PlacementConfig:
    """Placement: the ranks that host each role; all: every rank has its own copy and calls it locally.

    Attributes:
        planner: all, or a list of ranks, e.g. [0]
        executor: all, or a list of ranks
        scorer: all, or a list of ranks
        judge: all, or a list of ranks
    """

    planner: Hosts = "all"
    executor: Hosts = "all"
    scorer: Hosts = "all"
    judge: Hosts = "all"


def hosts_of(placement: PlacementConfig, role: str, world: int) -> list[int]:
    hosts = getattr(placement, role)
    return list(range(world)) if hosts == "all" else list(hosts)


def dedicated(placement: PlacementConfig, roles: list[str]) -> list[str]:
    """The roles served on some ranks only, which the others call through the transport."""
    return [r for r in roles if getattr(placement, r) != "all"]


def local_device(device: str, local_rank: int) -> str:
    """`cuda` alone means this rank's own GPU (cuda:LOCAL_RANK), as torchrun assigns them."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def validate_placement(placement: PlacementConfig, roles: list[str], world: int) -> None:
    """One sentence per mistake, before any model is loaded."""
    for role in roles:
        hosts = getattr(placement, role)
        if hosts == "all":
            continue
        if not hosts:
            raise UsageError(f"placement.{role} is empty; list the ranks that host it, or write all.")
        if len(set(hosts)) != len(hosts):
            raise UsageError(f"placement.{role} lists a rank twice ({hosts}); list each rank once.")
        outside = [r for r in hosts if not 0 <= r < world]
        if outside:
            raise UsageError(f"placement.{role} names rank(s) {outside} but the job has {world} rank(s) "
                             f"(0-{world - 1}); start more ranks (torchrun --nproc_per_node) or change "
                             f"placement.{role}.")


def layout(placement: PlacementConfig, roles: list[str], world: int, nodes: list[str] | None = None) -> str:
    """"rank 0: planner; rank 1: samples only; ..." for messages about a lost rank; with the
    ranks' `nodes` (host names) when they are not all one: "rank 2 (node1): scorer; ..."."""
    served = dedicated(placement, roles)
    hosted = {k: [r for r in served if k in hosts_of(placement, r, world)] for k in range(world)}
    where = {k: f" ({nodes[k]})" if nodes and len(set(nodes)) > 1 else "" for k in range(world)}
    return "; ".join(f"rank {k}{where[k]}: {', '.join(rs) or 'samples only'}" for k, rs in hosted.items())


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
