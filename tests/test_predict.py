"""msmtfn-predict: long recordings cut at pauses below the limit, features equal to extract's, a tiny trained run
applied to new recordings (deterministic, probabilities per task summing to 1), bad recordings and missing
transcripts named and skipped, encoders other than the run's refused with one line."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import assert_same_features, build_tiny_run, build_tiny_whisper, write_marketcalls

from extract.run import ExtractConfig, extract
from pipeline.store import CacheStore
from predict.cli import main as predict_cli
from predict.run import PredictConfig, PredictError, Predictor, _plan_call, predict_calls
from predict.segmenter import CutterConfig, choose_cuts, cut_recording, vad_available
from predict.transcripts import Piece, assign_text, pieces_from_chunks, read_transcript_csv
from train.config import TrainConfig
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_SECONDS = (
    8.0  # the tiny run's segment limit (its cache setting), so short test recordings get cut
)


def bursty(
    seconds: float, rate: int, seed: int, burst=(2.0, 9.0), pause=(0.4, 1.5), speech_level=0.3
):
    """Speech-like bursts (harmonics with a syllable-rate envelope and noise) between quiet pauses.
    Returns (samples, [(pause_start, pause_end), …])."""
    rng = np.random.default_rng(seed)
    parts, pauses, t = [], [], 0.0
    while round((seconds - t) * rate) > 0:
        d = min(float(rng.uniform(*burst)), seconds - t)
        n = int(round(d * rate))
        tt = np.arange(n) / rate
        f0 = float(rng.uniform(110, 240))
        voice = sum(np.sin(2 * np.pi * f0 * k * tt) / k for k in range(1, 6))
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * tt) ** 2  # ~4 syllables/s, never silent
        parts.append(speech_level * voice * envelope + 0.02 * rng.standard_normal(n))
        t += n / rate
        if round((seconds - t) * rate) <= 0:
            break
        p = min(float(rng.uniform(*pause)), seconds - t)
        n = int(round(p * rate))
        pauses.append((t, t + n / rate))
        parts.append(0.002 * rng.standard_normal(n))
        t += n / rate
    return np.concatenate(parts).astype(np.float32), pauses


def in_a_pause(cut: float, pauses) -> bool:
    return any(a <= cut <= b for a, b in pauses)


# ---------------------------------------------------------------------------------------------- cutting
@pytest.mark.parametrize("method", ["energy", "vad"])
def test_three_minute_recording_is_cut_below_the_limit_in_its_pauses(method):
    if method == "vad" and not vad_available():
        pytest.skip("silero-vad is not installed")
    rate = 16000
    for seed in range(3):
        x, pauses = bursty(180.0, rate, seed)
        segs = cut_recording(x, rate, CutterConfig(method=method, max_seconds=40.0))
        assert segs[0][0] == 0.0 and segs[-1][1] == pytest.approx(len(x) / rate)
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(segs[:-1], segs[1:])), (
            "segments must tile the recording"
        )
        lengths = [b - a for a, b in segs]
        assert max(lengths) <= 40.0, lengths
        assert len(segs) >= 5 and min(lengths[:-1]) >= 30.0, (
            lengths
        )  # cuts near the limit, not every pause
        cuts = [a for a, _ in segs[1:]]
        assert all(in_a_pause(c, pauses) for c in cuts), (method, seed, cuts, pauses)


def test_a_recording_without_pauses_is_still_cut_below_the_limit():
    rate = 8000
    x = (0.1 * np.random.default_rng(0).standard_normal(int(95.5 * rate))).astype(np.float32)
    segs = cut_recording(x, rate, CutterConfig(max_seconds=40.0))
    assert max(b - a for a, b in segs) <= 40.0 and segs[-1][1] == pytest.approx(95.5)
    assert min(b - a for a, b in segs) >= 1.0  # no tail too short for the encoder


def test_cut_goes_to_the_middle_of_the_longest_quiet_run():
    score = np.full(1000, 60.0)  # 10 s of "speech" at 10 ms frames
    score[300:320] = 0.0  # short pause at 3.0–3.2 s
    score[700:800] = 0.0  # long pause at 7.0–8.0 s
    cuts = choose_cuts(
        score, 0.01, 10.0, CutterConfig(max_seconds=9.0, search_seconds=8.0, min_seconds=0.5), 3.0
    )
    assert cuts == [pytest.approx(7.5, abs=0.011)]


# ----------------------------------------------------------------------------------------- transcripts
def test_text_goes_to_the_segment_it_overlaps_most():
    bounds = [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    pieces = [
        Piece(1, 3, "a"),
        Piece(8, 11, "b"),
        Piece(9.5, 12, "c"),
        Piece(19, 21, "d"),
        Piece(30, 31, "e"),
        Piece(15, 15, "f"),
    ]
    assert assign_text(pieces, bounds) == ["a b", "c f d", "e"]


def test_asr_chunks_become_timed_pieces():
    chunks = [
        {"timestamp": (0.0, 4.2), "text": " 你好"},
        {"timestamp": (4.2, None), "text": "再见 "},
        {"timestamp": (5.0, 6.0), "text": "  "},
    ]
    assert pieces_from_chunks(chunks, 9.0) == [Piece(0.0, 4.2, "你好"), Piece(4.2, 9.0, "再见")]
    assert pieces_from_chunks([], 3.0, fallback_text="好的") == [Piece(0.0, 3.0, "好的")]


def test_transcript_csv_without_a_column_is_one_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("call_id,text\nc1,hello\n", encoding="utf-8")
    with pytest.raises(Exception) as e:
        read_transcript_csv(p)
    assert (
        "missing column start, end" in str(e.value)
        and str(p) in str(e.value)
        and "\n" not in str(e.value)
    )


# ----------------------------------------------------------------------------------------- a tiny run
@pytest.fixture(scope="module")
def tiny_run(tiny_encoders, tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("predict"), tiny_encoders, MAX_SECONDS)


def pause_limit(run: Path) -> float:
    """The longest piece predict cuts for ``run``: its training segments' recorded 95th percentile."""
    from pipeline.segment_profile import SegmentProfile

    meta = json.loads((run / "config.json").read_text())
    return SegmentProfile.from_record(meta["cache"]["segmentation"]).pause_limit


