"""`rescue-eval`: run | report | build-tiny. The same entry point serves one process, torchrun
and SLURM."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from rescue_eval.core.errors import FatalError, UsageError

USAGE = """usage: rescue-eval COMMAND [options]

commands:
  run         evaluate a dataset:  rescue-eval run --config configs/demo.yaml --output OUT [--key.sub value ...]
  report      rebuild summary.json, report.md, plots and overlays from an output directory:  rescue-eval report OUT
  build-tiny  build the tiny offline checkpoints:  rescue-eval build-tiny [--out DIR] [--force]
  train-demo  train the demo's four twins on the demo world (about 14 min on 2 cores):  rescue-eval train-demo [--out DIR]
  segment     one image and one query to a mask:  rescue-eval segment IMAGE QUERY [--output DIR] [--key.sub value ...]
  download    fetch the checkpoints a config names into the Hugging Face cache:  rescue-eval download [--config FILE]
  serve       host an executor or scorer over HTTP:  rescue-eval serve executor|scorer [--port P] [--ROLE.key value ...]
  doctor      check a config before a long job:  rescue-eval doctor --config FILE [--output OUT] [--world N] [--key.sub value ...]

`rescue-eval run --help` lists every configuration key; `rescue-eval --version` prints the version;
-q before or after the command: warnings and errors only; -v: debug lines and the libraries' own output.
"""


def cmd_run(argv: list[str]) -> int:
    from rescue_eval import config
    from rescue_eval.datamodules import GENERATED
    from rescue_eval.suite import load_suite

    # help and configuration mistakes come before torch and the models are imported: in a second
    if any(a in ("-h", "--help") for a in argv):
        config.parser().print_help()
        return 0
    suite_arg = argparse.ArgumentParser(add_help=False)
    suite_arg.add_argument("--suite")
    known, argv = suite_arg.parse_known_args(argv)
    cfg, out = config.parse(argv)
    suite = load_suite(known.suite, cfg, out) if known.suite else None
    tiny = config.tiny_roles_note(cfg) if any(c.data.name not in GENERATED for c, _ in suite or [(cfg, out)]) else None
    if tiny and int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:  # before torch loads
        print(f"note: {tiny}", flush=True)

    from rescue_eval import job
    from rescue_eval.dist import launch
    from rescue_eval.failures import failure_line

    summary = job.run(cfg, out, suite)
    if launch.detect().rank != 0:  # rank 0 speaks for the job
        return 0
    if tiny:
        print(f"note: {tiny}")
    if suite:
        for row in summary["splits"]:
            print(json.dumps({k: row[k] for k in ("dataset", "split", "giou", "ciou", "oracle_iou", "n_samples",
                                                  "n_failed")}))
        print(f"wrote {out}/suite.json and {out}/suite.md")
        return 0
    print(json.dumps({k: summary[k] for k in ("giou", "ciou", "oracle_iou", "n_samples", "n_failed", "failures")}))
    print(failure_line(summary))
    print(f"wrote {out}/summary.json and {out}/report.md")
    return 0


def cmd_report(argv: list[str]) -> int:
    from rescue_eval import outdir

    p = argparse.ArgumentParser(prog="rescue-eval report", description=cmd_report.__doc__)
    p.add_argument("output", type=Path)
    p.add_argument("--data.root", dest="data_root", help="where the dataset is now, if it moved since the run")
    args = p.parse_args(argv)
    if (args.output / "suite.json").exists():
        from rescue_eval.suite import rebuild_suite

        if args.data_root:
            raise UsageError(f"{args.output} is a suite, whose splits have roots of their own: rebuild a moved "
                             f"split with `rescue-eval report {args.output}/SPLIT --data.root PATH`.")
        rebuild_suite(args.output)
        print(f"wrote {args.output}/suite.json and {args.output}/suite.md, and each split's report")
        return 0
    outdir.rebuild(args.output, args.data_root)
    print(f"wrote {args.output}/summary.json and {args.output}/report.md")
    return 0


def cmd_build_tiny(argv: list[str]) -> int:
    from rescue_eval.models import tiny

    p = argparse.ArgumentParser(prog="rescue-eval build-tiny",
                                description="Build tiny random-weight checkpoints of Qwen3-VL, Sam3Tracker and SigLIP2.")
    p.add_argument("--out", type=Path, default=None, help=f"folder (default {tiny.tiny_dir()})")
    p.add_argument("--force", action="store_true", help="rebuild existing checkpoints")
    args = p.parse_args(argv)
    for name in tiny.BUILDERS:
        print(f"{name}: {tiny.build(name, root=args.out, force=args.force)}")
    return 0


def cmd_train_demo(argv: list[str]) -> int:
    from rescue_eval.models.tiny import trained_dir

    p = argparse.ArgumentParser(prog="rescue-eval train-demo",
                                description="Train the demo's planner, executor, scorer and judge on the demo world.")
    p.add_argument("--out", type=Path, default=trained_dir(), help=f"folder (default {trained_dir()})")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every twin's training steps (a quick check: 0.01)")
    p.add_argument("--held-out", type=int, default=100, help="held-out scenes each model card is scored on")
    args = p.parse_args(argv)
    if args.scale <= 0 or args.held_out < 1:
        raise UsageError(f"--scale {args.scale} and --held-out {args.held_out}: give a positive factor of the "
                         "training steps (e.g. 1) and at least one held-out scene.")
    from rescue_eval.training import HELD_OUT, train_all

    held_out = range(HELD_OUT.start, HELD_OUT.start + args.held_out)
    for report in train_all(args.out, args.scale, held_out):
        print(f"{report.name}: {args.out / report.name} ({report.steps} steps, {report.seconds:.0f} s)")
    return 0


def cmd_segment(argv: list[str]) -> int:
    """rescue-eval segment IMAGE QUERY [--config ...] [--output DIR] [--key.sub value ...]"""
    from rescue_eval import config, segment

    if any(a in ("-h", "--help") for a in argv) or len(argv) < 2 or argv[0].startswith("-"):
        print("usage: rescue-eval segment IMAGE QUERY [--output DIR (default segment-out)] [--config FILE] "
              "[--key.sub value ...]\nwrites DIR/mask.png, DIR/overlay.png and DIR/candidates.json")
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    image, query, rest = argv[0], argv[1], argv[2:]
    if "--output" not in rest and not any(a.startswith("--output=") for a in rest):
        rest += ["--output", "segment-out"]
    cfg, out = config.parse(rest)
    if tiny := config.tiny_roles_note(cfg):
        print(f"note: {tiny}", flush=True)
    record = segment.segment_image(cfg, Path(image), query, out)
    chosen = record["sweep"].get(str(cfg.planner.max_n), {}).get("index")
    print(json.dumps({"query": query, "chosen_hypothesis": chosen, "candidates": len(record["candidates"]),
                      "failure": record["failure"], "note": record.get("note")}))
    for note in filter(None, (record.get("note"), tiny)):
        print(f"note: {note}")
    print(f"wrote {out}/mask.png, {out}/overlay.png and {out}/candidates.json")
    return 0


def cmd_download(argv: list[str]) -> int:
    from rescue_eval import config
    from rescue_eval.datamodules import SPLIT_BY
    from rescue_eval.models.download import download

    p = argparse.ArgumentParser(prog="rescue-eval download",
                                description="Fetch the checkpoints a config names into the Hugging Face cache "
                                            "(default: the original RESCue models of configs/reasonseg_8gpu.yaml).")
    p.add_argument("--config", default=str(config.shipped_config("reasonseg_8gpu.yaml")))
    p.add_argument("--data", choices=sorted(SPLIT_BY), help="instead of checkpoints: where this dataset's files "
                   "come from, and with --root, a check of the layout in place")
    p.add_argument("--root", help="with --data: the folder that holds (or will hold) refer_seg/")
    args = p.parse_args(argv)
    if args.data:
        return check_data(args.data, args.root)
    cfg, _ = config.parse(["--config", args.config, "--output", "unused", "--data.root", "unused"])
    for repo_id, path in download(config.role_sections(cfg)).items():
        print(f"{repo_id}: {path}")
    return 0


def check_data(name: str, root: str | None) -> int:
    """Where a refer dataset's parts come from; with a root, what of its layout is in place."""
    from rescue_eval.datamodules.refcoco import SOURCES, check_layout

    print(f"{name}: {SOURCES['refs'].format(name=name)}")
    print(f"{name}: {SOURCES['images']}")
    if root is None:
        return 0
    lines, complete = check_layout(root, name)
    print("\n".join(lines))
    return 0 if complete else 1


