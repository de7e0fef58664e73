#!/usr/bin/env bash
# Wheels for tests/gpu/run.sh on a GPU machine that has torch but no package registry (Python
# 3.12, x86-64): the harness's own dependencies that such images usually lack. Run it where pip
# reaches a registry; it fills .whl/ (keep .whl/ out of git: .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/../.."
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "transformers==5.24.0" "jsonargparse>=4.35" "pycocotools>=2.0.8" "xgrammar>=0.1.25,<0.3" \
    "typeshed-client" "docstring-parser" "apache-tvm-ffi" "pydantic" "pydantic-core" "annotated-types" "typing-inspection" "typing-extensions"
ls .whl
