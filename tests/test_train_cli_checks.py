"""msmtfn-train and msmtfn-sweep check the paths they are given before importing torch (one line at once, not
seconds later), and the torch thread count by default follows the core count (train.config.default_threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import default_threads, effective_threads

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "zarr", "sklearn", "matplotlib")


def _run(module: str, args: list[str], cwd: Path) -> tuple[int, str, list[str]]:
    """(exit status, output, heavy modules imported) of ``module.main(args)`` in a fresh interpreter."""
    code = (
        f"import sys\nfrom {module} import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    code = e.code\n"
        f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    loaded = p.stdout.strip().splitlines()[-1].removeprefix("LOADED").strip()
    return p.returncode, p.stdout + p.stderr, [m for m in loaded.split(",") if m]


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln and not ln.startswith("LOADED")]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


GRID = "[base]\nepochs = 1\n"


@pytest.mark.parametrize(
    "module, args, status, says",
    [
        (
            "train.cli",
            ["--cache", "cache/nope.zarr"],
            1,
            "Error: cache/nope.zarr: no cache store here (run msmtfn-extract to build one)",
        ),
        (
            "train.cli",
            ["--config", "c.toml"],
            1,
            "Error: cache/gone.zarr: no cache store here (run msmtfn-extract to build one)",
        ),
        (
            "train.cli",
            ["--resume", "runs/nope"],
            1,
            "Error: --resume runs/nope: no such run folder",
        ),
        (
            "train.cli",
            ["--resume", "empty"],
            1,
            "Error: --resume empty: not a msmtfn-train run folder (no config.json)",
        ),
        (
            "train.sweep_cli",
            ["--cache", "cache/nope.zarr", "--grid", "g.toml"],
            1,
            "Error: cache/nope.zarr: no cache store here (run msmtfn-extract to build one)",
        ),
        (
            "train.sweep_cli",
            ["--cache", "cache/nope.zarr", "--grid", "missing.toml"],
            2,
            "Error: missing.toml: no such grid file; give a TOML file or a preset (paper-ablation, bottleneck-lr, paper-capacity, learning-curve)",
        ),
        (
            "train.sweep_cli",
            ["--cache", "c.zarr", "--grid", "g.toml", "--set", "epochs=zero"],
            2,
            "Error: --set: epochs: expected a whole number",
        ),
    ],
    ids=[
        "train-cache",
        "train-config-cache",
        "train-resume-missing",
        "train-resume-not-a-run",
        "sweep-cache",
        "sweep-grid",
        "sweep-set",
    ],
)
def test_a_wrong_path_is_one_line_before_torch_is_imported(tmp_path, module, args, status, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "g.toml").write_text(GRID)
    (tmp_path / "c.toml").write_text('cache = "cache/gone.zarr"\nepochs = 2\n')
    code, output, loaded = _run(module, args, tmp_path)
    line = _one_error_line(output)
    assert line.startswith(says), line
    assert code == status, output
    assert loaded == [], f"{module} {' '.join(args)} imported {loaded} before answering"


def test_default_threads_follow_the_core_count():
    assert [default_threads(c) for c in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 8, 8]
    assert effective_threads(3) == 3 and effective_threads(0) == default_threads()


def test_a_cpu_run_uses_the_default_thread_count(tmp_path, monkeypatch):
    import torch
    from synthetic import write_synthetic_store

    from train.config import TrainConfig
    from train.loop import TrainingRun

    store = write_synthetic_store(tmp_path / "s.zarr", calls=8, audio_frames=4, text_tokens=4)
    before = torch.get_num_threads()
    monkeypatch.setattr(
        "train.config.available_cores", lambda: 8
    )  # a machine of 8 cores: 4 threads
    try:
        torch.set_num_threads(1)
        TrainingRun(
            TrainConfig(
                cache=str(store.path),
                out=str(tmp_path / "r"),
                device="cpu",
                progress=False,
                plots=False,
                d_model=8,
                heads=2,
            )
        ).start()
        assert torch.get_num_threads() == 4
        TrainingRun(
            TrainConfig(
                cache=str(store.path),
                out=str(tmp_path / "r2"),
                device="cpu",
                progress=False,
                plots=False,
                d_model=8,
                heads=2,
                threads=1,
            )
        ).start()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
