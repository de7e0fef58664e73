"""RESCue-eval: a distributed evaluation harness for referring and reasoning segmentation.

Layers, lowest first (a lower one never imports a higher one; tests/test_layers.py checks it):
`core` (types, protocols, masks, search, selection, metrics); `dist` (launch, placement,
serving, transports) and `io` (results, summary, report, tracking, progress), each on core
alone; `models` (role backends) and `datamodules` (datasets), on core alone; and the app on
top: `config`, `roles`, `outdir`, `job`, `segment`, `serve`, `cli`.
"""
from pathlib import Path as _Path

# In a source checkout, models/, datamodules/ and configs/ sit beside this folder; the wheel
# installs them inside it (pyproject's package-dir). Searching the checkout's root as well makes
# `rescue_eval.models` the same files either way, e.g. for `python -m rescue_eval` run there.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "models" / "__init__.py").is_file() and not (_Path(__file__).parent / "models").is_dir():
    __path__.append(str(_checkout))
