"""Building the four roles from the config and serving each behind a RoleServer."""
from __future__ import annotations

from rescue_eval.config import Config
from rescue_eval.rescue import Roles
from rescue_eval.serving import LocalRole, RoleServer

ROLE_NAMES = ("planner", "executor", "scorer", "judge")


def needed_roles(cfg: Config) -> list[str]:
    """The judge is only built when the verifier uses it."""
    return [r for r in ROLE_NAMES if r != "judge" or cfg.verifier.mode == "comparative"]


def start_server(cfg: Config, role: str) -> RoleServer:
    from models import build_role  # adapters import their model libraries only when built

    section = getattr(cfg, role)
    return RoleServer(role, build_role(role, section), max_batch=section.max_batch,
                      max_wait_s=cfg.run.max_wait_ms / 1000)


def start_local_roles(cfg: Config) -> tuple[Roles, dict[str, RoleServer]]:
    servers = {role: start_server(cfg, role) for role in needed_roles(cfg)}
    return roles_of({role: LocalRole(s) for role, s in servers.items()}), servers


def roles_of(clients: dict[str, object]) -> Roles:
    return Roles(planner=clients["planner"], executor=clients["executor"], scorer=clients["scorer"],
                 judge=clients.get("judge"))
