"""Text augmentation variants (``--augment-text pinyin-swap|word-dropout``): text rows that point at their
original's audio rows (no audio copies, measured in bytes), the paper's copies per class, and training that
reads the original audio for them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_same_features, write_marketcalls

from extract.augment import AugmentError, parse_per_class
from extract.cli import format_info
from extract.cli import main as extract_cli
from extract.encode import SegmentSource, encode_loader, make_loader
from extract.encoders import load_encoders
from extract.plan import variant_plan
from extract.run import ExtractConfig, extract
from extract.text_augment import (
    TextAugmentError,
    augment_text,
    homophones,
    parse_text_augment,
    pinyin_swap,
    word_dropout,
)
from pipeline.cache_settings import CacheSettings
from pipeline.manifest import Manifest, Segment
from pipeline.store import CacheStore, FingerprintMismatch, _dir_bytes
from pipeline.verify import verify_store
from train.data import Batches, CallData, FeatureSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT_AUG = "pinyin-swap"


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
def stores(tmp_path_factory, tiny_encoders):
    root = tmp_path_factory.mktemp("textaug")
    data = write_marketcalls(root / "mc", calls=12, segments=2, seconds=(1.0, 2.5))

    def make(name, **kw):
        cfg = _cfg(data, root / name, tiny_encoders, **kw)
        return CacheStore.open(extract(cfg, progress=False).store)

    return {
        "root": root,
        "data": data,
        "enc": tiny_encoders,
        "base": make("base.zarr"),
        "text": make("text.zarr", augment_text=TEXT_AUG, variants=2, variants_per_class="A=3,D=1"),
        "audio": make("audio.zarr", augment=("noise",), variants=2),
    }


# ------------------------------------------------------------------------------------ the transforms
def test_pinyin_swap_keeps_the_reading_of_every_character_it_swaps():
    from pypinyin import Style, pinyin

    text = "我想了解一下价格，不需要谢谢再见。OK 好的可以"
    readings = [r[0] for r in pinyin(text, style=Style.NORMAL, errors=lambda s: [[c] for c in s])]
    swapped = pinyin_swap(text, 1.0, np.random.default_rng(0))
    assert len(swapped) == len(text)
    changed = 0
    for a, b, reading in zip(text, swapped, readings):
        if not "\u4e00" <= a <= "\u9fff":
            assert a == b  # punctuation and Latin letters are never touched
            continue
        if a != b:
            changed += 1
            # the reading in context (了 in 了解 is liao), among the common characters
            assert b in homophones()[reading], (a, b, reading)
    assert changed >= 0.9 * sum("\u4e00" <= a <= "\u9fff" for a in text)
    assert "liao" in readings and "le" not in readings
    long = "好的我想了解一下价格不需要谢谢再见" * 60
    rate = np.mean([a != b for a, b in zip(long, pinyin_swap(long, 0.3, np.random.default_rng(1)))])
    assert 0.22 < rate < 0.38  # p = 0.3 of the characters (nearly all have a homophone)
    assert pinyin_swap(long, 0.3, np.random.default_rng(1)) == pinyin_swap(
        long, 0.3, np.random.default_rng(1)
    )


def test_word_dropout_drops_words_at_its_rate_and_keeps_one():
    words = " ".join(f"w{i}" for i in range(2000))
    out = word_dropout(words, 0.1, np.random.default_rng(0))
    kept = out.split()
    assert 0.86 < len(kept) / 2000 < 0.94 and set(kept) <= set(words.split())
    assert "  " not in out
    assert kept == [w for w in words.split() if w in set(kept)]  # order kept
    cjk = word_dropout("我想了解一下价格", 0.5, np.random.default_rng(3))
    assert 0 < len(cjk) < 8 and all(c in "我想了解一下价格" for c in cjk)
    assert word_dropout("one two", 1.0, np.random.default_rng(0)) in ("one", "two")
    assert word_dropout("alone", 1.0, np.random.default_rng(0)) == "alone"


def test_each_copy_is_seeded_by_its_segment_id():
    text = "好的我想了解一下价格不需要谢谢再见" * 3
    a = augment_text(text, "pinyin-swap:0.3", 0, "s1~pinyin-swap-1")
    assert a == augment_text(text, "pinyin-swap:0.3", 0, "s1~pinyin-swap-1")
    assert a != augment_text(text, "pinyin-swap:0.3", 0, "s1~pinyin-swap-2")
    assert a != augment_text(text, "pinyin-swap:0.3", 1, "s1~pinyin-swap-1")


def test_the_options_parse_with_their_defaults_and_refuse_bad_values():
    assert parse_text_augment("pinyin-swap") == ("pinyin-swap:0.3",)
    assert parse_text_augment("Pinyin-Swap:0.2, word-dropout") == (
        "pinyin-swap:0.2",
        "word-dropout:0.1",
    )
    assert parse_text_augment(["word-dropout:0.05"]) == ("word-dropout:0.05",)
    for bad, why in (
        ("pinyin", "unknown transform 'pinyin'"),
        ("pinyin-swap:2", r"p must be in \(0, 1\]"),
        ("pinyin-swap:x", "not a probability"),
        ("pinyin-swap:0.2,pinyin-swap:0.3", "twice"),
    ):
        with pytest.raises(TextAugmentError, match=why):
            parse_text_augment(bad)
    assert parse_per_class("D=1, A=3") == {"D": 1, "A": 3}
    for bad in ("D", "D=x", "=2", "D=-1"):
        with pytest.raises(AugmentError, match="LABEL=COPIES"):
            parse_per_class(bad)
    with pytest.raises(ValueError, match="needs --augment or --augment-text"):
        CacheSettings(variants_per_class="D=1").check()


# ------------------------------------------------------------------------------------- the store
def _variant_rows(s: CacheStore) -> np.ndarray:
    return np.flatnonzero(s.audio_source() != np.arange(s.n))


def test_text_variants_are_text_rows_pointing_at_the_original_audio(stores):
    s, base = stores["text"], stores["base"]
    assert s.done().all() and s.attrs["schema_version"] == 3
    t, texts, src = s.table(), s.segment_texts(), s.audio_source()
    ids = list(t["segment_id"])
    rows = _variant_rows(s)
    assert set(t["variant"][rows]) == {f"{TEXT_AUG}-{k}" for k in (1, 2, 3)}
    assert set(t["split"][rows]) == {"train"}
    audio_len, text_len = s.lengths("audio"), s.lengths("text")
    changed = 0
    for r in rows:
        orig = int(src[r])
        assert ids[r] == f"{ids[orig]}~{t['variant'][r]}" and t["variant"][orig] == "orig"
        assert texts[r] == augment_text(texts[orig], "pinyin-swap:0.3", 0, ids[r])
        assert audio_len[r] == 0 and not np.any(s.array("audio/hidden")[r])  # no audio of its own
        if texts[r] != texts[orig]:
            changed += 1
            diff = np.abs(
                s.array("text/hidden")[r].astype(np.float32) - s.array("text/hidden")[orig]
            )
            assert diff.max() > 0.01, "the variant's text is encoded, not copied"
        assert text_len[r] > 0
    assert changed >= 0.8 * len(rows)
    # the originals are those of a store without variants, bit for bit
    n = base.n
    assert list(t["segment_id"][:n]) == list(base.table()["segment_id"])
    for name in ("audio/hidden", "text/hidden", "audio/length"):
        assert_same_features(s.array(name)[:n], base.array(name)[:], name)
    info = s.info()
    assert info["rows_sharing_audio"] == len(rows)
    assert f"{len(rows)} text-variant rows use their original's audio" in format_info(info)
    settings = s.settings["augmentation"]
    assert settings["text_transforms"] == {"pinyin-swap": {"p": 0.3}}
    assert settings["per_class"] == {"A": 3, "D": 1} and settings["copies"] == 2
    restored, _ = CacheSettings.from_attrs(s.settings)
    assert restored.augment_text == ("pinyin-swap:0.3",) and restored.variants == 2
    assert restored.variants_per_class == "A=3,D=1"


def test_copies_per_class_follow_variants_per_class(stores):
    s = stores["text"]
    t = s.table()
    train_orig = (t["variant"] == "orig") & (t["split"] == "train")
    for label, copies in {"A": 3, "D": 1, "B": 2, "E": 2}.items():
        n_orig = int((train_orig & (t["label"] == label)).sum())
        assert n_orig, label
        n_var = int(((t["variant"] != "orig") & (t["label"] == label)).sum())
        assert n_var == copies * n_orig, label


def test_text_variants_cost_no_audio_bytes(stores):
    base, text, audio = stores["base"], stores["text"], stores["audio"]

    def sizes(s):
        return {m: _dir_bytes(s.path / m / "hidden") for m in ("audio", "text")}

    b, t, a = sizes(base), sizes(text), sizes(audio)
    extra_rows = len(_variant_rows(text))
    print(
        f"audio/hidden bytes: base {b['audio']}, text variants {t['audio']}, audio variants {a['audio']}"
    )
    print(
        f"text/hidden bytes: base {b['text']}, text variants {t['text']} ({extra_rows} rows more)"
    )
    assert t["audio"] <= b["audio"] * 1.01 + 512  # a shard index at most, never a copy of a row
    assert a["audio"] > 1.5 * b["audio"]  # what copying the audio would cost
    assert t["text"] > 1.5 * b["text"]


def test_training_reads_the_original_audio_for_a_text_variant(stores):
    s = stores["text"]
    data = CallData(s)
    train = data.indices("train")
    choices = data.variant_choices(train, (TEXT_AUG,))
    assert sorted(len(c) for c in choices) == [2, 3, 3, 4]  # 1 + copies of D, B/E, A
    calls = [c for ch in choices for c in ch]
    src = s.audio_source()
    for kw in ({}, {"packed": False}, {"max_gb": 1e-9}):
        source = FeatureSource(data, torch.device("cpu"), **kw)
        assert source.resident == ("max_gb" not in kw)
        b = Batches(data, source, calls, len(calls), False, None, full_text=False).make(calls)
        at = {int(r): k for k, r in enumerate(b.rows)}
        shared = [r for r in b.rows if src[r] != r]
        assert shared
        for r in shared:
            o = at[int(src[r])]
            assert b.audio_len[at[int(r)]] == b.audio_len[o] > 0
            assert torch.equal(b.audio[at[int(r)]], b.audio[o]), kw
    # resident audio holds each original once, however many text copies share it
    orig = data.indices("train")
    assert data.packed_bytes(("audio",), calls) == data.packed_bytes(("audio",), orig)
    assert data.used_bytes(("audio",), calls) == data.used_bytes(("audio",), orig)
    assert data.packed_bytes(("text",), calls) > 2 * data.packed_bytes(("text",), orig)


def test_a_variant_whose_original_failed_is_left_out(stores, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores["text"].path, copy)
    s = CacheStore.open(copy, mode="r+")
    src = s.audio_source()
    r = int(_variant_rows(s)[0])
    orig = int(src[r])
    skipped = s.skipped()
    skipped[orig] = True
    done = s.done()
    done[orig] = False
    s.set_flags(0, s.n, done, skipped)
    data = CallData(s)
    used = set(data.used_rows().tolist())
    assert orig not in used and r not in used  # never the zeros of an original that has no audio


def test_resume_plans_the_same_texts_and_the_fingerprint_covers_p_and_k(stores):
    data, enc, s = stores["data"], stores["enc"], stores["text"]
    out = s.path
    again = extract(
        _cfg(data, out, enc, augment_text=TEXT_AUG, variants=2, variants_per_class="D=1, A=3"),
        progress=False,
    )
    assert again.computed == 0 and CacheStore.open(out).fingerprint == s.fingerprint
    for kw, what in (
        (dict(augment_text="pinyin-swap:0.2", variants=2), "augmentation"),
        (dict(augment_text=TEXT_AUG, variants=3), "augmentation"),
    ):
        with pytest.raises(FingerprintMismatch, match=what):
            extract(_cfg(data, out, enc, variants_per_class="A=3,D=1", **kw), progress=False)


def test_verify_checks_that_a_text_variant_holds_no_audio_of_its_own(stores, tmp_path):
    assert verify_store(stores["text"].path, progress=False)["damaged"] == []
    copy = tmp_path / "v.zarr"
    shutil.copytree(stores["text"].path, copy)
    s = CacheStore.open(copy, mode="r+")
    r = int(_variant_rows(s)[-1])
    shard = next(sh for sh in s.shard_ranges() if r in sh)
    audio, a_len, text, t_len = (np.array(x) for x in s.read_slab(shard.start, shard.stop))
    audio[r - shard.start, :3] = 1.0
    a_len[r - shard.start] = 3
    s.write_slab(shard.start, audio, a_len, text, t_len)
    (found,) = verify_store(copy, progress=False)["damaged"]
    assert found["row"] == r and "audio of its own" in found["reason"]


def test_a_store_of_schema_2_without_audio_source_still_reads(stores, tmp_path):
    copy = tmp_path / "old.zarr"
    shutil.copytree(stores["base"].path, copy)
    shutil.rmtree(copy / "audio" / "source")
    s = CacheStore.open(copy, mode="r+")
    s.group.attrs["schema_version"] = 2
    s = CacheStore.open(copy)
    assert np.array_equal(s.audio_source(), np.arange(s.n))
    assert s.info()["rows_sharing_audio"] == 0
    data = CallData(s)
    assert np.array_equal(data.audio_len.numpy(), s.lengths("audio"))
    assert verify_store(copy, progress=False)["damaged"] == []


def test_a_batch_mixing_audio_rows_and_text_rows_encodes_each_as_alone(tiny_encoders, tmp_path):
    """The encoder batch of the last rows of a block holds originals and text variants together: the
    originals' audio must be what they get alone, the variants' text what its text gives."""
    from conftest import write_wav

    wav = write_wav(tmp_path / "a.wav", 1.5, 8000, seed=1)
    one = Segment("a", "c", 0, "train", "A", str(wav), "好的我想了解一下")
    rows = [one, one.with_(segment_id="a~x", variant="pinyin-swap-1", audio_of="a")]
    enc = load_encoders(
        CacheSettings(
            audio_model=str(tiny_encoders["group"]), text_model=str(tiny_encoders["text"])
        ),
        "cpu",
    )

    def encode(segments, batches):
        loader = make_loader(SegmentSource.for_encoders(segments, enc), batches, 0)
        return list(encode_loader(loader, enc.audio, enc.text))

    (mixed,) = encode(rows, [[0, 1]])
    (alone,) = encode(rows[:1], [[0]])
    (text_only,) = encode(rows[1:], [[0]])
    assert mixed.audio_len[1] == 0 and not mixed.audio[1].any()
    assert mixed.audio_len[0] == alone.audio_len[0] > 0
    assert_same_features(mixed.audio[0, : alone.audio_len[0]], alone.audio[0, : alone.audio_len[0]])
    assert_same_features(mixed.text[1], mixed.text[0])  # the same transcript: the same rows
    assert text_only.audio.shape == (1, 1, enc.audio.hidden_size) and text_only.audio_len[0] == 0


# ---------------------------------------------------------------------------------- bad usage
def test_variants_per_class_names_the_labels_it_does_not_know(stores):
    manifest = Manifest("marketcalls", "marketcalls", [])
    settings = CacheSettings(augment_text=(TEXT_AUG,), variants_per_class="Q=1")
    with pytest.raises(
        AugmentError, match=r"no label 'Q' in marketcalls; its labels: A, B, C, D, E"
    ):
        variant_plan(settings, manifest)
    for dataset, scheme in (("mosi", "sentiment"), ("meld", "meld")):
        with pytest.raises(AugmentError, match=f"{dataset}'s labels belong to segments or are"):
            variant_plan(
                CacheSettings(augment_text=(TEXT_AUG,), variants_per_class="1=2"),
                Manifest(dataset, scheme, []),
            )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--augment-text", "pinyin-swap:2"], "p must be in (0, 1]"),
        (["--augment-text", "pinyin-swap", "--variants-per-class", "Q=1"], "no label 'Q'"),
        (["--variants-per-class", "D=1"], "needs --augment or --augment-text"),
    ],
)
def test_bad_text_augmentation_options_are_one_line(stores, tmp_path, args, message):
    r = CliRunner().invoke(
        extract_cli,
        [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(stores["data"]),
            "--out",
            str(tmp_path / "x.zarr"),
            "--audio-model",
            str(stores["enc"]["group"]),
            "--text-model",
            str(stores["enc"]["text"]),
            "-q",
            *args,
        ],
    )
    assert r.exit_code in (1, 2), r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.zarr").exists()
