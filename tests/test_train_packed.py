"""Resident training features are packed (valid rows only + offsets); the model must see exactly the batches the
padded layout gave, and the memory held must be the valid rows, not segments x 999 rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import write_synthetic_store

from train.config import TrainConfig
from train.data import Batches, CallData, FeatureSource, LoadedCache, load_cache
from train.loop import fit


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("packed") / "c.zarr"
    # short segments next to full ones, 1-token texts next to full ones: the layouts differ most there
    write_synthetic_store(
        path,
        calls=40,
        segments_per_call=(1, 5),
        audio_frames=37,
        audio_dim=6,
        text_tokens=11,
        text_dim=5,
        seed=3,
        split_fractions=(0.6, 0.2, 0.2),
    )
    return path


def batches(data, source, calls, full_text, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(
        Batches(data, source, calls, batch_calls=4, shuffle=True, generator=g, full_text=full_text)
    )


@pytest.mark.parametrize("full_text", [False, True])
def test_packed_batches_equal_padded_bit_for_bit(cache, full_text):
    data = CallData(load_cache(str(cache), torch.device("cpu")).store)
    packed = FeatureSource(data, torch.device("cpu"))
    padded = FeatureSource(data, torch.device("cpu"), packed=False)
    assert packed.resident and padded.resident and packed.packed and not padded.packed
    calls = data.indices("train") + data.indices("valid")
    got, want = batches(data, packed, calls, full_text), batches(data, padded, calls, full_text)
    assert len(got) == len(want) > 3
    for b1, b2 in zip(got, want):
        assert b1.calls == b2.calls
        for x, y in (
            (b1.audio, b2.audio),
            (b1.text, b2.text),
            (b1.audio_len, b2.audio_len),
            (b1.text_len, b2.text_len),
        ):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y)  # bit for bit, padding zeros included
        assert b1.audio.abs().sum() > 0  # real numbers, not two empty tensors


def test_packed_memory_is_the_valid_rows(cache):
    data = CallData(load_cache(str(cache), torch.device("cpu")).store)
    packed = FeatureSource(data, torch.device("cpu"))
    padded = FeatureSource(data, torch.device("cpu"), packed=False)
    rows = np.sort(data.used_rows())
    a_valid = int(data.audio_len[torch.as_tensor(rows)].sum())
    t_valid = int(data.text_len[torch.as_tensor(rows)].sum())
    assert tuple(packed.audio.shape) == (a_valid, data.audio_dim)
    assert tuple(packed.text.shape) == (t_valid, data.text_dim)
    feature_bytes = 2 * (a_valid * data.audio_dim + t_valid * data.text_dim)
    assert feature_bytes == data.packed_bytes()
    index_bytes = 2 * 8 * (2 * len(rows) + 1)  # offsets (rows + 1) and lengths (rows) per modality
    assert packed.resident_bytes == feature_bytes + index_bytes
    assert padded.resident_bytes == data.used_bytes()
    assert (
        packed.resident_bytes < 0.8 * padded.resident_bytes
    )  # random lengths: about 2/3 of the padded rows


def test_packed_view_subset_and_budget(cache):
    data = CallData(load_cache(str(cache), torch.device("cpu")).store)
    some = data.indices("valid")
    src = FeatureSource(data, torch.device("cpu"), calls=some)
    ref = FeatureSource(data, torch.device("cpu"), calls=some, packed=False)
    text_only = src.view(("text",))
    assert text_only.audio is None and text_only.resident_bytes < src.resident_bytes
    for b1, b2 in zip(
        batches(data, text_only, some, False), batches(data, ref.view(("text",)), some, False)
    ):
        assert b1.audio is None and torch.equal(b1.text, b2.text)
    # the device budget is checked against the packed size: a budget between packed and padded keeps it resident
    gb = (data.packed_bytes() + data.used_bytes()) / 2 / 2**30
    assert FeatureSource(data, torch.device("cpu"), max_gb=gb).resident
    assert not FeatureSource(data, torch.device("cpu"), max_gb=gb, packed=False).resident


def test_fit_is_the_same_with_either_layout(cache, tmp_path, one_torch_thread):
    runs = []
    for packed in (True, False):
        loaded = load_cache(str(cache), torch.device("cpu"), packed=packed)
        cfg = TrainConfig(
            cache=str(cache),
            out=str(tmp_path / f"p{packed}"),
            device="cpu",
            epochs=2,
            patience=2,
            plots=False,
            progress=False,
            d_model=8,
            heads=2,
            ffn=16,
            head_hidden=8,
            gru_hidden=4,
            cross_layers=1,
            bottleneck_layers=1,
            seed=1,
        )
        runs.append(fit(cfg, loaded=LoadedCache(loaded.store, loaded.data, loaded.source)))
    # same inputs, same seed: the same validation loss and the same trained weights, bit for bit
    assert runs[0]["val_loss"] == runs[1]["val_loss"]
    w1, w2 = (load_file(str(Path(m["run_dir"]) / "model.safetensors")) for m in runs)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
