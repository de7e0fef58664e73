"""Faults that must stop the job in one clear sentence, and keys that must never be written."""
import os
import shutil

from test_e2e import cli, records


def test_strict_stops_at_the_first_bad_sample(tmp_path):
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache")}
    from datamodules.demo import ensure_demo_set

    demo = ensure_demo_set(tmp_path / "demo")
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    (data / "val" / "demo_05.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    common = ["--data.name", "reasonseg", "--data.root", str(data), "--max_n", "1", "--mode", "heuristic",
              "--executor.backend", "grabcut", "--planner.backend", "gt_box", "--run.progress", "false",
              "--wandb.enabled", "false", "--run.parallel_requests", "1"]
    strict = cli(env, "run", "--output", str(tmp_path / "strict"), *common, "--run.strict", "true", check=False)
    assert strict.returncode == 2 and "demo_05" in strict.stderr and "--run.strict" in strict.stderr
    assert "demo_05" not in {r["id"] for r in records(tmp_path / "strict")}

    cli(env, "run", "--output", str(tmp_path / "lenient"), *common)  # without strict: scored, counted
    recs = {r["id"]: r for r in records(tmp_path / "lenient")}
    assert len(recs) == 16 and recs["demo_05"]["failure"] == "bad_input"


def test_keys_in_the_environment_never_reach_an_output_file(tmp_path):
    """Fake keys for every service the harness may talk to; W&B forced offline (with a key set,
    auto would go online). Every file written under OUT, W&B's included, is searched."""
    keys = {"OPENAI_API_KEY": "sk-FAKE-openai-41c2", "WANDB_API_KEY": "FAKEwandb0123456789abcdef0123456789abcdef",
            "HF_TOKEN": "hf_FAKEtoken9f8e7d"}
    env = {**os.environ, "RESCUE_EVAL_CACHE": str(tmp_path / "cache"), **keys}
    out = tmp_path / "out"
    cli(env, "run", "--output", str(out), "--max_n", "2", "--fraction", "0.25", "--wandb.mode", "offline",
        "--run.progress", "false")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, key in keys.items():
            assert key.encode() not in data, f"{name} found in {path}"
