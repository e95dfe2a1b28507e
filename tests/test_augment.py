"""Cached augmentation variants: extracted once for the training split only, tagged, repeatable, and sampled by
the trainer for training calls only — never in validation or test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_same_features, write_marketcalls

from extract.augment import AugmentError, parse_augment
from extract.cli import main as extract_cli
from extract.run import ExtractConfig, extract
from pipeline.store import CacheStore
from train.config import TrainConfig
from train.data import Batches, CallData, FeatureSource, TrainError
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(data, out, enc, **kw) -> ExtractConfig:
    return ExtractConfig(
        dataset="marketcalls",
        data_dir=str(data),
        out=str(out),
        audio_model=str(enc["group"]),
        text_model=str(enc["text"]),
        num_workers=0,
        shard_size=4,
        max_text_tokens=24,
        **kw,
    )


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, tiny_encoders):
    root = tmp_path_factory.mktemp("aug")
    data = write_marketcalls(root / "mc", calls=12, segments=2, seconds=(1.0, 2.5))
    res = extract(
        _cfg(data, root / "aug.zarr", tiny_encoders, augment=("noise", "speed"), variants=2),
        progress=False,
    )
    return {"root": root, "data": data, "store": CacheStore.open(res.store), "enc": tiny_encoders}


def test_variants_are_extra_training_rows_tagged_and_complete(augmented):
    s = augmented["store"]
    t = s.table()
    orig = t["variant"] == "orig"
    assert s.done().all()
    train_orig = [
        sid for sid, sp, o in zip(t["segment_id"], t["split"], orig) if o and sp == "train"
    ]
    for v in ("noise-1", "noise-2", "speed-1", "speed-2"):
        rows = np.flatnonzero(t["variant"] == v)
        assert sorted(t["segment_id"][rows]) == sorted(f"{sid}~{v}" for sid in train_orig)
        assert set(t["split"][rows]) == {"train"}
    assert set(t["split"][~orig]) == {"train"}  # never validation or test
    assert s.settings["augmentation"]["variants"] == ["noise-1", "noise-2", "speed-1", "speed-2"]
    # an augmented row's audio differs from its original; its text is the original's
    ids = list(t["segment_id"])
    a, b = ids.index(train_orig[0]), ids.index(f"{train_orig[0]}~noise-1")
    audio, text = s.array("audio/hidden"), s.array("text/hidden")
    assert np.abs(audio[a].astype(np.float32) - audio[b]).max() > 0.01  # more than rounding
    assert_same_features(text[a], text[b])
    c = ids.index(f"{train_orig[0]}~noise-2")
    assert np.abs(audio[b].astype(np.float32) - audio[c]).max() > 0.01, (
        "two draws of one augmentation differ"
    )


def test_variant_extraction_is_repeatable(augmented):
    cfg = _cfg(
        augmented["data"],
        augmented["root"] / "again.zarr",
        augmented["enc"],
        augment=("noise", "speed"),
        variants=2,
    )
    again = CacheStore.open(extract(cfg, progress=False).store)
    first = augmented["store"]
    for name in ("audio/hidden", "audio/length", "text/hidden"):
        assert_same_features(
            np.asarray(first.array(name)[:]), np.asarray(again.array(name)[:]), name
        )
    assert again.fingerprint == first.fingerprint


def test_trainer_samples_variants_for_training_only(augmented):
    data = CallData(augmented["store"])
    train, valid, test = data.indices("train"), data.indices("valid"), data.indices("test")
    for c in train + valid + test:
        assert data.variants[c] == "orig"
    choices = data.variant_choices(train, ("noise",))
    assert all(
        len(ch) == 3 and {data.variants[i] for i in ch} == {"orig", "noise-1", "noise-2"}
        for ch in choices
    )
    assert all(len(ch) == 5 for ch in data.variant_choices(train, ("all",)))
    assert all(len(ch) == 2 for ch in data.variant_choices(train, ("speed-2",)))
    assert data.variant_choices(train, ()) is None
    with pytest.raises(
        TrainError, match=r"no augmentation variant 'echo'.*noise-1, noise-2, speed-1, speed-2"
    ):
        data.variant_choices(train, ("echo",))
    source = FeatureSource(data, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batches = Batches(
        data,
        source,
        train,
        3,
        True,
        gen,
        full_text=False,
        choices=data.variant_choices(train, ("all",)),
    )
    seen_variants = set()
    for _ in range(6):
        epoch = [c for b in batches for c in b.calls]
        assert sorted(data.calls[c] for c in epoch) == sorted(
            data.calls[c] for c in train
        )  # each call once
        seen_variants |= {data.variants[c] for c in epoch}
    assert len(seen_variants) >= 3
    for split in (valid, test):
        for b in Batches(data, source, split, 4, False, None, full_text=False):
            assert all(data.variants[c] == "orig" for c in b.calls)


def test_fit_with_variants_and_cli_options(augmented, tmp_path):
    small = dict(
        d_model=16,
        heads=2,
        ffn=32,
        gru_hidden=8,
        head_hidden=16,
        cross_layers=1,
        bottleneck_layers=1,
        epochs=2,
        progress=False,
        device="cpu",
        plots=False,
    )
    m = fit(
        TrainConfig(
            cache=str(augmented["store"].path),
            out=str(tmp_path / "r"),
            augment_variants="all",
            **small,
        )
    )
    assert m["config"]["augment_variants"] == ("all",) and m["calls"]["train"] == 4
    with pytest.raises(TrainError, match="no augmentation variant 'pitch'"):
        fit(
            TrainConfig(
                cache=str(augmented["store"].path),
                out=str(tmp_path / "p"),
                augment_variants=("pitch",),
                **small,
            )
        )
    with pytest.raises(AugmentError, match="unknown augmentation 'echo'; valid: noise, speed"):
        parse_augment("noise,echo")
    r = CliRunner().invoke(
        extract_cli,
        [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(augmented["data"]),
            "--out",
            str(tmp_path / "x.zarr"),
            "--augment",
            "noise,echo",
            "-q",
        ],
    )
    assert r.exit_code == 1 and "unknown augmentation 'echo'" in r.output
