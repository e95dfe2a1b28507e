"""Training crash-safety: a run killed with SIGKILL and resumed ends exactly like an uninterrupted one (CPU), a
finished run is not retrained, and damaged or mismatched checkpoints are refused with one clear line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from synthetic import write_synthetic_store

from train.checkpoint import STATE, CheckpointError, load_run
from train.cli import main as train_cli
from train.config import TrainConfig
from train.data import TrainError
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(
    d_model=32,
    heads=4,
    ffn=64,
    gru_hidden=16,
    head_hidden=32,
    cross_layers=1,
    bottleneck_layers=1,
    dropout=0.2,
    progress=False,
    device="cpu",
    plots=False,
    threads=1,
    epochs=6,
    patience=100,
    lr=1e-3,
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("resume") / "s.zarr",
        calls=60,
        segments_per_call=(1, 4),
        audio_frames=12,
        text_tokens=6,
        seed=5,
    )


def _cfg(store, out, **kw) -> TrainConfig:
    return TrainConfig(cache=str(store.path), out=str(out), **{**SMALL, **kw})


def _history(run_dir) -> list[dict]:
    rows = list(csv.DictReader(open(Path(run_dir) / "history.csv")))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _same_run(a: dict, b: dict) -> None:
    assert (
        Path(a["run_dir"], "model.safetensors").read_bytes()
        == Path(b["run_dir"], "model.safetensors").read_bytes()
    )
    assert a["val"] == b["val"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert _history(a["run_dir"]) == _history(b["run_dir"])


def _argv(cfg: TrainConfig) -> list[str]:
    return [
        "--cache",
        cfg.cache,
        "--out",
        cfg.out,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--epochs",
        str(cfg.epochs),
        "--patience",
        str(cfg.patience),
        "--lr",
        str(cfg.lr),
        "--d-model",
        "32",
        "--heads",
        "4",
        "--ffn",
        "64",
        "--gru-hidden",
        "16",
        "--head-hidden",
        "32",
        "--cross-layers",
        "1",
        "--bottleneck-layers",
        "1",
        "--dropout",
        "0.2",
        "--no-plots",
        "-q",
    ]


def test_sigkill_mid_training_then_resume_equals_uninterrupted(store, tmp_path):
    ref = fit(_cfg(store, tmp_path / "ref"))
    cfg = _cfg(store, tmp_path / "killed")
    state = Path(cfg.out) / STATE
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = "import sys; from train.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *_argv(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (
            state.is_file() and len(_history(cfg.out)) >= 2
        ):  # at least two epochs done, the third under way
            break
        time.sleep(0.02)
    assert proc.poll() is None, (
        f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (Path(cfg.out) / "metrics.json").exists()
    done_before = len(_history(cfg.out))
    assert 2 <= done_before < cfg.epochs

    result = CliRunner().invoke(train_cli, ["--resume", cfg.out, "--threads", "1", "-q", "--json"])
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.output)
    assert resumed["resumed_after_epoch"] >= done_before - 1
    _same_run(resumed, ref)
    assert not state.exists()  # removed once the run finished


def test_interrupt_after_each_epoch_resumes_identically(store, tmp_path, monkeypatch):
    """Stop the run (as Ctrl-C would) right after epoch k's state is saved, for several k; resume; compare."""
    import train.loop as loop

    ref = fit(_cfg(store, tmp_path / "ref", augment_variants=()))
    real_save = loop.save_train_state
    for k in (1, 3, 5):

        def stop_after(path, *, epoch, k=k, **kw):
            real_save(path, epoch=epoch, **kw)
            if epoch == k:
                raise KeyboardInterrupt

        monkeypatch.setattr(loop, "save_train_state", stop_after)
        cfg = _cfg(store, tmp_path / f"stop{k}")
        with pytest.raises(KeyboardInterrupt):
            fit(cfg)
        monkeypatch.setattr(loop, "save_train_state", real_save)
        resumed = fit(cfg, resume=True)
        assert resumed["resumed_after_epoch"] == k
        _same_run(resumed, ref)


