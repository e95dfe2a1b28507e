"""Stale caches: every input that changes the cached numbers is in the fingerprint. Each case changes one of them
on a finished store, and the re-run is refused with a message naming what changed (nothing is overwritten)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_marketcalls, write_wav

from extract.run import ExtractConfig, extract
from extract.tiny import build_tiny_audio_encoder, build_tiny_text_encoder
from pipeline.store import CacheStore, FingerprintMismatch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoders):
    root = tmp_path_factory.mktemp("fp")
    data = write_marketcalls(root / "mc", calls=3, segments=2)
    cfg = ExtractConfig(
        dataset="marketcalls",
        data_dir=str(data),
        out=str(root / "c.zarr"),
        audio_model=str(tiny_encoders["group"]),
        text_model=str(tiny_encoders["text"]),
        num_workers=0,
        max_text_tokens=32,
    )
    extract(cfg, progress=False)
    other_audio = build_tiny_audio_encoder(root / "audio-seed1", norm="group", seed=1)
    other_text = build_tiny_text_encoder(root / "text-seed1", seed=1)
    return {"cfg": cfg, "data": data, "other_audio": other_audio, "other_text": other_text}


def _touch_audio(data: Path) -> None:
    wav = data / "audio" / "13800000000_0.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime


def _resize_audio(data: Path) -> None:
    write_wav(data / "audio" / "13800000000_0.wav", 2.75, 8000, seed=1234)


CHANGES = {  # name -> (config changes | data edit, words the refusal must contain)
    "audio encoder weights": (lambda b: {"audio_model": str(b["other_audio"])}, "audio.weights"),
    "text encoder weights": (lambda b: {"text_model": str(b["other_text"])}, "text.weights"),
    "audio revision": (lambda b: {"audio_revision": "v2"}, "audio.revision"),
    "text revision": (lambda b: {"text_revision": "v2"}, "text.revision"),
    "audio layer": (lambda b: {"audio_layer": 1}, "audio.layer: -1 → 1"),
    "text layer": (lambda b: {"text_layer": 1}, "text.layer: -1 → 1"),
    "rate policy": (lambda b: {"rate_policy": "paper-8k"}, "audio.rate_policy: encoder → paper-8k"),
    "frame pooling": (lambda b: {"audio_pool": 1}, "audio.pool: 2 → 1"),
    "max text tokens": (lambda b: {"max_text_tokens": 24}, "text.max_tokens: 32 → 24"),
    "compute dtype": (lambda b: {"dtype": "bfloat16"}, "compute_dtype: float32 → bfloat16"),
    "segmentation": (lambda b: {"max_seconds": 1.5}, "segmentation.max_seconds: 40.0 → 1.5"),
    "augmentation": (lambda b: {"augment": ("gain",), "variants": 1}, "augmentation"),
    "a transcript": (None, "manifest"),
    "a label": (None, "manifest"),
    "a row removed": (None, "manifest"),
    "audio file mtime": (lambda b: _touch_audio(b["data"]), "manifest"),
    "audio file size": (lambda b: _resize_audio(b["data"]), "manifest"),
}


def _csv_rows(data: Path) -> list[str]:
    return (data / "train.csv").read_text(encoding="utf-8").splitlines()


def _data_edit(name: str, data: Path):
    lines = _csv_rows(data)
    if name == "a transcript":
        cells = lines[1].split(",")
        cells[2] = cells[2] + "吗"
        lines[1] = ",".join(cells)
    elif name == "a label":  # every row of the first call (a call has one label)
        call, label = lines[1].split(",")[0], lines[1].split(",")[3]
        new = "B" if label != "B" else "C"
        lines = [lines[0]] + [
            ",".join(ln.split(",")[:3] + [new]) if ln.split(",")[0] == call else ln
            for ln in lines[1:]
        ]
    elif name == "a row removed":
        lines = lines[:-1]
    (data / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_number_changing_input_refuses_the_old_cache(built, tmp_path, name):
    cfg: ExtractConfig = built["cfg"]
    # work on copies: the dataset and the finished store
    data = Path(shutil.copytree(built["data"], tmp_path / "mc"))
    out = Path(shutil.copytree(cfg.out, tmp_path / "c.zarr"))
    cfg = replace(cfg, data_dir=str(data), out=str(out))
    change, words = CHANGES[name]
    b = {**built, "data": data}
    if change is None:
        _data_edit(name, data)
    else:
        result = change(b)
        if isinstance(result, dict):
            cfg = replace(cfg, **result)
    before = np.asarray(CacheStore.open(out).array("audio/hidden")[:])
    with pytest.raises(FingerprintMismatch) as e:
        extract(cfg, progress=False)
    msg = str(e.value)
    assert words in msg and "--overwrite" in msg, msg
    np.testing.assert_array_equal(before, np.asarray(CacheStore.open(out).array("audio/hidden")[:]))


def test_unchanged_inputs_resume_without_refusal(built, tmp_path):
    cfg: ExtractConfig = built["cfg"]
    out = Path(shutil.copytree(cfg.out, tmp_path / "c.zarr"))
    again = extract(
        replace(cfg, out=str(out), num_workers=1, write_threads=1, batch_seconds=7.0),
        progress=False,
    )
    assert (
        again.computed == 0 and again.done == again.total
    )  # workers, threads, batching change no number


# ----------------------------------------------------------------------------------------------- the contract
FACTS = dict(
    audio_weights="a" * 32,
    text_weights="b" * 32,
    tokenizer="c" * 32,
    encoder_rate=16000,
    audio_frames=999,
    normalize=False,
    compute_dtype="float32",
)
NON_DEFAULT = dict(
    rate_policy="paper-8k",
    audio_layer=6,
    text_layer=-2,
    max_text_tokens=64,
    max_seconds=20.0,
    augment=("gain", "speed"),
    variants=2,
    seed=3,
    audio_revision="v1",
    text_revision="main",
)


@pytest.mark.parametrize(
    "chosen, pinned",
    [({}, "4b44f8b47b5112c61b5d39b32ffac2e8"), (NON_DEFAULT, "e08c8a6277cd812048ec2921fdf8060d")],
)
def test_fingerprint_unchanged_by_the_settings_dataclass(chosen, pinned):
    """Compatibility pin: these hex values were computed by the code before CacheSettings existed
    (extract.run.build_settings) for the same settings and encoder facts; a store it wrote must still open."""
    from extract.augment import settings as augment_settings
    from pipeline.cache_settings import CacheSettings, EncoderFacts
    from pipeline.fingerprint import compute_fingerprint

    c = CacheSettings(**chosen)
    facts = EncoderFacts(**FACTS, input_rate=c.input_rate(16000))
    attrs = c.to_attrs("marketcalls", facts, augment_settings(c.augment, c.variants, c.seed))
    assert compute_fingerprint(attrs, "d" * 64) == pinned
    back, back_facts = CacheSettings.from_attrs(attrs)  # and it reads back to the same settings
    assert (
        back == replace(c, dtype="float32", audio_pool=c.pool) and back_facts == facts
    )  # resolved values


def test_every_cache_setting_is_an_extract_option():
    """Adding a CacheSettings field adds its msmtfn-extract option (name and default from the field)."""
    from dataclasses import fields

    from extract.cli import run_cmd
    from pipeline.cache_settings import CacheSettings

    opts = {p.name: p for p in run_cmd.params}
    for f in fields(CacheSettings):
        assert f.name in opts, f.name
        assert opts[f.name].opts == ["--" + f.name.replace("_", "-")]
        assert opts[f.name].default == f.metadata.get("cli_default", f.default)
