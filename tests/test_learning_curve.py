"""--train-fraction and the two study presets: a learning curve trains on a seeded, label-stratified
subset of whole training calls (validation and test untouched), and paper-capacity / learning-curve
are the grids they say they are."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from synthetic import write_synthetic_store

from train.config import ConfigError, TrainConfig
from train.data import CallData, training_calls, training_priors
from train.loop import TrainingRun
from train.normalise import feature_stats
from train.sweep import read_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(
    d_model=16,
    heads=2,
    ffn=32,
    gru_hidden=8,
    head_hidden=16,
    cross_layers=1,
    bottleneck_layers=1,
    epochs=1,
    progress=False,
    device="cpu",
    plots=False,
    state_every=0,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("lc") / "c.zarr", calls=80, segments_per_call=(1, 2), seed=4
    )


def test_a_fraction_keeps_each_labels_share_of_whole_training_calls(store):
    data = CallData(store)
    train = data.indices("train")
    labels = Counter(data.base_labels[c] for c in train)
    part = training_calls(data, 0.25, seed=0)
    assert set(part) < set(train) and len(set(part)) == len(part)
    got = Counter(data.base_labels[c] for c in part)
    assert got == {k: max(1, round(0.25 * n)) for k, n in labels.items()}
    assert training_calls(data, 0.25, seed=0) == part
    assert training_calls(data, 0.25, seed=1) != part
    assert training_calls(data, 1.0, seed=3) == train


def test_a_run_on_a_fraction_trains_and_normalises_on_those_calls_only(store, tmp_path):
    cfg = TrainConfig(
        cache=str(store.path), out=str(tmp_path / "r"), train_fraction=0.25, seed=2, **SMALL
    )
    run = TrainingRun(cfg).start()
    data = run.data
    part = training_calls(data, 0.25, seed=2)
    assert run.splits["train"] == part
    assert run.splits["valid"] == data.indices("valid") and run.splits["test"] == data.indices(
        "test"
    )
    assert sorted(c for b in run.train_b._groups() for c in b) == part
    mean, _ = feature_stats(store, data.used_rows(part), "text")
    np.testing.assert_allclose(run.model.text_mean.numpy(), mean)
    for epoch in run.epochs():
        run.epoch(epoch)
    m = run.finish()
    assert m["calls"]["train"] == len(part) and m["config"]["train_fraction"] == 0.25
    written = json.loads((tmp_path / "r" / "config.json").read_text())
    assert written["train"]["train_fraction"] == 0.25
    assert written["priors"] == training_priors(data, part) != training_priors(data)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_a_fraction_outside_0_to_1_is_refused(bad):
    with pytest.raises(ConfigError, match="train_fraction"):
        TrainConfig(cache="-", train_fraction=bad)


def test_the_study_presets():
    cap = read_grid("paper-capacity")
    combos = {
        (c.settings["bottleneck_tokens"], c.settings["gru_hidden"]) for c in cap.configurations
    }
    assert combos == {(b, g) for b in (2, 4, 8) for g in (64, 128, 256)} and cap.task is None
    lc = read_grid("learning-curve")
    assert [c.settings["train_fraction"] for c in lc.configurations] == [0.1, 0.25, 0.5, 1.0]
    assert len(lc.seeds) == 5
