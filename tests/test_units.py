"""Conversation units (``--units turns``): a recording's timed, diarized rows grouped into an agent
turn plus the customer's reply, merged up to the segment limit, the same in extraction and in
``msmtfn-predict``; the audio is cut where the units are."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from extract.cli import main as extract_cli
from pipeline.store import CacheStore
from pipeline.units import speaker_roles, split_long_unit, turn_units
from predict.run import PredictConfig, Predictor, _plan_call
from predict.transcripts import read_transcript_csv
from train.config import TrainConfig
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000
# (start, end, speaker, text): units [0, 1] (2 s), [2, 3] (2.5 s), [4] (0.5 s); with a 2.5 s limit
# none of them merges with the next
TURNS = [
    (0.0, 1.0, "agent", "您好请问"),
    (1.0, 2.0, "customer", "我想了解"),
    (2.0, 3.0, "agent", "这款产品"),
    (3.0, 4.5, "customer", "价格多少"),
    (4.5, 5.0, "agent", "好的"),
]


def test_turns_pair_each_agent_turn_with_the_customers_reply():
    spans = [(a, b) for a, b, _, _ in TURNS]
    speakers = [s for _, _, s, _ in TURNS]
    assert turn_units(spans, speakers, 2.5) == [[0, 1], [2, 3], [4]]
    assert turn_units(spans, speakers, 4.5) == [[0, 1, 2, 3], [4]]
    assert turn_units(spans, speakers, 40) == [[0, 1, 2, 3, 4]]
    # one speaker's consecutive rows are one turn; a call opening with the customer
    assert turn_units([(0, 1), (1, 2), (2, 3), (3, 4)], ["agent"] * 2 + ["customer"] * 2, 40) == [
        [0, 1, 2, 3]
    ]
    assert turn_units([(0, 1), (1, 2), (2, 3)], ["caller", "rep", "Caller"], 2) == [[0], [1, 2]]
    # an open end (to the end of the recording) is never merged with what follows
    spans = [(0, 1), (1, math.inf), (5, 6)]
    assert turn_units(spans, ["agent", "customer", "agent"], 40) == [[0, 1], [2]]


def test_a_unit_over_the_limit_is_cut_between_its_utterances():
    # agent 0-10 and 10-25, customer 26-30: one 30 s unit over 20 s; then a 20 s unit that fits
    spans = [(0, 10), (10, 25), (26, 30), (30, 45), (45, 50)]
    speakers = ["agent", "agent", "customer", "agent", "customer"]
    assert turn_units(spans, speakers, 20) == [[0], [1, 2], [3, 4]]
    # pieces are never merged with the units around them, even where the sum would fit
    assert turn_units([(0, 3), (3, 6), (6, 7)], ["agent", "customer", "agent"], 5) == [
        [0],
        [1],
        [2],
    ]
    # one utterance over the limit stays whole (the caller cuts it into equal pieces)
    assert turn_units([(0, 50), (50, 55)], ["agent", "customer"], 40) == [[0], [1]]
    assert split_long_unit([(0, 1), (1, 2), (2, 3), (3, 4)], [0, 1, 2, 3], 2) == [[0, 1], [2, 3]]


def test_without_a_customer_name_the_first_speaker_is_the_agent():
    assert speaker_roles(["A", "B", "A", "C"]) == ["agent", "customer", "agent", "customer"]
    assert speaker_roles(["客服", "Customer"]) == ["agent", "customer"]
    assert turn_units([(0, 1), (1, 2), (2, 3), (3, 4)], ["B", "A", "B", "A"], 2.5) == [
        [0, 1],
        [2, 3],
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six 5-s calls of five diarized rows (each row a tone of its own pitch)."""
    root = tmp_path_factory.mktemp("units")
    (root / "audio").mkdir()
    t = np.arange(int(5.0 * RATE)) / RATE
    tone = np.zeros_like(t, dtype=np.float32)
    for k, (a, b, _, _) in enumerate(TURNS):
        sl = slice(int(a * RATE), int(b * RATE))
        tone[sl] = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t[sl])
    rows = []
    for i in range(6):
        sf.write(root / "audio" / f"c{i}.wav", tone, RATE)
        split = ("train", "train", "valid", "valid", "test", "test")[i]
        for a, b, speaker, text in TURNS:
            rows.append([f"c{i}", f"audio/c{i}.wav", a, b, text, "ABCDE"[i % 5], split, speaker])
    with open(root / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "audio", "start", "end", "text", "label", "split", "speaker"])
        w.writerows(rows)
    return root


def _extract(data: Path, out: Path, enc: dict, *extra: str, code: int = 0):
    args = ["--dataset", "csv", "--data-dir", str(data), "--out", str(out), "-q"]
    args += ["--audio-model", str(enc["group"]), "--text-model", str(enc["text"])]
    args += ["--loader-workers", "0", "--max-text-tokens", "24", "--max-seconds", "2.5"]
    r = CliRunner().invoke(extract_cli, args + list(extra))
    assert r.exit_code == code, r.output
    return CacheStore.open(out) if code == 0 else r.output


@pytest.fixture(scope="module")
def stores(data, tiny_encoders, tmp_path_factory):
    root = tmp_path_factory.mktemp("unit-stores")
    return {
        "rows": _extract(data, root / "rows.zarr", tiny_encoders),
        "turns": _extract(data, root / "turns.zarr", tiny_encoders, "--units", "turns"),
        "roles": _extract(
            data, root / "roles.zarr", tiny_encoders, "--units", "turns", "--roles", "prefix"
        ),
    }


