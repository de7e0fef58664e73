"""Every name the README tells users to type exists: configs, commands, dotted keys, launchers."""
import re
from pathlib import Path

import pytest

from rescue_eval.cli import COMMANDS
from rescue_eval.config import Config
from tests.helpers import config_keys

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CODE = "\n".join(re.findall(r"```.*?```", README, flags=re.S) + re.findall(r"`[^`\n]+`", README))


@pytest.mark.parametrize("path", sorted(set(re.findall(r"(?:configs|launchers)/[\w./-]+\.(?:yaml|sbatch|sh)", README))))
def test_named_files_exist(path):
    assert (ROOT / path).is_file()


def test_named_commands_exist():
    named = set(re.findall(r"rescue-eval (\w[\w-]*)", CODE))
    assert named <= set(COMMANDS), named - set(COMMANDS)


def test_named_keys_exist():
    keys = config_keys(Config)
    named = set(re.findall(r"--((?:data|planner|executor|scorer|judge|verifier|run|placement|dist|wandb)\.\w+)", README))
    named |= {f"{role}.{key}" for role in ("planner", "executor", "scorer", "judge")
              for key in re.findall(r"--<role>\.(\w+)", README)}
    assert named and named <= keys, sorted(named - keys)