def _new_calls(folder: Path, transcripts_for: list[str]) -> tuple[list[str], Path, dict]:
    """Two 20 s recordings (8 kHz) with transcripts, one without; returns (paths, transcripts.csv, pauses)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, pauses = [], {}
    for i, name in enumerate(["callA", "callB", "callC"]):
        x, p = bursty(20.0, 8000, seed=10 + i, burst=(2.0, 5.0))
        sf.write(folder / f"{name}.wav", x, 8000)
        paths.append(str(folder / f"{name}.wav"))
        pauses[name] = p
    rows = [
        ("callA", 0.0, 3.0, "你好我想了解一下"),
        ("callA", 3.5, 9.0, "价格多少"),
        ("callA", 12.0, 19.5, "好的谢谢"),
        ("callB", 0.5, 18.0, "不需要谢谢再见"),
    ]
    csv_path = folder / "transcripts.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "start", "end", "text"])
        w.writerows(r for r in rows if r[0] in transcripts_for)
    return paths, csv_path, pauses


def test_features_equal_what_extract_writes(tiny_run, tmp_path):
    """A recording run through predict's path (decode, cut, CSV text, the run's encoders rebuilt from config.json)
    gives the features msmtfn-extract stored for the same audio and text."""
    store = CacheStore.open(tiny_run["cache"])
    table = store.table()
    lengths_a, lengths_t = store.lengths("audio"), store.lengths("text")
    pred = Predictor(
        PredictConfig(run=str(tiny_run["run"]), audio=(), transcripts="unused.csv", progress=False)
    )
    # recordings no longer than the training's pieces, so that predict keeps each whole
    short = (table["segment_index"] == 0) & (
        store.segment_seconds() <= pause_limit(tiny_run["run"])
    )
    rows = [int(i) for i in np.flatnonzero(short)[:3]]
    assert len(rows) == 3
    texts = {}
    for f in ("train.csv", "valid.csv", "test.csv"):
        for r in csv.DictReader(open(tiny_run["data"] / f, encoding="utf-8")):
            texts[r["Audio_id"]] = r["text"]
    for row in rows:
        path = table["source_path"][row]
        stem = Path(path).stem
        dur = sf.info(path).duration
        result, segs = _plan_call(
            pred, path, stem, {stem: [Piece(0.0, dur, texts[stem])]}, "t.csv", None
        )
        assert result.ok and len(segs) == 1
        (f,) = pred.encoders.encode(segs)
        assert len(f.audio) == lengths_a[row] and len(f.text) == lengths_t[row]
        assert_same_features(
            f.audio, store.array("audio/hidden")[row, : lengths_a[row]], err_msg=stem
        )
        assert_same_features(
            f.text, store.array("text/hidden")[row, : lengths_t[row]], err_msg=stem
        )
        assert np.abs(f.audio.astype(np.float32)).max() > 0


def test_predict_end_to_end_with_bad_recordings(tiny_run, tmp_path):
    paths, csv_path, pauses = _new_calls(tmp_path / "calls", ["callA", "callB"])
    bad = tmp_path / "calls"
    (bad / "notaudio.wav").write_text("this is not a wav file")
    (bad / "empty.wav").write_bytes(b"")
    nan = np.zeros(8000, dtype=np.float32)
    nan[100] = np.nan
    sf.write(bad / "nan.wav", nan, 8000, subtype="FLOAT")
    inputs = paths + [
        str(bad / "notaudio.wav"),
        str(bad / "empty.wav"),
        str(bad / "nan.wav"),
        str(bad / "missing.wav"),
    ]
    out, segs_out = tmp_path / "predictions.csv", tmp_path / "segments.csv"
    # as a shell gives `--audio calls/*.wav`: one --audio value, the other files after it
    args = [
        "--run",
        str(tiny_run["run"]),
        "--transcripts",
        str(csv_path),
        "--out",
        str(out),
        "--segments-out",
        str(segs_out),
        "-q",
        "--audio",
        *inputs,
    ]
    res = CliRunner().invoke(predict_cli, args)
    assert res.exit_code == 0, res.output
    summary = [line for line in res.output.splitlines() if line.strip()]
    assert len(summary) == 1 and summary[0].startswith("predicted 2 of 7 recordings"), res.output

    rows = {r["call_id"]: r for r in csv.DictReader(open(out, encoding="utf-8"))}
    assert list(rows) == ["callA", "callB", "callC", "notaudio", "empty", "nan", "missing"]
    assert rows["callA"]["status"] == rows["callB"]["status"] == "ok"
    assert rows["callC"]["status"] == f"skipped: no transcript rows for call_id callC in {csv_path}"
    assert rows["notaudio"]["status"].startswith("skipped: cannot decode audio")
    assert rows["empty"]["status"] == "skipped: empty file (0 bytes)"
    assert rows["nan"]["status"] == "skipped: audio has 1 NaN/inf samples"
    assert rows["missing"]["status"] == "skipped: audio file not found"
    limit = pause_limit(tiny_run["run"])
    assert 5.0 <= limit <= MAX_SECONDS  # the 6 training segments' 95th percentile
    for name in ("callA", "callB"):
        r = rows[name]
        # 20 s cut at pauses into pieces of at most the training's length, cut in the second half of each window
        assert 20 / limit <= int(r["segments"]) <= 40 / limit and float(
            r["duration_s"]
        ) == pytest.approx(20.0, abs=0.01)
        for task, classes in (
            ("5", "A B C D E"),
            ("4", "A B C D+E"),
            ("3", "A B+C D+E"),
            ("2", "A+B+C D+E"),
        ):
            probs = {c: float(r[f"p_{task}_{c}"]) for c in classes.split()}
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5), (name, task, probs)
            assert all(0 < p < 1 for p in probs.values())
            assert r[f"pred_{task}"] == max(probs, key=probs.get)
    assert rows["callC"]["pred_5"] == "" and rows["missing"]["segments"] == "0"

    seg_rows = list(csv.DictReader(open(segs_out, encoding="utf-8")))
    a = [s for s in seg_rows if s["call_id"] == "callA"]
    assert [int(s["segment"]) for s in a] == list(range(int(rows["callA"]["segments"])))
    assert all(s["status"] == "ok" for s in a) and float(a[-1]["end"]) == pytest.approx(
        20.0, abs=0.01
    )
    assert all(float(s["end"]) - float(s["start"]) <= limit for s in a)
    assert all(in_a_pause(float(s["start"]), pauses["callA"]) for s in a[1:]), (a, pauses["callA"])
    # every transcript row reaches exactly one segment, in order
    assert " ".join(s["text"] for s in a if s["text"]) == "你好我想了解一下 价格多少 好的谢谢"

    # deterministic: the same inputs give byte-identical outputs
    first = out.read_bytes(), segs_out.read_bytes()
    res2 = CliRunner().invoke(predict_cli, args)
    assert res2.exit_code == 0, res2.output
    assert (out.read_bytes(), segs_out.read_bytes()) == first


def test_library_call_matches_cli_and_json(tiny_run, tmp_path):
    paths, csv_path, _ = _new_calls(tmp_path / "calls", ["callA", "callB"])
    result = predict_calls(
        PredictConfig(
            run=str(tiny_run["run"]),
            audio=(paths[0], paths[1], paths[0]),
            transcripts=str(csv_path),
            progress=False,
        )
    )
    assert result.predicted == 2 and result.skipped == 1
    assert result.calls[2].status == f"skipped: duplicate call id (also {paths[0]})"
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(tiny_run["run"]),
            "--audio",
            paths[0],
            "--audio",
            paths[1],
            "--transcripts",
            str(csv_path),
            "--out",
            str(out),
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["predicted"] == 2 and [t["name"] for t in data["tasks"]] == ["5", "4", "3", "2"]
    for call, lib in zip(data["calls"], result.calls):
        assert call["predictions"]["5"]["probs"] == pytest.approx(
            lib.predictions["5"]["probs"], abs=1e-6
        )


def test_nothing_predicted_exits_1_with_one_line(tiny_run, tmp_path):
    paths, csv_path, _ = _new_calls(tmp_path / "calls", [])
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(tiny_run["run"]),
            "--audio",
            paths[0],
            "--transcripts",
            str(csv_path),
            "--out",
            str(tmp_path / "p.csv"),
            "-q",
        ],
    )
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        r"predicted 0 of 1 recordings in [\d.]+ s; cut at pauses into pieces of "
        r"≤ [\d.]+ s \(training: .*\); skipped 1: callA \(reasons in "
        r"the status column\) → .*p\.csv",
        lines[0],
    ), lines
    (row,) = csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8"))
    assert row["status"] == f"skipped: no transcript rows for call_id callA in {csv_path}"


def test_other_encoders_than_the_runs_are_refused_with_one_line(tiny_run, tmp_path):
    from extract.tiny import build_tiny_audio_encoder, build_tiny_text_encoder

    other_text = build_tiny_text_encoder(tmp_path / "text-seed1", seed=1)
    paths, csv_path, _ = _new_calls(tmp_path / "calls", ["callA"])
    base = [
        "--run",
        str(tiny_run["run"]),
        "--audio",
        paths[0],
        "--transcripts",
        str(csv_path),
        "--out",
        str(tmp_path / "p.csv"),
        "-q",
    ]
    res = CliRunner().invoke(predict_cli, base + ["--text-model", str(other_text)])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and "text encoder weights" in lines[0] and "audio encoder" not in lines[0]
    ), lines
    assert str(tiny_run["run"]) in lines[0] and "--audio-model/--text-model" in lines[0]
    assert not (tmp_path / "p.csv").exists()

    other_audio = build_tiny_audio_encoder(tmp_path / "audio-layer", norm="layer")
    res = CliRunner().invoke(predict_cli, base + ["--audio-model", str(other_audio)])
    assert res.exit_code == 1 and "audio encoder weights" in res.output, res.output

    # a copy of the run's own encoders in another folder is accepted: identity is by weights, not by path
    import shutil

    copy = tmp_path / "copy-of-text"
    shutil.copytree(tiny_run["text"], copy)
    res = CliRunner().invoke(predict_cli, base + ["--text-model", str(copy)])
    assert res.exit_code == 0, res.output


def test_bad_run_folder_and_missing_transcript_source(tmp_path):
    with pytest.raises(PredictError, match="exactly one of"):
        PredictConfig(run=str(tmp_path), audio=("a.wav",))
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(tmp_path),
            "--audio",
            "a.wav",
            "--transcripts",
            "t.csv",
            "--out",
            str(tmp_path / "p.csv"),
            "-q",
        ],
    )
    assert (
        res.exit_code == 1
        and "config.json" in res.output
        and len(res.output.strip().splitlines()) == 1
    )
    res = CliRunner().invoke(
        predict_cli, ["--run", str(tmp_path), "--audio", "a.wav", "--out", "p.csv"]
    )
    assert res.exit_code == 2 and "exactly one of --transcripts CSV or --asr MODEL" in res.output


def test_csv_helpers_round_trip_quotes(tmp_path):
    p = tmp_path / "t.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Call_ID", "Start", "End", "Text", "speaker"])
        w.writerow(["c1", "2.5", "4", 'he said "yes, please"', "agent"])
        w.writerow(["c1", "0", "1", "first", "client"])
        w.writerow(["c1", "x", "1", "bad row", "client"])
    got = read_transcript_csv(p)
    # the optional speaker column is read (for runs made with --roles prefix)
    assert got == {
        "c1": [
            Piece(0.0, 1.0, "first", "client"),
            Piece(2.5, 4.0, 'he said "yes, please"', "agent"),
        ]
    }


# ------------------------------------------------------------------------------------ speech recognition
def test_asr_transcripts_through_the_transformers_pipeline(tiny_run, tmp_path):
    from predict.transcripts import AsrTranscriber

    whisper = build_tiny_whisper(tmp_path / "tiny-whisper")
    paths, _, _ = _new_calls(tmp_path / "calls", [])
    x, rate = sf.read(paths[0], dtype="float32")
    assert rate == 8000  # the transcriber brings it to the model's 16 kHz
    pieces = AsrTranscriber(str(whisper))(x, rate)
    assert pieces and all(0.0 <= p.start <= p.end <= 20.0 + 1e-6 and p.text for p in pieces), pieces

    out, segs_out = tmp_path / "p.csv", tmp_path / "s.csv"
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(tiny_run["run"]),
            "--audio",
            paths[0],
            "--asr",
            str(whisper),
            "--out",
            str(out),
            "--segments-out",
            str(segs_out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    (row,) = csv.DictReader(open(out, encoding="utf-8"))
    assert row["status"] == "ok" and row["pred_5"] in "ABCDE"
    seg_rows = list(csv.DictReader(open(segs_out, encoding="utf-8")))
    # every recognised piece reaches exactly one segment, in time order
    assert " ".join(s["text"] for s in seg_rows if s["text"]) == " ".join(p.text for p in pieces)


def test_segment_level_and_regression_heads_give_per_segment_rows(tiny_run, tmp_path):
    """A run whose scheme labels segments (CMU-MOSI-like ``sentiment``: a regression score and classes) answers per
    segment: its rows go to --segments-out, with the value for the regression and probabilities for the classes.
    The model here is a stand-in with segment-level heads (what train/ builds for such schemes)."""
    import torch

    from pipeline.labels import get_scheme
    from predict.run import output_tasks, segments_csv

    class SegmentHeads(torch.nn.Module):
        modalities = ("audio", "text")
        needs_every_text_row = False

        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleDict(
                {
                    "score": torch.nn.Identity(),
                    "2": torch.nn.Identity(),
                    "5": torch.nn.Identity(),
                    "7": torch.nn.Identity(),
                }
            )

        # predict runs the model's two halves apart (segment vectors, then the heads over calls)
        def segment_vectors(self, audio, audio_len, text, text_len):
            assert audio.shape[0] == text.shape[0]
            return text.float().sum(1)[:, :7] / text_len[:, None]  # (S, 7): one row per segment

        def outputs_of(self, v, seg_counts):
            assert int(seg_counts.sum()) == v.shape[0]
            return {"score": v[:, :1], "2": v[:, :2], "5": v[:, :5], "7": v}

    paths, csv_path, _ = _new_calls(tmp_path / "calls", ["callA", "callB"])
    cfg = PredictConfig(
        run=str(tiny_run["run"]), audio=tuple(paths[:2]), transcripts=str(csv_path), progress=False
    )
    pred = Predictor(cfg)
    pred.model, pred.scheme = SegmentHeads(), get_scheme("sentiment")
    pred.tasks = output_tasks(pred.scheme, {"score": 1, "2": 2, "5": 5, "7": 7})
    result = predict_calls(cfg, predictor=pred)
    assert result.predicted == 2
    rows = list(csv.DictReader(io.StringIO(segments_csv(result))))
    assert len(rows) == sum(c.segments for c in result.calls) >= 6
    scheme = get_scheme("sentiment")
    for r in rows:
        score = float(r["pred_score"])
        for task, classes in (
            ("2", ["negative", "non-negative"]),
            ("7", [str(v) for v in range(-3, 4)]),
        ):
            # the class heads trained beside the score: their own probabilities, as "<task>:head"
            probs = {c: float(r[f"p_{task}:head_{c}"]) for c in classes}
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert r[f"pred_{task}:head"] == max(probs, key=probs.get)
            # the reported class comes from the score, where the metrics take Acc2/Acc7 from
            lo, hi = scheme.task("score").value_range
            expected = scheme.task(task).classes[
                scheme.task(task).encode_one(repr(min(max(score, lo), hi)))
            ]
            assert r[f"pred_{task}"] == expected and r[f"p_{task}_{classes[0]}"] == ""
    assert len({r["pred_score"] for r in rows}) > 1  # each segment its own answer
    assert all(not c.predictions for c in result.calls)  # nothing at call level


def test_single_head_run_reports_coarser_tasks_through_the_label_maps(tiny_run, tmp_path):
    """--no-mtl runs have only the --task head; the coarser tasks' probabilities are its classes summed through
    the scheme's maps (D+E = D + E) and each takes its most probable class: the metrics' rule too."""
    import torch

    from predict.run import output_tasks

    class OneHead(torch.nn.Module):
        modalities = ("audio", "text")
        needs_every_text_row = False

        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleDict({"5": torch.nn.Identity()})

        def segment_vectors(self, audio, audio_len, text, text_len):
            return text.float().sum(1)[:, :5] / text_len[:, None]

        def outputs_of(self, per_seg, seg_counts):
            return {
                "5": torch.stack([c.mean(0) for c in torch.split(per_seg, seg_counts.tolist())])
            }

    paths, csv_path, _ = _new_calls(tmp_path / "calls", ["callA", "callB"])
    cfg = PredictConfig(
        run=str(tiny_run["run"]), audio=tuple(paths[:2]), transcripts=str(csv_path), progress=False
    )
    pred = Predictor(cfg)
    pred.model = OneHead()
    pred.tasks = output_tasks(pred.scheme, {"5": 5})
    assert [t["name"] for t in pred.tasks] == ["5", "4", "3", "2"]
    for call in predict_calls(cfg, predictor=pred).calls:
        p5, p2 = call.predictions["5"]["probs"], call.predictions["2"]["probs"]
        assert p2["D+E"] == pytest.approx(p5["D"] + p5["E"])
        assert p2["A+B+C"] == pytest.approx(p5["A"] + p5["B"] + p5["C"])
        assert call.predictions["3"]["probs"]["B+C"] == pytest.approx(p5["B"] + p5["C"])
        assert call.predictions["2"]["label"] == max(p2, key=p2.get)


def test_a_trained_mosi_run_predicts_a_score_for_every_segment(tiny_encoders, tmp_path):
    """The real thing end to end for segment-level labels: CMU-MOSI SDK files extracted with the tiny encoders,
    a regression run trained on them, then new whole-video recordings predicted segment by segment."""
    from test_datasets_benchmarks import make_sdk, write_csv

    from predict.run import segments_csv

    root = make_sdk(tmp_path / "mosi")
    split = write_csv(
        tmp_path / "split.csv",
        [
            {"video_id": v, "split": s}
            for v, s in (("vidA", "train"), ("vidB", "valid"), ("vidC", "train"), ("vidD", "test"))
        ],
    )
    cache = tmp_path / "mosi.zarr"
    extract(
        ExtractConfig(
            dataset="mosi",
            data_dir=str(root),
            out=str(cache),
            audio_model=str(tiny_encoders["group"]),
            text_model=str(tiny_encoders["text"]),
            num_workers=0,
            max_text_tokens=32,
            max_seconds=MAX_SECONDS,
            dataset_options={"split_file": str(split)},
        ),
        progress=False,
    )
    m = fit(
        TrainConfig(
            cache=str(cache),
            out=str(tmp_path / "run"),
            d_model=32,
            heads=4,
            ffn=64,
            gru_hidden=16,
            head_hidden=32,
            cross_layers=1,
            bottleneck_layers=1,
            epochs=1,
            device="cpu",
            plots=False,
            progress=False,
        )
    )
    assert m["level"] == "segment" and m["config"]["task"] == "score"
    wavs = sorted((root / "Raw" / "Audio" / "WAV_16000" / "Full").glob("*.wav"))[:2]
    rows = []
    for w in wavs:
        seconds = sf.info(str(w)).duration
        rows += [
            {"call_id": w.stem, "start": 0.0, "end": seconds / 2, "text": "really good movie"},
            {
                "call_id": w.stem,
                "start": seconds / 2,
                "end": seconds,
                "text": "but the ending was bad",
            },
        ]
    transcripts = write_csv(tmp_path / "t.csv", rows)
    cfg = PredictConfig(
        run=m["run_dir"], audio=tuple(map(str, wavs)), transcripts=str(transcripts), progress=False
    )
    result = predict_calls(cfg)
    assert result.predicted == 2
    seg_rows = list(csv.DictReader(io.StringIO(segments_csv(result))))
    assert len(seg_rows) == sum(c.segments for c in result.calls) >= 2
    for r in seg_rows:
        assert np.isfinite(float(r["pred_score"]))
        probs = {c: float(r[f"p_7:head_{c}"]) for c in [str(v) for v in range(-3, 4)]}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert r["pred_7"] in [str(v) for v in range(-3, 4)]  # from the score, as Acc7 is computed
    again = list(csv.DictReader(io.StringIO(segments_csv(predict_calls(cfg)))))
    assert again == seg_rows, "deterministic"


def test_a_glob_that_matches_nothing_is_one_line_not_a_call_named_star(tmp_path):
    """The pattern is refused before the run is read (exit 2); a plain missing name is still kept (a row that
    says it is missing) and a matching pattern is expanded."""
    from predict.cli import _expand

    pattern = str(tmp_path / "nomatch" / "*.wav")
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(tmp_path / "run"),
            "--audio",
            pattern,
            "--transcripts",
            str(tmp_path / "t.csv"),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert "'--audio'" in line and pattern in line and "no files match this pattern" in line, line
    assert "Traceback" not in res.output and not out.exists()

    for name in ("b.wav", "a.wav", "odd[1].wav"):
        (tmp_path / name).write_bytes(b"")
    assert _expand((str(tmp_path / "*.wav"),)) == [
        str(tmp_path / n) for n in ("a.wav", "b.wav", "odd[1].wav")
    ]
    assert _expand((str(tmp_path / "odd[1].wav"), "missing.wav")) == [
        str(tmp_path / "odd[1].wav"),
        "missing.wav",
    ]


def test_a_run_made_with_relative_paths_predicts_from_another_folder(
    tiny_encoders, tmp_path, monkeypatch
):
    """Encoders given as relative folders (as the demo records cache/tiny-encoders/...) are found from any
    working directory through the folder the run was trained from; the weights are checked all the same."""
    import shutil

    proj = tmp_path / "proj"
    write_marketcalls(proj / "data", calls=9, segments=2)
    shutil.copytree(tiny_encoders["group"], proj / "enc" / "audio")
    shutil.copytree(tiny_encoders["text"], proj / "enc" / "text")
    monkeypatch.chdir(proj)
    extract(
        ExtractConfig(
            dataset="marketcalls",
            data_dir="data",
            out="cache.zarr",
            audio_model="enc/audio",
            text_model="enc/text",
            num_workers=0,
            max_text_tokens=32,
            max_seconds=MAX_SECONDS,
        ),
        progress=False,
    )
    m = fit(
        TrainConfig(
            cache="cache.zarr",
            d_model=32,
            heads=4,
            ffn=64,
            gru_hidden=16,
            head_hidden=32,
            cross_layers=1,
            bottleneck_layers=1,
            epochs=1,
            patience=1,
            batch_calls=4,
            device="cpu",
            plots=False,
            progress=False,
        )
    )  # the default --out: runs/marketcalls/<time>-...
    run = proj / m["run_dir"]
    elsewhere = tmp_path / "elsewhere"
    paths, csv_path, _ = _new_calls(elsewhere / "calls", ["callA", "callB"])
    monkeypatch.chdir(elsewhere)
    args = [
        "--run",
        str(run),
        "--transcripts",
        str(csv_path),
        "--out",
        "p.csv",
        "-q",
        "--audio",
        *paths[:2],
    ]
    res = CliRunner().invoke(predict_cli, args)
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in csv.DictReader(open("p.csv", encoding="utf-8"))] == ["ok", "ok"]
    shutil.move(str(run), str(tmp_path / "moved"))  # no longer where it was trained: not guessed
    res = CliRunner().invoke(predict_cli, [*args[:1], str(tmp_path / "moved"), *args[2:]])
    assert res.exit_code == 1 and "enc/audio" in res.output and "--audio-model" in res.output, (
        res.output
    )


def test_a_long_call_with_a_transcript_is_cut_without_decoding_it_whole(
    tiny_run, tmp_path, monkeypatch
):
    """With a transcript and the energy cutter, predict reads the recording block by block (its
    frame levels, never all its samples: memory stays flat on hours of audio) and cuts it exactly
    where the whole recording decoded at once is cut."""
    import extract.audio
    from predict import run as predict_run
    from predict.segmenter import Levels

    x, _ = bursty(150.0, 8000, seed=4, burst=(2.0, 5.0))
    wav = tmp_path / "long.wav"
    sf.write(wav, x, 8000)
    transcripts = tmp_path / "t.csv"
    transcripts.write_text(
        "call_id,start,end,text\nlong,0,60,你好我想了解一下\nlong,70,140,价格多少\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(extract.audio, "STREAM_FRAMES", 7919)  # many blocks
    cfg = PredictConfig(
        run=tiny_run["run"], audio=(str(wav),), transcripts=str(transcripts), progress=False
    )
    pred = Predictor(cfg)
    table = read_transcript_csv(transcripts)

    def plan():
        result, segs = _plan_call(pred, str(wav), "long", table, str(transcripts), None)
        assert result.ok, result.status
        return [(s.start, s.end, s.text) for s in segs]

    assert isinstance(predict_run._decode_for_cut(pred, str(wav), None, None, "mix"), Levels)
    real = predict_run.load_segment

    def whole_decode_forbidden(path, start, end, rate, channel="mix"):
        assert start is not None, "the whole recording was decoded"
        return real(path, start, end, rate, channel)

    monkeypatch.setattr(predict_run, "load_segment", whole_decode_forbidden)
    streamed = plan()
    monkeypatch.setattr(predict_run, "load_segment", real)
    # the whole-recording route
    monkeypatch.setattr(
        predict_run,
        "_decode_for_cut",
        lambda pred, path, audio, asr, channel: real(
            path, None, None, predict_run.CUT_RATE, channel
        )[0],
    )
    assert streamed == plan() and len(streamed) > 10


def test_a_long_calls_segments_are_encoded_a_few_at_a_time_and_scored_as_one_call(
    tiny_run, tmp_path, monkeypatch
):
    """A call's segments are encoded STREAM_SEGMENTS at a time and only their segment vectors kept
    (a 3-hour call's hidden states never sit in memory at once); the call is scored exactly as
    the model's one forward pass over all its segments' features scores it."""
    import torch

    from predict import run as predict_run
    from train.predictions import decode

    x, _ = bursty(150.0, 8000, seed=5, burst=(2.0, 5.0))
    wav = tmp_path / "long.wav"
    sf.write(wav, x, 8000)
    transcripts = tmp_path / "t.csv"
    transcripts.write_text(
        "call_id,start,end,text\nlong,0,80,你好我想了解一下\nlong,80,150,价格多少不需要\n",
        encoding="utf-8",
    )
    cfg = PredictConfig(
        run=tiny_run["run"], audio=(str(wav),), transcripts=str(transcripts), progress=False
    )
    pred = Predictor(cfg)
    sizes, encode = [], pred.encoders.encode

    def spy(segments, **kw):
        sizes.append(len(segments))
        return encode(segments, **kw)

    monkeypatch.setattr(pred.encoders, "encode", spy)
    monkeypatch.setattr(predict_run, "STREAM_SEGMENTS", 4)
    (result,) = predict_calls(cfg, predictor=pred).calls
    assert result.ok and result.segments > 12 and max(sizes) == 4 and len(sizes) > 3
    _, segs = _plan_call(pred, str(wav), "long", read_transcript_csv(transcripts), None, None)
    whole = pred.predict_features([encode(segs)])[0][0]
    (expected,) = decode(pred.scheme, pred.tasks, {h: v[None] for h, v in whole.items()})
    for task, answer in expected.items():
        assert result.predictions[task]["label"] == answer["label"]
        got = torch.tensor(list(result.predictions[task]["probs"].values()))
        want = torch.tensor(list(answer["probs"].values()))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
