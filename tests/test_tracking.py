"""--tracking mlflow|tensorboard: what a run, a sweep and a search leave in the tracker, read back
through MLflow's own client and TensorBoard's event reader; a tracker that fails is one warning and
the run goes on."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from synthetic import write_synthetic_store

from train.cli import main as train_cli
from train.sweep_cli import main as sweep_cli
from train.tracking import MLflowRun, TrackingOptions, open_run

mlflow = pytest.importorskip("mlflow", reason='the tracking extra: pip install -e ".[tracking]"')
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "--d-model", "16", "--heads", "2", "--ffn", "32", "--gru-hidden", "8", "--head-hidden", "16",
    "--cross-layers", "1", "--bottleneck-layers", "1", "--threads", "1", "-q",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("tracking") / "c.zarr",
        calls=24,
        segments_per_call=(1, 2),
        audio_frames=8,
        text_tokens=5,
        seed=4,
    ).path


def _client(uri: str):
    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str = "msmtfn"):
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=100)


def test_a_training_run_in_mlflow_params_epochs_figures_files_and_tags(cache, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    args = [*TINY, "--cache", str(cache), "--epochs", "3", "--patience", "9", "--out", str(out)]
    r = CliRunner().invoke(train_cli, [*args, "--tracking", "mlflow", "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    client, runs = _runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    p = run.data.params
    assert float(p["lr"]) > 0
    assert p["epochs"] == "3" and p["d_model"] == "16" and p["cache_path"] == str(cache)
    assert len(p["cache_fingerprint"]) >= 8
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
    figures = run.data.metrics
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert figures["best_epoch"] == metrics["best_epoch"]
    assert figures["test/2/accuracy"] == pytest.approx(metrics["test"]["2"]["accuracy"])
    assert figures["valid/2/macro_f1"] == pytest.approx(metrics["val"]["2"]["macro_f1"])
    assert figures["test/2/accuracy_ci_low"] == pytest.approx(
        metrics["test"]["2"]["ci95"]["accuracy"][0]
    )
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.json", "history.csv", "predictions_test.csv"} <= files
    assert "plots" in files
    tags = run.data.tags
    assert tags["msmtfn.version"] and tags["msmtfn.run_dir"] == str(out.resolve())
    assert tags["msmtfn.dataset"]
    # the artifacts lie beside the database, not in ./mlruns of wherever the command ran
    assert (tmp_path / "mlflow-artifacts").is_dir()
    # --resume of the finished run: the same tracked run, nothing new
    r = CliRunner().invoke(train_cli, ["--resume", str(out), "-q", "--tracking", "mlflow",
                                       "--tracking-uri", uri])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(_runs(uri)[1]) == 1


def test_tensorboard_event_files_hold_the_same_scalars(cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [*TINY, "--cache", str(cache), "--epochs", "2", "--out", str(out)]
    r = CliRunner().invoke(train_cli, [*args, "--tracking", "tensorboard"])
    assert r.exit_code == 0, r.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "val_loss", "val_2_accuracy", "test/2/accuracy"} <= set(scalars)
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2]


def test_a_tracker_that_is_down_is_one_warning_and_the_run_goes_on(cache, tmp_path, caplog):
    with socket.socket() as s:  # a loopback port nothing listens on: the server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = [*TINY, "--cache", str(cache), "--epochs", "2", "--out", str(out)]
    with caplog.at_level(logging.WARNING, logger="train.tracking"):
        r = CliRunner().invoke(
            train_cli,
            [*args, "--tracking", "mlflow", "--tracking-uri", f"http://127.0.0.1:{port}"],
        )
    assert r.exit_code == 0, r.output
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()
    warnings = [m for m in caplog.records if m.name == "train.tracking"]
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert "training goes on" in warnings[0].getMessage()
    assert str(port) in warnings[0].getMessage()


def test_a_run_that_breaks_mid_way_warns_once_and_records_no_more(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = open_run(TrackingOptions("mlflow", uri, "e"), tmp_path / "r", "r")
    assert isinstance(run, MLflowRun) and not run.broken
    run.log_metrics({"a": 1.0}, step=1)
    run.run_id = "0" * 32  # the server lost the run
    with caplog.at_level(logging.WARNING, logger="train.tracking"):
        run.log_metrics({"a": 2.0}, step=2)
        run.log_metrics({"a": 3.0}, step=3)
        run.end()
    assert run.broken and len(caplog.records) == 1
    assert "record metrics" in caplog.records[0].getMessage()


def _grid(tmp_path: Path) -> Path:
    g = tmp_path / "grid.toml"
    g.write_text(
        'name = "g"\nseeds = [0]\n' + tiny_sweep_base(epochs=2) + "\n[grid]\nlr = [1e-3, 3e-3]\n",
        encoding="utf-8",
    )
    return g


def test_a_sweep_is_a_parent_run_with_a_child_per_trial(cache, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    args = ["--cache", str(cache), "--grid", str(_grid(tmp_path)), "--out", str(out), "-q"]
    r = CliRunner().invoke(sweep_cli, [*args, "--tracking", "mlflow", "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    client, runs = _runs(uri)
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "sweep"
    parent = parents[0]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert {c.data.params["lr"] for c in children} == {"0.001", "0.003"}
    assert all(c.info.status == "FINISHED" for c in children)
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "best.json"} <= files
    assert parent.info.status == "FINISHED"


def test_a_search_tracks_its_trials_and_the_best_settings_seeds(cache, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = tmp_path / "space.toml"
    space.write_text(
        'name = "s"\n'
        + tiny_sweep_base(epochs=2)
        + "\n[search]\nlr = { low = 1e-4, high = 1e-2 }\n",
        encoding="utf-8",
    )
    out = tmp_path / "search"
    args = ["--cache", str(cache), "--search", str(space), "--trials", "3", "--seeds", "1"]
    r = CliRunner().invoke(
        sweep_cli,
        [*args, "--out", str(out), "-q", "--tracking", "mlflow", "--tracking-uri", uri],
    )
    assert r.exit_code == 0, r.output
    client, runs = _runs(uri)
    (parent,) = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [c for c in children if "optuna.trial" in c.data.tags]
    assert sorted(c.data.tags["optuna.trial"] for c in trials) == ["0", "1", "2"]
    assert not any(k.startswith("test/") for c in trials for k in c.data.metrics)
    (best,) = [c for c in children if "optuna.trial" not in c.data.tags]
    assert "test/2/accuracy" in best.data.metrics
    import json

    assert parent.data.metrics["best_validation"] == pytest.approx(
        json.loads((out / "best.json").read_text())["value"]
    )


def test_a_resumed_run_continues_the_same_tracked_run(cache, tmp_path):
    from train.config import TrainConfig
    from train.loop import TrainingRun, fit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingOptions("mlflow", uri, "msmtfn")
    cfg = TrainConfig.from_dict(
        {"cache": str(cache), "out": str(tmp_path / "run"), "epochs": 3, "patience": 9,
         "state_every": 1, "d_model": 16, "heads": 2, "ffn": 32, "gru_hidden": 8,
         "head_hidden": 16, "cross_layers": 1, "bottleneck_layers": 1, "threads": 1,
         "plots": False, "progress": False}
    )  # fmt: skip
    run = TrainingRun(cfg, tracking=tracking).start()
    run.epoch(1)  # then the process dies: the tracked run is left RUNNING
    first = run.tracked.run_id
    fit(cfg, resume=True, tracking=tracking)
    client, runs = _runs(uri)
    assert [r.info.run_id for r in runs] == [first] and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(first, "train_loss")]
    assert sorted(steps) == [1, 2, 3]
