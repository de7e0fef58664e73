"""The conventions evaluators expect of a command line: help on stdout with a title and a line
per key, answers to help and config mistakes before torch is imported, a quiet default run,
-q and -v."""
import subprocess
import sys

import pytest

from rescue_eval.config import LEGACY_FLAGS, Config, parser
from tests.helpers import cli, config_keys

ARGS = ["--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false", "--data.limit", "2"]


@pytest.mark.cli
def test_help_titles_every_section_and_describes_every_key(cli_env):
    proc = cli(cli_env, "run", "--help")
    assert proc.stderr == "" and "<class" not in proc.stdout
    assert all(f"{old} (= {new})" in " ".join(proc.stdout.split()) for old, new in LEGACY_FLAGS.items())
    described = {action.dest: action.help for action in parser()._actions}
    for key in sorted(config_keys(Config)):
        assert described.get(key) and not described[key].startswith("%("), f"{key} has no description"
    for title in ("Dataset:", "Planner:", "Executor:", "Scorer:", "Judge:", "Verifier:", "How the job runs:",
                  "Placement:", "Distribution:"):
        assert any(line.startswith(title) for line in proc.stdout.splitlines()), title


@pytest.mark.cli
@pytest.mark.parametrize("argv", [["run", "--help"], ["run", "--output", "x", "--planner.max_nn", "3"],
                                  ["run", "--output", "x", "--data.name", "reasonseg"]])
def test_help_and_config_mistakes_answer_before_torch_is_imported(cli_env, argv):
    probe = ("import sys\nfrom rescue_eval.cli import main\ncode = main(sys.argv[1:])\n"
             "print('torch imported' if 'torch' in sys.modules else 'torch not imported', code)")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], env=cli_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] in ("torch not imported 0", "torch not imported 2")


@pytest.mark.cli
def test_a_default_run_is_quiet_and_q_and_v_move_the_level(cli_env, tmp_path):
    quiet = cli(cli_env, "run", "--output", str(tmp_path / "a"), *ARGS)
    for noise in ("Loading weights", "bos_token_id", "as a ProcessGroup", "Writing model shards", "srun"):
        assert noise not in quiet.stderr, noise
    assert "samples in its shard" in quiet.stderr
    assert "samples in its shard" not in cli(cli_env, "-q", "run", "--output", str(tmp_path / "b"), *ARGS).stderr
    assert "DEBUG" in cli(cli_env, "run", "-v", "--output", str(tmp_path / "c"), *ARGS).stderr


@pytest.mark.cli
@pytest.mark.parametrize("args, sentence", [
    (["--executor.checkpoint", "tiny:siglip2"], "executor.checkpoint tiny:siglip2 is a siglip checkpoint"),
    (["--scorer.checkpoint", "tiny:qwen3-vl"], "scorer.checkpoint tiny:qwen3-vl is a qwen3_vl checkpoint"),
    (["--planner.checkpoint", "/nonexistent/qwen"], "planner.checkpoint /nonexistent/qwen does not exist"),
    (["--judge.checkpoint", "/tmp"], "judge.checkpoint /tmp is not a checkpoint folder"),
    (["--executor.device", "gpu"], "executor.device is 'gpu'"),
])
def test_checkpoint_and_device_mistakes_are_one_sentence(cli_env, tmp_path, args, sentence):
    proc = cli(cli_env, "run", "--output", str(tmp_path / "out"), *ARGS, *args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"rescue-eval: error: {sentence}")
