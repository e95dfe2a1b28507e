"""Stereo recordings as call centres record them: ``--channel`` picks the channel that is encoded (a
cache setting, so in the fingerprint and ``info``), ``customer`` reads each call's
``customer_channel`` column, a mono file under a channel setting is used as it is with a warning,
and msmtfn-predict reads new recordings as its run was trained."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from extract.cli import main as extract_cli
from pipeline.store import CacheStore
from predict.run import PredictConfig, PredictError, Predictor, _plan_call
from predict.transcripts import Piece
from train.config import TrainConfig
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000
# the customer's side: left for c0, c2, c4; right for the others
SIDES = {f"c{i}": ("left" if i % 2 == 0 else "right") for i in range(6)}


def stereo(seconds: float, seed: int) -> np.ndarray:
    """Left: a voiced tone; right: noise at another level (the two must encode differently)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.3 * np.sin(2 * np.pi * (140 + 20 * seed) * t)
    right = 0.05 * rng.standard_normal(len(t))
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    root = tmp_path_factory.mktemp("stereo")
    (root / "audio").mkdir()
    rows = []
    for i, (cid, side) in enumerate(SIDES.items()):
        sf.write(root / "audio" / f"{cid}.wav", stereo(3.0, i), RATE)
        split = ("train", "train", "valid", "valid", "test", "test")[i]
        rows.append([cid, f"audio/{cid}.wav", "好的谢谢", "ABCDE"[i % 5], split, side])
    sf.write(root / "audio" / "mono.wav", stereo(3.0, 9)[:, 0], RATE)
    rows.append(["m0", "audio/mono.wav", "好", "A", "train", ""])
    with open(root / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "audio", "text", "label", "split", "customer_channel"])
        w.writerows(rows)
    return root


def _extract(data: Path, out: Path, enc: dict, channel: str | None):
    args = ["--dataset", "csv", "--data-dir", str(data), "--out", str(out)]
    args += ["--audio-model", str(enc["group"]), "--text-model", str(enc["text"])]
    args += ["--loader-workers", "0", "--max-text-tokens", "16", "-q"]
    if channel:
        args += ["--channel", channel]
    return CliRunner().invoke(extract_cli, args)