def cmd_serve(argv: list[str]) -> int:
    """rescue-eval serve executor|scorer [--host H] [--port P] [--config FILE] [--ROLE.key value ...]"""
    from rescue_eval import config, serve
    from rescue_eval.models import build_role
    from rescue_eval.models.http_roles import PROTOCOLS
    from rescue_eval.models.tiny import resolve_checkpoint

    p = argparse.ArgumentParser(prog="rescue-eval serve", description="Serve a local executor or scorer over "
                                "HTTP (the JSON role protocol of models/http_roles.py); other options are run "
                                "options such as --executor.checkpoint or --config.")
    p.add_argument("role", choices=sorted(PROTOCOLS))
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (no authentication)")
    p.add_argument("--port", type=int, default=None, help="default: the original service's (executor 8001, scorer 8003)")
    args, rest = p.parse_known_args(argv)
    cfg, _ = config.parse([*rest, "--output", "unused"])
    section = getattr(cfg, args.role)
    resolve_checkpoint(section.checkpoint)
    port = args.port if args.port is not None else urlsplit(PROTOCOLS[args.role].default_url).port
    serve.serve(build_role(args.role, section), args.role, args.host, port, max_batch=section.max_batch)
    return 0


def cmd_doctor(argv: list[str]) -> int:
    """rescue-eval doctor [--config FILE] [--output OUT] [--world N] [--key.sub value ...]"""
    from rescue_eval import config, doctor

    p = argparse.ArgumentParser(prog="rescue-eval doctor", description="Check a config before a long job: library "
                                "versions, GPUs against the placement, the dataset, each checkpoint's config and "
                                "processor (no weights), optional packages, the output directory and the transport. Other "
                                "options are run options such as --config or --data.root.")
    p.add_argument("--output", type=Path, default=None, help="the output directory the job will use")
    p.add_argument("--world", type=int, default=None, help="ranks the job will start (default: what the placement needs)")
    args, rest = p.parse_known_args(argv)
    run_args = [*rest, "--output", str(args.output or "unused")]
    try:
        cfg, _ = config.parse(run_args)
    except UsageError as exc:  # a missing data.root is reported as one of the checks
        if "data.root is empty" not in str(exc):
            raise
        cfg, _ = config.parse([*run_args, "--data.root", doctor.UNSET_ROOT])
    checks = doctor.run_checks(cfg, args.output, args.world or doctor.world_of(cfg))
    for check in checks:
        print(check.line())
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} ok, {failed} failed" + ("" if failed else ": ready to run"))
    return 1 if failed else 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "build-tiny": cmd_build_tiny, "train-demo": cmd_train_demo,
            "segment": cmd_segment,
            "download": cmd_download, "serve": cmd_serve, "doctor": cmd_doctor}


