"""Speaker roles: a ``speaker`` column in the generic CSV (and in predict's transcripts) and ``--roles
prefix``, which writes the speaker's name before each utterance in the text the text encoder reads;
a cache setting, so the fingerprint and ``info`` carry it, and predict writes new transcripts alike."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from extract.cli import main as extract_cli
from pipeline.store import CacheStore
from predict.run import PredictConfig, Predictor, _plan_call
from predict.transcripts import read_transcript_csv
from train.config import TrainConfig
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("roles")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        sf.write(
            root / "audio" / f"c{i}.wav",
            0.2 * rng.standard_normal(3 * RATE).astype(np.float32),
            RATE,
        )
        split = ("train", "train", "valid", "valid", "test", "test")[i]
        label = "ABCDE"[i % 5]
        rows.append(
            [f"c{i}", f"audio/c{i}.wav", 0, 1.5, "您好请问有什么需要", label, split, "agent"]
        )
        rows.append(
            [f"c{i}", f"audio/c{i}.wav", 1.5, 3.0, "我想了解一下价格", label, split, "customer"]
        )
    with open(root / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "audio", "start", "end", "text", "label", "split", "speaker"])
        w.writerows(rows)
    return root


def _extract(data: Path, out: Path, enc: dict, *extra: str) -> CacheStore:
    args = ["--dataset", "csv", "--data-dir", str(data), "--out", str(out), "-q"]
    args += ["--audio-model", str(enc["group"]), "--text-model", str(enc["text"])]
    r = CliRunner().invoke(
        extract_cli, args + ["--loader-workers", "0", "--max-text-tokens", "24", *extra]
    )
    assert r.exit_code == 0, r.output
    return CacheStore.open(out)


@pytest.fixture(scope="module")
def stores(data, tiny_encoders, tmp_path_factory):
    root = tmp_path_factory.mktemp("role-stores")
    return {
        "none": _extract(data, root / "none.zarr", tiny_encoders),
        "prefix": _extract(data, root / "prefix.zarr", tiny_encoders, "--roles", "prefix"),
        "split": _extract(
            data, root / "split.zarr", tiny_encoders, "--roles", "prefix", "--max-seconds", "1"
        ),
    }


def test_roles_prefix_writes_the_speaker_before_each_utterance(stores):
    none, prefix = stores["none"].segment_texts(), stores["prefix"].segment_texts()
    assert set(none) == {"您好请问有什么需要", "我想了解一下价格"}
    assert set(prefix) == {"agent: 您好请问有什么需要", "customer: 我想了解一下价格"}
    # what the text encoder read differs; the audio does not
    a, b = stores["none"], stores["prefix"]
    assert not np.array_equal(a.array("text/hidden")[:], b.array("text/hidden")[:])
    np.testing.assert_array_equal(a.array("audio/hidden")[:], b.array("audio/hidden")[:])
    assert a.fingerprint != b.fingerprint
    assert "roles" not in a.settings["text"] and b.settings["text"]["roles"] == "prefix"
    # a row cut into pieces: every piece keeps its speaker
    pieces = stores["split"].segment_texts()
    assert len(pieces) == 24 and all(t.startswith(("agent: ", "customer: ")) for t in pieces)


@pytest.fixture(scope="module")
def prefix_run(stores, tmp_path_factory) -> str:
    """A run trained on the --roles prefix store (its training text: 'agent: …', 'customer: …')."""
    m = fit(
        TrainConfig(
            cache=str(stores["prefix"].path), out=str(tmp_path_factory.mktemp("pr") / "run"),
            d_model=32, heads=4, ffn=64, gru_hidden=16, head_hidden=32, cross_layers=1,
            bottleneck_layers=1, epochs=1, batch_calls=2, device="cpu", plots=False, progress=False,
        )
    )  # fmt: skip
    return m["run_dir"]


def test_predict_writes_new_transcripts_as_the_run_was_trained(stores, data, prefix_run, tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "call_id,start,end,text,speaker\nc0,0,1.5,您好请问有什么需要,agent\nc0,1.5,3,我想了解一下价格,customer\n",
        encoding="utf-8",
    )
    wav = str(data / "audio" / "c0.wav")
    pred = Predictor(
        PredictConfig(
            run=prefix_run, audio=(wav,), transcripts=str(csv_path), cut="rows", progress=False
        )
    )
    result, segs = _plan_call(pred, wav, "c0", read_transcript_csv(csv_path), str(csv_path), None)
    assert result.ok, result.status
    assert [s.text for s in segs] == ["agent: 您好请问有什么需要", "customer: 我想了解一下价格"]
    feats = pred.encoders.encode(segs)
    stored = stores["prefix"].array("text/hidden")[:2]
    for f, row in zip(feats, stored):
        np.testing.assert_allclose(
            f.text.astype(np.float32), row[: len(f.text)].astype(np.float32), atol=1e-3
        )


def test_an_unknown_roles_value_is_bad_usage(data, tiny_encoders, tmp_path):
    args = ["--dataset", "csv", "--data-dir", str(data), "--out", str(tmp_path / "x.zarr")]
    args += [
        "--audio-model",
        str(tiny_encoders["group"]),
        "--text-model",
        str(tiny_encoders["text"]),
    ]
    r = CliRunner().invoke(extract_cli, args + ["--roles", "suffix"])
    assert r.exit_code == 2 and "--roles" in r.output


def test_predict_writes_every_piece_of_a_long_row_as_extraction_does(stores):
    from predict.run import row_bounds
    from predict.transcripts import Piece

    rows = [
        Piece(0.0, 1.5, "您好请问有什么需要", "agent"),
        Piece(1.5, 3.0, "我想了解一下价格", "customer"),
    ]
    bounds, texts = row_bounds(rows, 3.0, 1.0, roles="prefix")
    # the 1-s store cut each 1.5-s row into two pieces, each with its speaker
    assert list(stores["split"].segment_texts()[:4]) == texts
    assert [b for b in bounds] == [(0.0, 0.75), (0.75, 1.5), (1.5, 2.25), (2.25, 3.0)]


# ---------------------------------------------------------------- speech recognition per channel
@pytest.fixture(scope="module")
def stereo(tmp_path_factory):
    """A call recorded as telephony systems do: one party per channel (left speaks first, then
    right), a tiny random Whisper, and a mono copy of the call."""
    from conftest import build_tiny_whisper

    root = tmp_path_factory.mktemp("stereo")
    rng = np.random.default_rng(5)
    t = np.arange(6 * RATE) / RATE
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    left = np.where(t < 3, voice, 0.0) + 0.005 * rng.standard_normal(len(t))
    right = np.where(t >= 3, voice, 0.0) + 0.005 * rng.standard_normal(len(t))
    sf.write(root / "call.wav", np.stack([left, right], 1).astype(np.float32), RATE)
    sf.write(root / "mono.wav", (left + right).astype(np.float32) / 2, RATE)
    return {
        "wav": str(root / "call.wav"),
        "mono": str(root / "mono.wav"),
        "whisper": str(build_tiny_whisper(root / "whisper")),
    }


def _predictor(run: str, wav: str, whisper: str, **kw) -> Predictor:
    return Predictor(PredictConfig(run=run, audio=(wav,), asr=whisper, progress=False, **kw))


def test_asr_transcribes_each_channel_on_its_own_and_names_its_speaker(stereo, prefix_run):
    from extract.audio import load_channels, load_segment
    from predict.run import CUT_RATE, _recognise
    from predict.transcripts import AsrTranscriber

    asr = AsrTranscriber(stereo["whisper"])
    wav = stereo["wav"]
    (left, right), _ = load_channels(wav, CUT_RATE)
    alone = {"left": asr(left, CUT_RATE), "right": asr(right, CUT_RATE)}
    assert alone["left"] and alone["right"], "the tiny recognizer hears something on each channel"
    x = load_segment(wav, None, None, CUT_RATE, "mix")[0]
    pred = _predictor(prefix_run, wav, stereo["whisper"])
    pieces, by_speaker = _recognise(pred, asr, wav, x, "mix")
    assert by_speaker
    expected = sorted(
        [(p.start, p.text, who) for who in ("left", "right") for p in alone[who]],
        key=lambda e: e[0],
    )
    assert [(p.start, p.text, p.speaker) for p in pieces] == expected
    # the customer's channel known: the roles of the run's training text
    pred = _predictor(prefix_run, wav, stereo["whisper"], customer_channel="right")
    pieces, _ = _recognise(pred, asr, wav, x, "mix")
    assert {p.speaker for p in pieces} == {"agent", "customer"}
    assert [p.text for p in pieces if p.speaker == "customer"] == [p.text for p in alone["right"]]
    # --asr-channels mix, a recording that came decoded, and a mono file: one transcript, no speakers
    mixed = asr(x, CUT_RATE)
    pred = _predictor(prefix_run, wav, stereo["whisper"], asr_channels="mix")
    assert _recognise(pred, asr, wav, x, "mix") == (mixed, False)
    assert _recognise(_predictor(prefix_run, wav, stereo["whisper"]), asr, wav, x, None) == (
        mixed,
        False,
    )
    mono = load_segment(stereo["mono"], None, None, CUT_RATE, "mix")[0]
    assert _recognise(pred, asr, stereo["mono"], mono, "mix")[1] is False


def test_predict_asr_on_stereo_writes_the_speakers_as_the_run_was_trained(
    stereo, prefix_run, tmp_path
):
    from predict.cli import main as predict_cli

    def segment_texts(*extra: str) -> list[str]:
        out = tmp_path / f"p{len(extra)}.csv"
        segs = tmp_path / f"s{len(extra)}.csv"
        r = CliRunner().invoke(
            predict_cli,
            ["--run", prefix_run, "--audio", stereo["wav"], "--asr", stereo["whisper"],
             "--out", str(out), "--segments-out", str(segs), "-q", *extra],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        (row,) = csv.DictReader(open(out, encoding="utf-8"))
        assert row["status"].startswith("ok"), row  # "ok", or ok with a note
        return [s["text"] for s in csv.DictReader(open(segs, encoding="utf-8")) if s["text"]]

    split = segment_texts("--customer-channel", "right")
    words = " ".join(split)
    assert "agent: " in words and "customer: " in words  # --roles prefix, as in training
    mixed = segment_texts("--asr-channels", "mix")
    assert mixed and not any(w in " ".join(mixed) for w in ("agent: ", "customer: "))


def test_serve_asr_transcribes_each_channel_as_predict_does(stereo, prefix_run, tmp_path):
    from conftest import ServeProcess

    from predict.cli import main as predict_cli

    out, segs = tmp_path / "p.csv", tmp_path / "s.csv"
    r = CliRunner().invoke(
        predict_cli,
        ["--run", prefix_run, "--audio", stereo["wav"], "--asr", stereo["whisper"],
         "--customer-channel", "right", "--device", "cpu", "--threads", "1",
         "--out", str(out), "--segments-out", str(segs), "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    expected = [s["text"] for s in csv.DictReader(open(segs, encoding="utf-8"))]
    words = " ".join(expected)
    assert "agent: " in words and "customer: " in words
    for channels in ("split", "mix"):
        server = ServeProcess(
            Path(prefix_run), tmp_path / channels, "--asr", stereo["whisper"],
            "--asr-channels", channels,
        )  # fmt: skip
        try:
            status, body = server.predict(Path(stereo["wav"]), key=None, customer_channel="right")
        finally:
            server.stop()
        assert status == 200, body
        texts = [s["text"] for s in body["segments"]]
        if channels == "split":  # the request's customer channel names the speakers
            assert texts == expected
        else:
            assert any(texts) and not any(w in " ".join(texts) for w in ("agent: ", "customer: "))