@pytest.fixture(scope="module")
def stores(calls, tiny_encoders, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for channel in ("mix", "left", "right", "customer"):
        r = _extract(
            calls, root / f"{channel}.zarr", tiny_encoders, None if channel == "mix" else channel
        )
        assert r.exit_code in (0, 3), r.output
        out[channel] = CacheStore.open(root / f"{channel}.zarr")
    return out


def rows_of(store: CacheStore) -> dict[str, np.ndarray]:
    t = store.table()
    audio = store.array("audio/hidden")[:]
    return {cid: audio[i] for i, cid in enumerate(t["call_id"])}


def test_the_channel_chosen_is_the_one_encoded(stores):
    mix, left, right, customer = (rows_of(stores[c]) for c in ("mix", "left", "right", "customer"))
    for cid, side in SIDES.items():
        assert not np.array_equal(left[cid], right[cid]) and not np.array_equal(left[cid], mix[cid])
        # customer: each call's own column
        np.testing.assert_array_equal(customer[cid], (left if side == "left" else right)[cid])
    # a cache setting: in the fingerprint and in info; the default leaves older stores' settings alone
    fps = {c: s.fingerprint for c, s in stores.items()}
    assert len(set(fps.values())) == 4
    assert "channel" not in stores["mix"].settings["audio"]
    assert stores["left"].settings["audio"]["channel"] == "left"
    r = CliRunner().invoke(extract_cli, ["info", str(stores["customer"].path), "--json"])
    assert json.loads(r.output)["settings"]["audio"]["channel"] == "customer"


def test_a_mono_file_is_used_as_it_is_with_a_warning(stores):
    report = json.loads(Path(stores["left"].path, "report.json").read_text(encoding="utf-8"))
    text = json.dumps(report, ensure_ascii=False)
    assert "mono recording: --channel left has nothing to choose" in text
    t = stores["left"].table()
    m = int(np.flatnonzero(t["call_id"] == "m0")[0])
    assert stores["left"].done()[m]
    np.testing.assert_array_equal(
        stores["left"].array("audio/hidden")[m], stores["mix"].array("audio/hidden")[m]
    )
    # customer: the mono call has no customer_channel, so it is skipped with the reason
    t = stores["customer"].table()
    m = int(np.flatnonzero(t["call_id"] == "m0")[0])
    assert stores["customer"].skipped()[m]
    assert "no customer_channel" in stores["customer"].skip_reasons()[m]


def test_a_channel_that_no_recording_has_is_bad_usage(calls, tiny_encoders, tmp_path):
    r = _extract(calls, tmp_path / "x.zarr", tiny_encoders, "middle")
    assert r.exit_code == 2 and "'--channel': 'middle': give mix, left" in r.output, r.output
    r = _extract(calls, tmp_path / "y.zarr", tiny_encoders, "5")  # the files have 2 channels
    assert r.exit_code in (1, 3) and not CacheStore.open(tmp_path / "y.zarr").done()[:6].any()


def _run(store: CacheStore, out: Path) -> Path:
    m = fit(
        TrainConfig(
            cache=str(store.path), out=str(out), d_model=32, heads=4, ffn=64, gru_hidden=16,
            head_hidden=32, cross_layers=1, bottleneck_layers=1, epochs=1, batch_calls=2,
            device="cpu", plots=False, progress=False,
        )
    )  # fmt: skip
    return Path(m["run_dir"])


def _features(pred: Predictor, path: str, channel: str | None = None):
    result, segs = _plan_call(
        pred, path, "x", {"x": [Piece(0.0, 3.0, "好的谢谢")]}, "t", None, channel=channel
    )
    assert result.ok and len(segs) == 1, result.status
    (f,) = pred.encoders.encode(segs)
    return f.audio


def test_predict_reads_new_recordings_as_its_run_was_trained(stores, calls, tmp_path):
    wav = str(calls / "audio" / "c1.wav")
    run = _run(stores["right"], tmp_path / "right")
    pred = Predictor(PredictConfig(run=str(run), audio=(wav,), transcripts="t.csv", progress=False))
    row = rows_of(stores["right"])["c1"]
    f = _features(pred, wav)
    np.testing.assert_allclose(f.astype(np.float32), row[: len(f)].astype(np.float32), atol=1e-3)
    assert not np.allclose(row[: len(f)], rows_of(stores["left"])["c1"][: len(f)], atol=1e-3)

    run = _run(stores["customer"], tmp_path / "customer")
    with pytest.raises(PredictError, match="--customer-channel left"):
        Predictor(PredictConfig(run=str(run), audio=(wav,), transcripts="t.csv", progress=False))
    pred = Predictor(
        PredictConfig(
            run=str(run),
            audio=(wav,),
            transcripts="t.csv",
            customer_channel="right",
            progress=False,
        )
    )
    f = _features(pred, wav)
    np.testing.assert_allclose(f.astype(np.float32), row[: len(f)].astype(np.float32), atol=1e-3)


def test_load_segment_reads_the_named_channel(calls):
    from extract.audio import AudioError, load_segment

    path = str(calls / "audio" / "c0.wav")
    both, _ = sf.read(path, dtype="float32")
    for channel, want in (
        ("left", both[:, 0]),
        ("0", both[:, 0]),
        ("right", both[:, 1]),
        ("1", both[:, 1]),
    ):
        x, warnings = load_segment(path, None, None, RATE, channel)
        np.testing.assert_array_equal(x, want, err_msg=channel)
        assert warnings == []
    x, _ = load_segment(path, None, None, RATE)
    np.testing.assert_allclose(x, both.mean(axis=1), atol=1e-7)
    with pytest.raises(AudioError, match="has 2 channels; channel 2"):
        load_segment(path, None, None, RATE, "2")