def set_verbosity(verbosity: int) -> None:
    """-q: warnings and errors only; default: the harness's own progress lines; -v: debug lines
    and the libraries' own output. Below -v the libraries are quiet (set before they are imported):
    no loading bars, no config advisories, no per-request HTTP lines, no deprecation notices."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbosity > 0:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("WANDB_QUIET", "true")  # W&B's essentials only: where the run is, how to sync it
    for library in ("httpx", "httpcore", "openai", "urllib3", "lightning", "lightning.fabric", "vllm"):
        logging.getLogger(library).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"You are using a Backend .* as a ProcessGroup")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        from importlib.metadata import version

        print(f"rescue-eval {version('rescue-eval')}")
        return 0
    verbosity = sum(a in ("-v", "--verbose") for a in argv) - sum(a in ("-q", "--quiet") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose", "-q", "--quiet")]
    set_verbosity(verbosity)
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UsageError as exc:  # configuration and input mistakes: one sentence, no traceback
        print(f"rescue-eval: error: {exc}", file=sys.stderr)
        return 2
    except FatalError as exc:  # the job cannot go on (a rank gone, a disk full); results so far are kept
        print(f"rescue-eval: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":  # every rank gets the signal
            print("rescue-eval: interrupted; every finished sample is kept: rerun the same command to resume.",
                  file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # now: samples in flight would hold the exit until their model calls return
