"""`rescue-eval doctor`: one line per check, each failure with its fix, non-zero when any fails."""
import pytest

from rescue_eval.cli import main
from rescue_eval.models import tiny

pytestmark = pytest.mark.cli


def doctor(capsys, *args) -> tuple[int, dict[str, str]]:
    status = main(["doctor", *args])
    lines = capsys.readouterr().out.splitlines()
    checks = {line[6:].split(":")[0]: line for line in lines[:-1]}
    assert lines[-1].startswith(f"{sum(v.startswith('ok') for v in checks.values())} ok")
    return status, checks


def test_the_demo_in_both_layouts_is_ready(capsys, tmp_path, monkeypatch):
    for name in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME"):
        monkeypatch.delenv(name, raising=False)
    status, checks = doctor(capsys, "--config", "configs/demo_dedicated.yaml", "--output", str(tmp_path / "out"))
    assert status == 0 and all(line.startswith("ok") for line in checks.values())
    assert {"python", "transformers", "gpus", "data demo/val", "output", "tcp"} <= set(checks)
    assert checks["tcp"] == "ok    tcp: role calls listen on 127.0.0.1"  # MASTER_ADDR unset: a job on this machine


def test_the_8gpu_config_on_this_machine_names_every_missing_piece(capsys, tmp_path):
    local = str(tiny.build("qwen3-vl"))  # a checkpoint folder that is there: its config and processor load
    status, checks = doctor(capsys, "--config", "configs/reasonseg_8gpu.yaml", "--output", str(tmp_path / "out"),
                            "--planner.checkpoint", local, "--dist.transport", "rpc")
    assert status == 1
    assert checks["gpus"].startswith("FAIL") and "8 needed" in checks["gpus"]
    assert checks["judge backend vllm"].startswith("FAIL") and "pip install 'rescue-eval[vllm]'" in checks["judge backend vllm"]
    assert checks["data reasonseg/val"].startswith("FAIL") and "--data.root" in checks["data reasonseg/val"]
    assert checks[f"planner checkpoint {local}"].startswith("ok")
    failing = checks["executor checkpoint facebook/sam3"]
    assert failing.startswith("FAIL") and "rescue-eval download" in failing
    assert checks["output"].startswith("ok") and checks["rpc"].startswith("ok")


def test_an_interface_tcp_cannot_listen_on_fails_naming_the_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "no-such-interface0")
    status, checks = doctor(capsys, "--config", "configs/demo_dedicated.yaml", "--output", str(tmp_path / "out"))
    assert status == 1
    assert checks["tcp"].startswith("FAIL") and "set GLOO_SOCKET_IFNAME" in checks["tcp"]
