"""msmtfn-sweep --search on a dask cluster: trials run in the workers (each loads the cache once and
reaches the study through its storage), a local cluster of --dask-workers or a running one at
--scheduler (a LocalCluster the test starts), with the trials' tracked runs made by the workers."""

from __future__ import annotations

import os
from collections import Counter

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from optuna.trial import TrialState
from synthetic import write_synthetic_store

from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACE = (
    'name = "d"\n' + tiny_sweep_base(epochs=2) + "\n[search]\nlr = { low = 1e-4, high = 1e-2 }\n"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("dask") / "c.zarr",
        calls=24,
        segments_per_call=(1, 2),
        audio_frames=8,
        text_tokens=5,
        seed=5,
    ).path


def _args(cache, tmp_path, trials: int):
    space = tmp_path / "space.toml"
    space.write_text(SPACE, encoding="utf-8")
    out = tmp_path / "search"
    return out, [
        "--cache", str(cache), "--search", str(space), "--trials", str(trials), "--seeds", "1",
        "--pruner", "none", "--out", str(out), "-q",
    ]  # fmt: skip


def _trials(out):
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials()


def test_dask_workers_run_the_trials_each_loading_the_cache_once(cache, tmp_path):
    out, args = _args(cache, tmp_path, trials=4)
    r = CliRunner().invoke(sweep_cli, [*args, "--dask-workers", "2"])
    assert r.exit_code == 0, r.output
    trials = _trials(out)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    workers = Counter(t.user_attrs["worker"] for t in trials)
    assert len(workers) <= 2 and max(workers.values()) >= 2  # a worker ran several trials …
    assert {t.user_attrs["worker_cache_loads"] for t in trials} == {1}  # … on one cache load
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)  # not in this process
    assert (out / "best.json").is_file() and (out / "best" / "s0" / "metrics.json").is_file()


def test_a_running_cluster_at_scheduler_with_trials_tracked_from_the_workers(cache, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from distributed import Client, LocalCluster

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, args = _args(cache, tmp_path, trials=2)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
        r = CliRunner().invoke(
            sweep_cli,
            [*args, "--scheduler", cluster.scheduler_address, "--tracking", "mlflow",
             "--tracking-uri", uri],
        )  # fmt: skip
    assert r.exit_code == 0, r.output
    trials = _trials(out)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials} == pids
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("msmtfn").experiment_id])
    (parent,) = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.tags.get("optuna.trial", "best") for c in children) == ["0", "1", "best"]
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--dask-workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "pass one of them"),
        (["--dask-workers", "-1"], "1 or more"),
        (["--scheduler", "127.0.0.1:8786"], "tcp://HOST"),
    ],
)
def test_dask_options_that_cannot_work_are_one_line(cache, tmp_path, extra, words):
    out, args = _args(cache, tmp_path, trials=2)
    r = CliRunner().invoke(sweep_cli, [*args, *extra])
    assert r.exit_code == 2 and words in r.output, r.output
    assert not out.exists()


def test_a_grid_is_refused_dask_workers(cache, tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(
        'name = "g"\nseeds = [0]\n' + tiny_sweep_base(epochs=1) + "\n[grid]\nlr = [1e-3]\n"
    )
    r = CliRunner().invoke(
        sweep_cli, ["--cache", str(cache), "--grid", str(grid), "--dask-workers", "2"]
    )
    assert r.exit_code == 2 and "--search" in r.output, r.output