def test_extraction_cuts_the_audio_at_the_units(stores):
    rows, turns = stores["rows"], stores["turns"]
    assert rows.n == 30 and turns.n == 18
    table = turns.table()
    c0 = [i for i, c in enumerate(table["call_id"]) if c == "c0"]
    assert [(table["start"][i], table["end"][i]) for i in c0] == [(0, 2), (2, 4.5), (4.5, 5)]
    assert [table["segment_id"][i] for i in c0] == [
        "c0/audio/c0.wav@0-1..c0/audio/c0.wav@1-2",
        "c0/audio/c0.wav@2-3..c0/audio/c0.wav@3-4.5",
        "c0/audio/c0.wav@4.5-5",
    ]
    texts = turns.segment_texts()
    assert [texts[i] for i in c0] == ["您好请问 我想了解", "这款产品 价格多少", "好的"]
    assert "units" not in rows.settings["segmentation"]
    assert turns.settings["segmentation"]["units"] == "turns"
    assert rows.fingerprint != turns.fingerprint
    # the audio encoded is the unit's span: its stored frames grow with its seconds (2, 2.5, 0.5)
    frames = turns.lengths("audio")
    a, b, c = (int(frames[i]) for i in c0)
    assert b > a > c > 0
    assert abs(a / b - 2.0 / 2.5) < 0.1


def test_extraction_cuts_a_unit_over_the_limit_where_its_rows_end(data, tiny_encoders, tmp_path):
    # 1.6 s: the 2.5 s unit (rows 2-3 and 3-4.5) is two segments ending where its rows end, each with
    # its own row's text, not two equal halves sharing the characters out
    st = _extract(
        data, tmp_path / "short.zarr", tiny_encoders, "--units", "turns", "--max-seconds", "1.6"
    )
    table, texts = st.table(), st.segment_texts()
    c0 = [i for i, c in enumerate(table["call_id"]) if c == "c0"]
    assert [(table["start"][i], table["end"][i]) for i in c0] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4.5),
        (4.5, 5),
    ]
    assert [texts[i] for i in c0] == [t for _, _, _, t in TURNS]
    assert st.settings["segmentation"]["long_units"] == "split between utterances"


def test_roles_are_written_before_each_utterance_of_a_unit(stores):
    texts = set(stores["roles"].segment_texts())
    assert "agent: 您好请问 customer: 我想了解" in texts and "agent: 好的" in texts


def test_predict_cuts_new_calls_into_the_runs_units(stores, data, tmp_path):
    m = fit(
        TrainConfig(
            cache=str(stores["turns"].path), out=str(tmp_path / "run"), d_model=32, heads=4, ffn=64,
            gru_hidden=16, head_hidden=32, cross_layers=1, bottleneck_layers=1, epochs=1,
            batch_calls=2, device="cpu", plots=False, progress=False,
        )
    )  # fmt: skip
    csv_path = tmp_path / "t.csv"
    lines = ["call_id,start,end,text,speaker"] + [f"c0,{a},{b},{t},{s}" for a, b, s, t in TURNS]
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    wav = str(data / "audio" / "c0.wav")
    transcripts = read_transcript_csv(csv_path)
    pred = Predictor(PredictConfig(run=m["run_dir"], audio=(wav,), transcripts=str(csv_path)))
    assert pred.plan.cut == "rows" and "conversation units" in pred.plan.note
    result, segs = _plan_call(pred, wav, "c0", transcripts, str(csv_path), None)
    assert result.ok, result.status
    assert [(s.start, s.end) for s in segs] == [(0, 2), (2, 4.5), (4.5, 5)]
    assert [s.text for s in segs] == ["您好请问 我想了解", "这款产品 价格多少", "好的"]
    # the same segments as training's: the text rows match the store's
    feats = pred.encoders.encode(segs)
    stored = stores["turns"].array("text/hidden")[:3]
    for f, row in zip(feats, stored):
        np.testing.assert_allclose(
            f.text.astype(np.float32), row[: len(f.text)].astype(np.float32), atol=1e-3
        )
    # --units rows overrides the run; a transcript without speakers falls back to its rows
    rows_pred = Predictor(
        PredictConfig(run=m["run_dir"], audio=(wav,), transcripts=str(csv_path), units="rows")
    )
    assert len(_plan_call(rows_pred, wav, "c0", transcripts, str(csv_path), None)[1]) == 5
    bare = tmp_path / "bare.csv"
    bare.write_text("call_id,start,end,text\nc0,0,1,a\nc0,1,2,b\n", encoding="utf-8")
    result, segs = _plan_call(pred, wav, "c0", read_transcript_csv(bare), str(bare), None)
    assert len(segs) == 2 and "without a speaker" in result.status


def test_units_refuse_data_they_cannot_group(data, tiny_encoders, tmp_path):
    lines = (data / "calls.csv").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "audio").symlink_to(data / "audio")
    # the fourth row (line 5 of the file) loses its speaker
    cells = lines[4].split(",")
    lines[4] = ",".join(cells[:-1] + [""])
    (bad / "calls.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = _extract(bad, tmp_path / "x.zarr", tiny_encoders, "--units", "turns", code=1)
    assert "calls.csv:5: no speaker" in out and "speaker" in out and "Traceback" not in out
    assert not (tmp_path / "x.zarr").exists()
    out = _extract(data, tmp_path / "y.zarr", tiny_encoders, "--units", "pairs", code=2)
    assert "--units" in out
