"""train/normalise.py checked directly: the statistics equal numpy's over exactly the valid rows, the
sample is distinct segments drawn the same way every run, and a memoised result never crosses stores
(docs/testing.md lists the mutants these kill)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from synthetic import SyntheticCall, write_synthetic_store

import train.normalise as normalise
from pipeline.store import CacheStore
from train.normalise import feature_stats

SEGMENTS = 12


@pytest.fixture(autouse=True)
def fresh_memo():
    normalise._memo.clear()
    yield
    normalise._memo.clear()


def one_hot_call(rng, index, n_segments, shape):
    """Segment ``index`` has 4 valid text rows, each the unit vector of dimension ``index``."""
    text = np.zeros((n_segments, shape.text_tokens, shape.text_dim), dtype=np.float32)
    text[:, :4, index] = 1.0
    audio = rng.standard_normal((n_segments, shape.audio_frames, shape.audio_dim), dtype=np.float32)
    return SyntheticCall(
        label="A",
        audio=audio,
        audio_len=np.full(n_segments, shape.audio_frames),
        text=text,
        text_len=np.full(n_segments, 4),
    )


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("stats") / "r.zarr", calls=40, segments_per_call=(1, 3), seed=5
    )


@pytest.fixture(scope="module")
def one_hot_store(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("stats") / "h.zarr",
        calls=SEGMENTS,
        segments_per_call=[1] * SEGMENTS,
        text_dim=16,
        fill=one_hot_call,
    )


def valid_rows(store, modality, rows):
    hidden = np.asarray(store.array(f"{modality}/hidden")[:], dtype=np.float64)
    length = np.asarray(store.array(f"{modality}/length")[:])
    return np.concatenate([hidden[r, : length[r]] for r in rows])


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_the_statistics_are_numpys_over_the_valid_rows_only(random_store, modality):
    rows = np.arange(0, len(random_store.done()), 2)  # every other segment, padding rows present
    x = valid_rows(random_store, modality, rows)
    mean, std = feature_stats(random_store, rows[::-1], modality)  # order and repeats do not matter
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5, atol=1e-7)


def test_the_sample_is_distinct_segments_drawn_the_same_every_run(one_hot_store):
    rows = np.arange(SEGMENTS)
    mean, _ = feature_stats(one_hot_store, rows, "text", max_segments=7)
    # each sampled segment lights its own dimension; a segment drawn twice would weigh double
    lit = mean[:SEGMENTS][mean[:SEGMENTS] > 0]
    assert len(lit) == 7
    np.testing.assert_allclose(lit, 1 / 7, rtol=1e-6)
    normalise._memo.clear()
    again, _ = feature_stats(one_hot_store, rows, "text", max_segments=7)
    np.testing.assert_array_equal(again, mean)
    other, _ = feature_stats(one_hot_store, rows, "text", max_segments=7, seed=1)
    assert not np.array_equal(other, mean)
    whole, _ = feature_stats(one_hot_store, rows, "text")
    np.testing.assert_allclose(whole[:SEGMENTS], 1 / SEGMENTS, rtol=1e-6)


def test_a_memoised_result_is_never_another_stores(random_store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(random_store.path, copy)
    rows = np.arange(4)
    first, _ = feature_stats(random_store, rows, "text")
    writable = CacheStore.open(copy, mode="r+")
    hidden = writable.array("text/hidden")
    hidden[0] = np.asarray(hidden[0]) + 1.0  # same settings, so the same fingerprint
    copied = CacheStore.open(copy)
    assert copied.fingerprint == random_store.fingerprint
    second, _ = feature_stats(copied, rows, "text")
    assert not np.allclose(first, second)


def test_a_constant_dimension_gets_a_floor_of_a_thousandth_of_the_median_std(one_hot_store):
    rows = np.arange(SEGMENTS)
    x = valid_rows(one_hot_store, "text", rows)
    raw = x.std(0)
    assert (raw[SEGMENTS:] == 0).all() and 0 < np.median(raw) < 1  # dims 12-15 never lit
    mean, std = feature_stats(one_hot_store, rows, "text")
    np.testing.assert_allclose(std[SEGMENTS:], 1e-3 * np.median(raw), rtol=1e-6)
    np.testing.assert_allclose(std[:SEGMENTS], raw[:SEGMENTS], rtol=1e-6)
    assert np.isfinite((x - mean) / std).all()
