"""Extension points as registries: a name maps to "module:attribute", imported when first used.

Adding a backend, a dataset, a selection strategy or a transport is a new module plus one
`register` line; the config's choices are the registry's names, so nothing else changes.
Targets are imported lazily, so listing the choices (for `--help` or validation) loads no
model library.
"""
from __future__ import annotations

import importlib

from rescue_eval.core.errors import UsageError


class Registry:
    def __init__(self, kind: str, key: str):
        self.kind = kind  # what the names are, for messages: "planner backend"
        self.key = key  # the config key that chooses one: "planner.backend"
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        """`target` is "package.module:Attribute"."""
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._targets[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._targets)

    def __contains__(self, name: str) -> bool:
        return name in self._targets

    def target(self, name: str) -> str:
        if name not in self._targets:
            raise UsageError(f"{self.key} {name!r} is not a known {self.kind}; choose one of {sorted(self._targets)}.")
        return self._targets[name]

    def get(self, name: str):
        module, attribute = self.target(name).split(":")
        return getattr(importlib.import_module(module), attribute)
