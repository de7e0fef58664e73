"""Typed run configuration: YAML files plus dotted command-line overrides (jsonargparse).

`rescue-eval run --config configs/demo.yaml --planner.max_n 16` loads the file, applies the
override and validates every key and type; an unknown or mistyped key is an error that names
it. The options of the original RESCue scripts (`--fraction`, `--parallel_requests`, `--mode`,
`--max_n`) are kept as aliases of their dotted keys.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from rescue_eval.core.errors import UsageError
from rescue_eval.core.protocols import ROLE_NAMES
from rescue_eval.core.selection import VerifierSettings, strategy
from rescue_eval.datamodules import GENERATED, SPLIT_BY
from rescue_eval.dist.placement import PlacementConfig
from rescue_eval.dist.transport import DistConfig
from rescue_eval.io.tracking import WandbConfig
from rescue_eval.models import adapter_kwargs
from rescue_eval.sections import DataConfig, ExecutorConfig, JudgeConfig, PlannerConfig, RunConfig, ScorerConfig


def shipped_config(name: str) -> Path:
    """A config shipped with the package (the repository's configs/, installed as package data)."""
    return Path(str(resources.files("rescue_eval.configs") / name))


DEMO_CONFIG = shipped_config("demo.yaml")


LEGACY_FLAGS = {  # original RESCue option -> dotted key
    "--fraction": "--data.fraction",
    "--parallel_requests": "--run.parallel_requests",
    "--mode": "--verifier.mode",
    "--max_n": "--planner.max_n",
    "--limit": "--data.limit",  # lmms-eval's and VLMEvalKit's name
}

# Keys that change how a run goes but not its results: a resumed run may change them freely
# (placement included: results do not depend on the world size or the layout).
RESUME_FREE_KEYS = {"run.force", "run.progress", "run.overlays", "run.parallel_requests", "run.max_wait_ms",
                    "run.strict", "data.limit", "run.retry_failed", "run.transient_stop_share",
                    "run.transient_stop_window"}
RESUME_FREE_SECTIONS = {"placement", "dist", "wandb"}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    verifier: VerifierSettings = field(default_factory=VerifierSettings)
    run: RunConfig = field(default_factory=RunConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def parser(prog: str = "rescue-eval run") -> ArgumentParser:
    aliases = ", ".join(f"{old} (= {new})" for old, new in LEGACY_FLAGS.items())
    p = ArgumentParser(prog=prog, exit_on_error=False, usage=f"{prog} --output OUT [--config FILE] [--SECTION.KEY VALUE ...]",
                       description="Evaluate a reasoning-segmentation benchmark with the RESCue search. Every key "
                                   "below can be set in a --config YAML file or on the command line; later ones win.",
                       epilog=f"Short forms (the original RESCue options, and lmms-eval's --limit): {aliases}.")
    p.add_argument("--config", action=ActionConfigFile,
                   help="YAML run configuration; without one, the defaults are configs/demo.yaml")
    p.add_argument("--output", required=True, help="output directory (an existing one is resumed)")
    if prog == "rescue-eval run":
        p.add_argument("--suite", help="a suite file (configs/suite_lisa.yaml): evaluate each of its splits into "
                                       "OUTPUT/<dataset>-<split>/ with the models loaded once")
    p.add_class_arguments(Config, None)
    return p


def expand_legacy_flags(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(LEGACY_FLAGS.get(name, name) + eq + value if name in LEGACY_FLAGS else arg)
    return out


def parse(argv: list[str]) -> tuple[Config, Path]:
    """Config and output directory from command-line arguments; raises UsageError naming the
    bad key or value."""
    p = parser()
    try:
        ns = p.parse_args(expand_legacy_flags(argv))
    except Exception as exc:  # jsonargparse raises ArgumentError with the key in its message
        raise UsageError(f"Invalid configuration: {exc}".strip()) from None
    init = p.instantiate(ns)
    cfg = Config(**{k: getattr(init, k) for k in Config.__dataclass_fields__})
    validate(cfg)
    return cfg, Path(ns.output)


def tiny_roles_note(cfg: Config) -> str | None:
    """The sentence a run with tiny random-weight checkpoints says, at start and end."""
    tiny = [r for r in ROLE_NAMES if getattr(cfg, r).checkpoint.startswith("tiny:") and r in needed_roles(cfg)]
    return (f"{', '.join(tiny)} use tiny random-weight checkpoints: the scores test the harness, not a model."
            if tiny else None)


def needed_roles(cfg: Config) -> list[str]:
    """The roles this config's job builds: the judge only when the selection strategy uses it."""
    uses_judge = strategy(cfg.verifier).uses_judge
    return [r for r in ROLE_NAMES if r != "judge" or uses_judge]


def role_sections(cfg: Config) -> dict:
    """role -> its config section, for the roles the job builds."""
    return {role: getattr(cfg, role) for role in needed_roles(cfg)}


def validate(cfg: Config) -> None:
    """Checks that need more than one key or a range: one sentence each, naming the fix."""
    for role, section in role_sections(cfg).items():
        adapter_kwargs(role, section)  # a key the chosen backend does not take is an error
    if not 0 < cfg.data.fraction <= 1:
        raise UsageError(f"data.fraction is {cfg.data.fraction}; give a share in (0, 1], e.g. --fraction 0.1.")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise UsageError(f"data.limit is {cfg.data.limit}; give at least 1 sample, or leave it out for the whole split.")
    if cfg.planner.max_n < 1:
        raise UsageError(f"planner.max_n is {cfg.planner.max_n}; give at least 1 hypothesis per sample.")
    if cfg.run.parallel_requests < 1:
        raise UsageError("run.parallel_requests must be at least 1.")
    if cfg.data.split_by and cfg.data.split_by not in SPLIT_BY.get(cfg.data.name, ()):
        raise UsageError(f"data.split_by {cfg.data.split_by!r} does not apply to {cfg.data.name}; "
                         + (f"use one of {list(SPLIT_BY[cfg.data.name])}." if cfg.data.name in SPLIT_BY
                            else "leave it out (only the refcoco datasets have one)."))
    if cfg.data.name not in GENERATED and not cfg.data.root:
        raise UsageError(f"data.name is {cfg.data.name!r} but data.root is empty; pass --data.root PATH.")
    w = cfg.verifier
    if min(w.weight_vlm, w.weight_siglip, w.weight_agreement) < 0:
        raise UsageError("verifier weights must be non-negative.")
    if not cfg.planner.temperatures or min(cfg.planner.temperatures) <= 0:
        raise UsageError("planner.temperatures must be a non-empty list of positive numbers.")


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_yaml(path: Path) -> Config:
    """A resolved config written by a run (OUT/config.yaml)."""
    cfg, _ = parse(["--config", str(path), "--output", "unused"])
    return cfg


def result_hash(cfg: Config) -> str:
    """12 hex digits naming the result-affecting part of a config: every record carries the hash
    of the config that made it, so a directory resumed with --run.force shows what it mixes."""
    def affecting(d: dict, prefix: str = "") -> dict:
        return {k: affecting(v, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in d.items()
                if f"{prefix}{k}" not in RESUME_FREE_KEYS and (prefix or k not in RESUME_FREE_SECTIONS)}
    return hashlib.sha256(json.dumps(affecting(to_dict(cfg)), sort_keys=True).encode()).hexdigest()[:12]


def result_affecting_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring RESUME_FREE_KEYS."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += result_affecting_diff(va, vb, dotted + ".")
        elif va != vb and dotted not in RESUME_FREE_KEYS and dotted.split(".")[0] not in RESUME_FREE_SECTIONS:
            diffs.append(dotted)
    return diffs
