"""How long does ``--help`` take for each console script? (issue 13: < 1 s on 2 cores)

    python bench/cli_startup.py                      # this checkout (PYTHONPATH is set to it)
    python bench/cli_startup.py --tree /work/main    # another checkout, e.g. the code before a change
    python bench/cli_startup.py --repeat 7

Each command runs as its console script does (import the module, call ``main`` with ``--help``) in a fresh
interpreter; the median of ``--repeat`` runs after one warm-up run (so the OS file cache is warm, as it is for a
user typing the command twice). It also lists which heavy libraries the bare import pulled in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {  # console script -> entry point (setup.cfg [options.entry_points])
    "msmtfn-extract": "extract.cli:main",
    "msmtfn-train": "train.cli:main",
    "msmtfn-sweep": "train.sweep_cli:main",
    "msmtfn-predict": "predict.cli:main",
    "msmtfn-serve": "predict.serve_cli:main",
    "msmtfn-demo": "predict.demo:main",
}
HEAVY = (
    "torch",
    "transformers",
    "dask",
    "distributed",
    "zarr",
    "numpy",
    "sklearn",
    "matplotlib",
    "soundfile",
)

_RUN = (
    "import sys; sys.argv = [{name!r}, '--help']\n"
    "from {module} import {func} as main\n"
    "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
)
_IMPORTS = (
    "import sys, json; import {module}\n"
    "print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
)


def time_help(name: str, entry: str, env: dict, repeat: int, tree: str) -> tuple[float, list[str]]:
    module, func = entry.split(":")
    code = _RUN.format(name=name, module=module, func=func)
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        # cwd = the tree: ``python -c`` puts the working folder first on sys.path
        subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL
        )
        if i:  # the first run only warms the file cache
            times.append(time.perf_counter() - t0)
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS.format(module=module, heavy=HEAVY)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return statistics.median(times), json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--tree", default=str(Path(__file__).resolve().parents[1]), help="checkout to measure"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": args.tree}
    rows = {}
    for name, entry in COMMANDS.items():
        median, heavy = time_help(name, entry, env, args.repeat, args.tree)
        rows[name] = {"help_s": round(median, 2), "imports": heavy}
        if not args.json:
            print(f"{name:<16} {median:6.2f} s   imports: {', '.join(heavy) or '-'}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
