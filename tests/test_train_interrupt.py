"""Ctrl-C in msmtfn-train and msmtfn-sweep: one line saying what is kept and the exact command that continues
(exit status 130, as msmtfn-extract), not click's bare "Aborted!"; the command it names then works."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from synthetic import write_synthetic_store

import train.loop as loop
from train.cli import main as train_cli
from train.loop import _interrupt_note
from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "--device",
    "cpu",
    "--threads",
    "1",
    "--epochs",
    "4",
    "--patience",
    "10",
    "--d-model",
    "16",
    "--heads",
    "2",
    "--ffn",
    "32",
    "--gru-hidden",
    "8",
    "--head-hidden",
    "16",
    "--cross-layers",
    "1",
    "--bottleneck-layers",
    "1",
    "--no-plots",
    "-q",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("interrupt") / "s.zarr",
        calls=24,
        segments_per_call=(1, 3),
        audio_frames=8,
        text_tokens=5,
        seed=3,
    )


def _ctrl_c_after_saving_epoch(monkeypatch, k: int) -> None:
    """Ctrl-C right after epoch ``k``'s state is written, as a user pressing it during epoch k + 1 would."""
    real = loop.save_train_state

    def save_then_interrupt(path, *, epoch, **kw):
        real(path, epoch=epoch, **kw)
        if epoch == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", save_then_interrupt)


def _interrupted_line(output: str) -> str:
    assert "Aborted!" not in output and "Traceback" not in output, output
    (line,) = [ln for ln in output.splitlines() if ln.startswith("interrupted")]
    return line


def test_ctrl_c_names_the_real_run_folder_and_resume_with_it_finishes_the_run(
    store, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no --out: the run folder is the default runs/<dataset>/<time>-...
    _ctrl_c_after_saving_epoch(monkeypatch, 2)
    r = CliRunner().invoke(train_cli, ["--cache", str(store.path), *TINY])
    assert r.exit_code == 130, r.output
    line = _interrupted_line(r.output)
    m = re.fullmatch(
        r"interrupted: the last finished epoch is saved; resume with: msmtfn-train --resume (\S+)",
        line,
    )
    assert m, line
    run_dir = Path(m.group(1))
    assert run_dir.parent == Path("runs/synthetic") and (run_dir / "train_state.pt").is_file()
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    words = shlex.split(line.split("resume with: ", 1)[1])
    assert words[0] == "msmtfn-train"
    done = CliRunner().invoke(train_cli, [*words[1:], "-q", "--json"])
    assert done.exit_code == 0, done.output
    metrics = json.loads(done.output)
    assert metrics["resumed_after_epoch"] == 2 and metrics["epochs_run"] == 4
    assert Path(metrics["run_dir"]) == run_dir


def test_ctrl_c_in_the_first_epoch_and_before_training_say_so(store, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_forward", interrupt)  # during the first training step
    r = CliRunner().invoke(train_cli, ["--cache", str(store.path), "--out", str(out), *TINY])
    assert r.exit_code == 130
    assert _interrupted_line(r.output) == (
        f"interrupted in the first epoch: nothing to keep yet; resume with: "
        f"msmtfn-train --resume {out} starts it again"
    )
    monkeypatch.undo()
    again = CliRunner().invoke(train_cli, ["--resume", str(out), "-q", "--json"])
    assert again.exit_code == 0, again.output
    assert "resumed_after_epoch" not in json.loads(
        again.output
    )  # trained from epoch 1, with the run's settings

    monkeypatch.setattr(loop, "open_cache", interrupt)  # while the cache opens: nothing written yet
    r = CliRunner().invoke(
        train_cli, ["--cache", str(store.path), "--out", str(tmp_path / "never"), *TINY]
    )
    assert r.exit_code == 130
    assert _interrupted_line(r.output).startswith(
        "interrupted before the first epoch started; nothing was written"
    )
    assert not (tmp_path / "never").exists()


def test_interrupt_notes_say_what_is_kept(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert _interrupt_note(tmp_path, 3, 3, 1) == (
        "interrupted: the last finished epoch is saved; resume with: "
        f"msmtfn-train --resume {tmp_path}"
    )
    assert _interrupt_note(tmp_path, 5, 7, 5).startswith(
        "interrupted: epoch 5 of 7 finished is saved (states every 5 epochs); resume with:"
    )
    assert _interrupt_note(tmp_path, 0, 4, 0).startswith(
        "interrupted: no epoch is saved (--state-every 0)"
    )
    assert _interrupt_note(None, 0, 0, 1).startswith("interrupted before the first epoch started")


def test_ctrl_c_in_a_sweep_names_the_command_that_resumes_it(store, tmp_path, monkeypatch):
    grid = tmp_path / "g.toml"
    grid.write_text(
        tiny_sweep_base(epochs=2) + '\n[[trial]]\nname = "a"\n\n[[trial]]\nname = "b"\nlr = 0.001\n'
    )
    out = tmp_path / "sw"
    _ctrl_c_after_saving_epoch(monkeypatch, 1)  # the first trial's first epoch
    argv = [
        "--cache",
        str(store.path),
        "--grid",
        str(grid),
        "--out",
        str(out),
        "--seeds",
        "1",
        "--device",
        "cpu",
        "--set",
        "patience=5",
        "-q",
    ]
    r = CliRunner().invoke(sweep_cli, argv)
    assert r.exit_code == 130, r.output
    line = _interrupted_line(r.output)
    prefix = (
        "interrupted: finished trials are kept and the trial in flight continues from its last saved epoch; "
        "resume with: "
    )
    assert line.startswith(prefix), line
    words = shlex.split(line[len(prefix) :])
    assert words == [
        "msmtfn-sweep",
        "--cache",
        str(store.path),
        "--grid",
        str(grid),
        "--out",
        str(out),
        "--seeds",
        "1",
        "--set",
        "patience=5",
        "--resume",
    ]
    assert (out / "trials" / "a" / "s0" / "train_state.pt").is_file()
    monkeypatch.undo()
    done = CliRunner().invoke(sweep_cli, [*words[1:], "--device", "cpu", "-q", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["trials_run"] == 2 and not summary["failed"] and summary["best"]
    first = json.loads((out / "trials" / "a" / "s0" / "metrics.json").read_text())
    assert first["resumed_after_epoch"] == 1