def test_early_stopped_state_resumes_to_the_same_end(store, tmp_path, monkeypatch):
    import train.loop as loop

    kw = dict(patience=1, epochs=8, lr=3e-2)
    ref = fit(_cfg(store, tmp_path / "ref", **kw))
    assert ref["epochs_run"] < 8, "the setting should stop early"
    real_save = loop.save_train_state

    def crash_at_stop(path, **state):
        real_save(path, **state)
        if state["stopped"]:
            raise KeyboardInterrupt  # killed after the stop was decided, before the test evaluation

    monkeypatch.setattr(loop, "save_train_state", crash_at_stop)
    cfg = _cfg(store, tmp_path / "run", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(loop, "save_train_state", real_save)
    _same_run(fit(cfg, resume=True), ref)


@pytest.mark.parametrize("every", [3, 0])
def test_sparser_states_still_resume_to_the_same_end(store, tmp_path, monkeypatch, every):
    """--state-every 3 saves on epochs 3 and 6 and on every improvement; 0 saves none, so a resume starts over."""
    import train.loop as loop

    ref = fit(_cfg(store, tmp_path / "ref"))
    saved, real_save, real_history = [], loop.save_train_state, loop._write_history

    def record(path, *, epoch, **kw):
        saved.append((epoch, kw["best_epoch"]))
        real_save(path, epoch=epoch, **kw)

    def crash_in_epoch_5(path, history):
        real_history(path, history)
        if len(history) == 5:
            raise KeyboardInterrupt  # after epoch 5's best weights, before any state of epoch 5

    monkeypatch.setattr(loop, "save_train_state", record)
    monkeypatch.setattr(loop, "_write_history", crash_in_epoch_5)
    cfg = _cfg(store, tmp_path / "run", state_every=every)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    if every:  # epoch 3 by the count, others only when they improved (so the state matches the weights file)
        assert 3 in [e for e, _ in saved] and all(e == 3 or best == e for e, best in saved), saved
    else:
        assert saved == [] and not (Path(cfg.out) / STATE).exists()
    last = max(e for e, _ in saved) if every else None
    monkeypatch.setattr(loop, "_write_history", real_history)
    resumed = fit(cfg, resume=True)
    assert resumed.get("resumed_after_epoch") == last
    _same_run(resumed, ref)


def test_finished_run_is_not_retrained(store, tmp_path):
    cfg = _cfg(store, tmp_path / "run", epochs=2)
    first = fit(cfg)
    mtime = Path(first["run_dir"], "model.safetensors").stat().st_mtime_ns
    again = fit(cfg, resume=True)
    assert again["resumed"] == "finished" and again["val"] == first["val"]
    assert Path(first["run_dir"], "model.safetensors").stat().st_mtime_ns == mtime


def test_resume_refuses_other_settings_or_cache(store, tmp_path, monkeypatch):
    import train.loop as loop

    cfg = _cfg(store, tmp_path / "run", epochs=3)
    real_save = loop.save_train_state

    def stop(path, **state):
        real_save(path, **state)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", stop)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(loop, "save_train_state", real_save)
    with pytest.raises(
        TrainError, match=r"cannot resume with different settings \(lr: 0.001 → 0.002\)"
    ):
        fit(cfg.with_(lr=2e-3), resume=True)
    other = write_synthetic_store(
        tmp_path / "other.zarr",
        calls=20,
        segments_per_call=(1, 2),
        audio_frames=12,
        text_tokens=6,
        seed=9,
    )
    with pytest.raises(TrainError, match="trained on a cache with fingerprint"):
        fit(cfg.with_(cache=str(other.path)), resume=True)
    # settings that do not change the numbers may differ
    assert fit(cfg.with_(plots=True, max_cache_gb=1.0), resume=True)["resumed_after_epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "pickle"])
def test_damaged_training_state_is_refused_clearly(store, tmp_path, monkeypatch, damage):
    import train.loop as loop

    cfg = _cfg(store, tmp_path / "run", epochs=3)
    real_save = loop.save_train_state

    def stop(path, **state):
        real_save(path, **state)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", stop)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(loop, "save_train_state", real_save)
    state = Path(cfg.out) / STATE
    data = state.read_bytes()
    if damage == "truncate":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        state.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        state.write_bytes(b"")
    else:  # a pickle that would run code if loaded without weights_only
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        state.write_bytes(pickle.dumps({"format": 1, "x": Evil()}))
    with pytest.raises(
        CheckpointError, match=r"train_state.pt: not a readable training state .*delete it"
    ):
        fit(cfg, resume=True)
    assert not (tmp_path / "pwned").exists()
    result = CliRunner().invoke(train_cli, ["--resume", cfg.out, "-q"])
    assert result.exit_code == 1 and "not a readable training state" in result.output


def test_damaged_best_weights_are_refused_clearly(store, tmp_path):
    run = fit(_cfg(store, tmp_path / "run", epochs=1))
    w = Path(run["run_dir"], "model.safetensors")
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable checkpoint"):
        load_run(run["run_dir"])
    torch.manual_seed(0)  # keep the global RNG tidy for later tests


def test_a_fresh_run_never_writes_over_another_run(store, tmp_path):
    """Without --resume, an --out folder that holds a run (finished, or killed with a state) is refused and left
    byte for byte; --overwrite replaces it; --resume and --overwrite together are bad usage."""
    out = tmp_path / "run"
    argv = _argv(_cfg(store, out, epochs=2))
    first = CliRunner().invoke(train_cli, argv)
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"metrics.json", "config.json", "model.safetensors"} <= set(before)
    again = CliRunner().invoke(train_cli, [*argv, "--seed", "1"])
    assert again.exit_code == 1
    assert f"{out}: holds a training run already" in again.output and "--overwrite" in again.output
    assert "Traceback" not in again.output and len(again.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a killed run's resumable state counts too: nothing but the state is needed to refuse
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / STATE).write_bytes(b"state")
    r = CliRunner().invoke(train_cli, _argv(_cfg(store, killed, epochs=2)))
    assert r.exit_code == 1 and STATE in r.output and (killed / STATE).read_bytes() == b"state"
    # --overwrite refused by a later start check (no such augmentation variant): the old run stays whole
    refused = CliRunner().invoke(
        train_cli, [*argv, "--seed", "1", "--overwrite", "--augment-variants", "noise"]
    )
    assert refused.exit_code == 1 and "noise" in refused.output, refused.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    replaced = CliRunner().invoke(train_cli, [*argv, "--seed", "1", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    both = CliRunner().invoke(train_cli, ["--resume", str(out), "--overwrite"])
    assert both.exit_code == 2 and "--overwrite" in both.output
    # an empty folder made beforehand is not a run
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fit(_cfg(store, empty, epochs=1))["best_epoch"] == 1


def test_a_run_refused_at_start_leaves_no_folder(store, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainError, match="noise"):  # this cache holds no augmentation variants
        fit(_cfg(store, out, augment_variants=("noise",), plots=True))
    assert not out.exists()
