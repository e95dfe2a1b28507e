"""``--help`` must answer at once (issue 13: < 1 s on 2 cores; measured by bench/cli_startup.py): importing a
command's module loads no heavy library. Each check runs in a fresh interpreter, as the console script does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_MODULES = (
    "extract.cli",
    "train.cli",
    "train.sweep_cli",
    "predict.cli",
    "predict.serve_cli",
    "predict.demo",
)
HEAVY = ("torch", "transformers", "dask", "distributed", "zarr", "sklearn", "matplotlib", "fastapi")


@pytest.mark.parametrize("module", CLI_MODULES)
def test_cli_module_imports_no_heavy_library(module):
    code = f"import sys, {module}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"import {module} loads {out.stdout.strip()}"


def test_help_imports_no_heavy_library():
    """``msmtfn-extract run --help`` (the longest help: every CacheSettings option) stays light too."""
    code = (
        "import sys\nfrom extract.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "--loader-workers" in out.stdout and "--max-text-tokens" in out.stdout
    assert (
        "--num-workers" not in out.stdout and "--workers " not in out.stdout
    )  # old spellings: hidden aliases
    assert out.stdout.strip().endswith("LOADED"), out.stdout.splitlines()[-1]
