"""msmtfn-sweep --search: the space file's checks, a study on one loaded cache that never scores the
test split, pruning, resume after SIGKILL to exactly N finished trials, and the best setting trained
again over seeds with test figures."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import tiny_sweep_base
from optuna.trial import TrialState
from synthetic import write_synthetic_store

from train.sweep import resolve_run
from train.sweep_cli import main as sweep_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]

SPACE = (
    'name = "tiny"\n'
    + tiny_sweep_base(epochs=3).replace("gru_hidden = 8\n", "")
    + """
[search]
lr = { low = 1e-4, high = 1e-2, log = true }
dropout = { low = 0.0, high = 0.5 }
gru_hidden = { low = 4, high = 12, step = 4 }
pooling = ["mean", "cls"]
"""
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("search") / "c.zarr",
        calls=40,
        segments_per_call=(1, 3),
        audio_frames=10,
        text_tokens=6,
        seed=2,
    ).path


def _space(tmp_path: Path, body: str = SPACE) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(body, encoding="utf-8")
    return p


def _study(out: Path, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def _states(study) -> list[str]:
    return [t.state.name for t in sorted(study.get_trials(), key=lambda t: t.number)]


@pytest.mark.parametrize(
    "search, expected",
    [
        ("nosuch = [1, 2]", "[search]: unknown key 'nosuch'"),
        ("lr = { low = 1e-2, high = 1e-4 }", "[search] lr: low (0.01) must be below high"),
        ("lr = { low = 0.0, high = 1e-2, log = true }", "[search] lr: a log range needs low > 0"),
        (
            "gru_hidden = { low = 4.5, high = 12 }",
            "[search] gru_hidden: low = 4.5: gru_hidden is a whole",
        ),
        (
            "gru_hidden = { low = 4, high = 12, step = 0 }",
            "[search] gru_hidden: step 0 must be above 0",
        ),
        (
            "lr = { low = 1e-4, high = 1e-2, log = true, step = 1e-4 }",
            "log = true or a step, not both",
        ),
        ("lr = { low = 1e-4, high = 1e-2, scale = 2 }", "unknown key 'scale' in the range"),
        ("lr = { high = 1e-2 }", "[search] lr: the range needs low"),
        ("pooling = []", "[search] pooling: an empty list of choices"),
        ('pooling = ["mean", "nosuch"]', "[search] pooling"),
        ("dropout = { low = 0.0, high = 1.5 }", "[search] dropout"),
        ("bigru = { low = 0, high = 1 }", "bigru is a bool setting; search it with a list"),
        ("epochs = [2, 3]", "[search] epochs: also fixed in [base]"),
        ("seed = [0, 1]", "unknown key 'seed' (set by msmtfn-sweep itself)"),
        ("lr = 0.001", "[search] lr = 0.001: expected a range"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_file_and_the_key(cache, tmp_path, search, expected):
    body = SPACE.split("[search]")[0] + "[search]\n" + search + "\n"
    space = _space(tmp_path, body)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        sweep_cli, ["--cache", str(cache), "--search", str(space), "--out", str(out), "-q"]
    )
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"Error: {space}: ") and expected in lines[0], lines[0]
    assert not out.exists()


def test_grid_and_search_are_one_or_the_other(cache, tmp_path):
    r = CliRunner().invoke(sweep_cli, ["--cache", str(cache), "-q"])
    assert r.exit_code == 2 and "give --grid FILE" in r.output


def test_a_search_scores_validation_only_then_trains_the_best_over_seeds(cache, tmp_path):
    out = tmp_path / "s"
    args = ["--cache", str(cache), "--search", str(_space(tmp_path)), "--out", str(out)]
    args += ["--trials", "4", "--seeds", "2", "--pruner", "none", "--parallel", "2"]
    r = CliRunner().invoke(sweep_cli, [*args, "--device", "cpu", "-q", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    study = _study(out)
    assert _states(study) == ["COMPLETE"] * 4
    assert summary["trials"]["complete"] == 4
    for t in study.trials:
        run = out / "trials" / f"{t.number:04d}"
        m = json.loads((run / "metrics.json").read_text())
        assert m["test"] == {} and m["test_loss"] is None, "a trial scored the test split"
        assert not (run / "predictions_test.csv").exists()
        # the study's value is the trial's selected validation figure, params as trained
        assert t.value == pytest.approx(m["val"]["5"]["macro_f1"])
        assert {k: m["config"][k] for k in t.params} == t.params
    # the best trial's setting again over seeds 0 and 1, now with test figures
    best = study.best_trial
    for seed in (0, 1):
        m = json.loads((out / "best" / f"s{seed}" / "metrics.json").read_text())
        assert m["config"]["seed"] == seed and m["test"]["5"]["macro_f1"] >= 0
        assert {k: m["config"][k] for k in best.params} == best.params
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    values = [float(r["validation"]) for r in rows]
    assert values == sorted(values, reverse=True) and rows[0]["trial"] == str(best.number)
    record = json.loads((out / "best.json").read_text())
    run, note = resolve_run(out)
    assert run == out / record["run_dir"] and note.startswith(f"search {out}")
    assert (out / "history.png").stat().st_size > 1000
    assert "the test split was not scored during the search" in (out / "results.md").read_text()


def test_the_pruner_stops_a_trial_worse_than_the_median(cache, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    study = optuna.create_study(
        study_name="tiny", storage=f"sqlite:///{out / 'study.db'}", direction="maximize"
    )
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for _ in range(5):  # five finished trials that scored a perfect 1.0 from their first epoch
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 1e-3},
                distributions=dist,
                value=1.0,
                intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
            )
        )
    space = _space(
        tmp_path,
        SPACE.split("[search]")[0].replace("epochs = 3", "epochs = 4")
        + "[search]\nlr = { low = 1e-4, high = 1e-2, log = true }\n",
    )
    args = ["--cache", str(cache), "--search", str(space), "--out", str(out), "--trials", "6"]
    r = CliRunner().invoke(sweep_cli, [*args, "--seeds", "1", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    study = _study(out)
    new = study.trials[-1]
    assert new.state == TrialState.PRUNED, new
    # compared from its second epoch on (the median pruner's warm-up), stopped before its last
    assert new.user_attrs["epochs"] == 2 and sorted(new.intermediate_values) == [1, 2]
    assert not (out / "trials" / f"{new.number:04d}" / "metrics.json").exists()


def test_resume_after_sigkill_finishes_exactly_n_trials(cache, tmp_path):
    out = tmp_path / "k"
    space = _space(tmp_path, SPACE.replace("epochs = 3", "epochs = 6"))
    args = ["--cache", str(cache), "--search", str(space), "--out", str(out), "--trials", "3"]
    args += ["--seeds", "1", "--pruner", "none", "--device", "cpu", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "train.sweep_cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    # killed while trial 1 trains: trial 0 finished, trial 1 has its first epoch
    while time.time() < deadline and p.poll() is None:
        if (out / "trials" / "0001" / "history.csv").exists():
            break
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read().decode()[-800:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _states(_study(out)) == ["COMPLETE", "RUNNING"]
    r = CliRunner().invoke(sweep_cli, args)  # without --resume: refused
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(sweep_cli, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    # the killed trial is marked failed and replaced, never counted: exactly 3 finished
    assert _states(_study(out)) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    rows = {r["trial"]: r["state"] for r in csv.DictReader(open(out / "results.csv"))}
    assert rows == {"0": "complete", "1": "fail", "2": "complete", "3": "complete"}
    # run again with --resume: the study is finished, no trial added
    r = CliRunner().invoke(sweep_cli, [*args, "--resume"])
    assert r.exit_code == 0 and len(_study(out).trials) == 4
