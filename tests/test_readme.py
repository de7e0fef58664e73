"""Every name the README tells users to type exists: configs, commands, dotted keys, launchers."""
import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from rescue_eval.cli import COMMANDS
from rescue_eval.config import Config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CODE = "\n".join(re.findall(r"```.*?```", README, flags=re.S) + re.findall(r"`[^`\n]+`", README))


def config_keys(cls=Config, prefix=""):
    keys = set()
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            keys |= config_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


@pytest.mark.parametrize("path", sorted(set(re.findall(r"(?:configs|launchers)/[\w./-]+\.(?:yaml|sbatch|sh)", README))))
def test_named_files_exist(path):
    assert (ROOT / path).is_file()


def test_named_commands_exist():
    named = set(re.findall(r"rescue-eval (\w[\w-]*)", CODE))
    assert named <= set(COMMANDS), named - set(COMMANDS)


def test_named_keys_exist():
    keys = config_keys()
    named = set(re.findall(r"--((?:data|planner|executor|scorer|judge|verifier|run|placement|dist|wandb)\.\w+)", README))
    named |= {f"{role}.{key}" for role in ("planner", "executor", "scorer", "judge")
              for key in re.findall(r"--<role>\.(\w+)", README)}
    assert named and named <= keys, sorted(named - keys)
