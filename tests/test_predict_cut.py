"""msmtfn-predict cuts new recordings as the run's training segments were made (issue 23): a run trained on the
timed rows of a generic CSV scores recordings by their transcript's rows, so the recording route and the cache
route give the same answers for the same calls; segments far from the training's lengths and transcripts that
run past the end of a truncated recording are flagged in the status column and the summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_aac, write_wav

from extract.run import ExtractConfig, extract
from pipeline.segment_profile import SegmentProfile, profile_rows
from predict.cli import main as predict_cli
from train.config import TrainConfig
from train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
WORDS = "好的可以我想了解一下价格不需要谢谢再见"


def _utterances(rng, seconds: float) -> list[tuple[float, float, str]]:
    """Timed rows 1.5-4 s long with gaps, inside ``seconds``."""
    rows, t = [], float(rng.uniform(0.0, 0.5))
    while t + 1.5 < seconds:
        end = min(seconds, t + float(rng.uniform(1.5, 4.0)))
        rows.append(
            (
                round(t, 3),
                round(end, 3),
                "".join(rng.choice(list(WORDS), size=int(rng.integers(3, 12)))),
            )
        )
        t = end + float(rng.uniform(0.2, 1.0))
    return rows


@pytest.fixture(scope="module")
def rows_run(tiny_encoders, tmp_path_factory):
    """A generic CSV of 12 recordings (14 s each), each with timed utterance rows; extracted with the tiny
    encoders, a 2-epoch run on it."""
    root = tmp_path_factory.mktemp("cut")
    data = root / "data"
    rng = np.random.default_rng(5)
    table = []
    for c in range(12):
        name = f"call{c:02d}"
        write_wav(data / "rec" / f"{name}.wav", 14.0, 8000, seed=c, freq=120 + 15 * (c % 5))
        split = ("train", "train", "valid", "test")[c % 4]
        for a, b, text in _utterances(rng, 14.0):
            table.append(
                {
                    "call_id": name,
                    "audio": f"rec/{name}.wav",
                    "start": a,
                    "end": b,
                    "text": text,
                    "label": "ABCDE"[c % 5],
                    "split": split,
                }
            )
    with open(data / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    cache = root / "cache.zarr"
    extract(
        ExtractConfig(
            dataset="csv",
            data_dir=str(data),
            out=str(cache),
            audio_model=str(tiny_encoders["group"]),
            text_model=str(tiny_encoders["text"]),
            num_workers=0,
            max_text_tokens=32,
            max_seconds=8.0,
        ),
        progress=False,
    )
    m = fit(
        TrainConfig(
            cache=str(cache),
            out=str(root / "run"),
            d_model=32,
            heads=4,
            ffn=64,
            gru_hidden=16,
            head_hidden=32,
            cross_layers=1,
            bottleneck_layers=1,
            epochs=2,
            patience=2,
            lr=1e-3,
            batch_calls=4,
            device="cpu",
            plots=False,
            progress=False,
            threads=1,
        )
    )
    return {"root": root, "data": data, "cache": cache, "run": Path(m["run_dir"]), "table": table}


def _transcripts(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "start", "end", "text"])
        w.writerows(rows)
    return path


def _read(path: Path) -> dict[str, dict]:
    return {r["call_id"]: r for r in csv.DictReader(open(path, encoding="utf-8"))}


def test_the_run_records_how_its_training_segments_were_made(rows_run):
    meta = json.loads((rows_run["run"] / "config.json").read_text())
    profile = SegmentProfile.from_record(meta["cache"]["segmentation"])
    train_rows = [r for r in rows_run["table"] if r["split"] == "train"]
    lengths = [r["end"] - r["start"] for r in train_rows]
    assert (
        profile.policy == "rows" and profile.count == len(train_rows) and profile.max_seconds == 8.0
    )
    assert profile.p50 == pytest.approx(np.median(lengths), abs=1e-3)
    assert profile.p5 == pytest.approx(np.percentile(lengths, 5), abs=1e-3)
    assert profile.p95 == pytest.approx(np.percentile(lengths, 95), abs=1e-3)


def test_profile_policy_rows_vs_pauses():
    """Timed rows sharing a recording → rows; one file per segment, or extraction's equal pieces of one long
    row → pauses."""

    def table(ids, sources, start, end):
        return {
            "segment_id": np.array(ids, dtype=object),
            "source_path": np.array(sources, dtype=object),
            "start": np.array(start, dtype=float),
            "end": np.array(end, dtype=float),
        }

    nan = np.nan
    timed = table(["a@0-3", "a@3-7", "b@0-2"], ["a.wav", "a.wav", "b.wav"], [0, 3, 0], [3, 7, 2])
    assert profile_rows(timed, np.array([3.0, 4.0, 2.0]), [0, 1, 2], 40.0).policy == "rows"
    files = table(["x", "y", "z"], ["x.wav", "y.wav", "z.wav"], [nan] * 3, [nan] * 3)
    p = profile_rows(files, np.array([30.0, 35.0, 20.0]), [0, 1, 2], 40.0)
    assert p.policy == "pauses" and p.p50 == 30.0 and p.count == 3
    pieces = table(["long#0", "long#1", "long#2"], ["l.wav"] * 3, [0, 30, 60], [30, 60, 90])
    assert profile_rows(pieces, np.array([30.0] * 3), [0, 1, 2], 40.0).policy == "pauses"
    assert profile_rows(files, np.array([nan] * 3), [0, 1, 2], 40.0) is None  # no length known


def test_far_outside_and_pause_limit_boundaries():
    p = SegmentProfile("pauses", 40.0, 100, p5=10.0, p50=25.0, p95=36.04)
    assert p.pause_limit == 36.1  # the 95th percentile, rounded up to 0.1 s
    assert (
        SegmentProfile("pauses", 40.0, 9, 1.0, 1.0, 1.2).pause_limit == 2.0
    )  # room for a search window
    assert (
        SegmentProfile("pauses", 8.0, 9, 9.0, 9.0, 9.5).pause_limit == 8.0
    )  # never over the cache's limit
    assert (
        p.far_outside([5.0, 5.0, 30.0]) is None
    )  # median 5 = half the 5th percentile: not far yet
    assert "far shorter" in p.far_outside([4.9, 4.9, 30.0])
    assert p.far_outside([72.08]) is None
    assert "far longer" in p.far_outside([72.2])
    assert p.far_outside([]) is None


def test_the_recording_route_and_the_cache_route_agree(rows_run, tmp_path):
    """The test calls' recordings with their rows as the transcript give the answers the cache route gives for
    the same calls: the same segments, duration_s and classes, probabilities equal to float16 rounding."""
    test_calls = sorted({r["call_id"] for r in rows_run["table"] if r["split"] == "test"})
    rows = [
        (r["call_id"], r["start"], r["end"], r["text"])
        for r in rows_run["table"]
        if r["call_id"] in test_calls
    ]
    csv_path = _transcripts(tmp_path / "t.csv", rows)
    audio = [str(rows_run["data"] / "rec" / f"{c}.wav") for c in test_calls]
    out, cached = tmp_path / "p.csv", tmp_path / "c.csv"
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(rows_run["run"]),
            "--transcripts",
            str(csv_path),
            "--out",
            str(out),
            "-q",
            "--audio",
            *audio,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "cut by the transcript's rows, as the run's training segments were" in res.output, (
        res.output
    )
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(rows_run["run"]),
            "--cache",
            str(rows_run["cache"]),
            "--split",
            "test",
            "--out",
            str(cached),
        ],
    )
    assert res.exit_code == 0, res.output
    by_audio, by_cache = _read(out), _read(cached)
    assert sorted(by_audio) == sorted(by_cache) == test_calls
    for c in test_calls:
        a, b = by_audio[c], by_cache[c]
        assert a["status"] == "ok" and a["segments"] == b["segments"], (a, b)
        assert float(a["duration_s"]) == pytest.approx(float(b["duration_s"]), abs=2e-3)
        for task, classes in (("5", "ABCDE"), ("2", ["A+B+C", "D+E"])):
            pa = np.array([float(a[f"p_{task}_{k}"]) for k in classes])
            pb = np.array([float(b[f"p_{task}_{k}"]) for k in classes])
            np.testing.assert_allclose(pa, pb, atol=2e-3, err_msg=c)
            assert a[f"pred_{task}"] == b[f"pred_{task}"]

    # cut at pauses instead, the same calls come out as other segments (what the issue saw: other answers)
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(rows_run["run"]),
            "--transcripts",
            str(csv_path),
            "--out",
            str(tmp_path / "pauses.csv"),
            "--cut",
            "pauses",
            "-q",
            "--audio",
            *audio,
        ],
    )
    assert res.exit_code == 0 and "cut at pauses into pieces of ≤" in res.output, res.output
    paused = _read(tmp_path / "pauses.csv")
    assert any(paused[c]["segments"] != by_cache[c]["segments"] for c in test_calls)


def test_segments_far_from_the_training_lengths_are_flagged(rows_run, tmp_path):
    """Rows of 0.3 s against training rows of 1.5-4 s: predicted, with one warning in the status column and the
    summary line."""
    path = write_wav(tmp_path / "short.wav", 6.0, 8000, seed=3)
    csv_path = _transcripts(
        tmp_path / "t.csv", [("short", 0.5 + k, 0.8 + k, "好的") for k in range(5)]
    )
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(rows_run["run"]),
            "--audio",
            str(path),
            "--transcripts",
            str(csv_path),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    row = _read(out)["short"]
    assert row["status"].startswith(
        "ok: segments far shorter than training's (median 0.3 s; training "
    )
    assert row["pred_5"] in "ABCDE" and row["segments"] == "5"
    (line,) = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "warnings for 1: short (in the status column)" in line, line


def test_a_truncated_recording_is_flagged_not_packed(rows_run, tmp_path):
    """A 1.9 s recording whose transcript runs to 190 s: the rows after its end are left out and named, the
    status says how far the transcript runs past the audio; an intact recording stays plain ok."""
    short = write_wav(tmp_path / "cut_short.wav", 1.9, 8000, seed=4)
    whole = write_wav(tmp_path / "whole.wav", 6.0, 8000, seed=5)
    rows = [("cut_short", 2.8 * k, 2.8 * k + 2.5, f"第{k}句") for k in range(68)]
    rows += [("whole", 0.0, 2.5, "你好"), ("whole", 3.0, 6.0, "再见")]
    csv_path = _transcripts(tmp_path / "t.csv", rows)
    out, segs = tmp_path / "p.csv", tmp_path / "s.csv"
    for cut in ("pauses", "rows"):
        res = CliRunner().invoke(
            predict_cli,
            [
                "--run",
                str(rows_run["run"]),
                "--audio",
                str(short),
                str(whole),
                "--transcripts",
                str(csv_path),
                "--out",
                str(out),
                "--segments-out",
                str(segs),
                "--cut",
                cut,
                "-q",
            ],
        )
        assert res.exit_code == 0, res.output
        got = _read(out)
        assert got["cut_short"]["status"] == (
            "ok: transcript runs 188 s past the audio (recording 1.9 s; 67 rows "
            "after its end left out)"
        ), (cut, got["cut_short"]["status"])
        assert got["whole"]["status"] == "ok"
        texts = [
            s["text"]
            for s in csv.DictReader(open(segs, encoding="utf-8"))
            if s["call_id"] == "cut_short"
        ]
        assert " ".join(t for t in texts if t) == "第0句", (
            cut,
            texts,
        )  # not 68 rows packed into 1.9 s
        assert "warnings for 1: cut_short" in res.output


def test_missing_paths_answer_before_the_models_load(tmp_path):
    """A missing run folder, a folder without config.json, a missing transcripts CSV or cache: one line, exit 1,
    and torch is never imported."""
    run = tmp_path / "run"
    run.mkdir()
    cases = [
        (
            ["--run", str(tmp_path / "nope"), "--audio", "a.wav", "--transcripts", "t.csv"],
            "no such run folder",
        ),
        (["--run", str(run), "--audio", "a.wav", "--transcripts", "t.csv"], "no config.json here"),
    ]
    cases += [
        (
            ["--run", str(run), "--audio", "a.wav", "--transcripts", str(tmp_path / "t.csv")],
            "no such transcripts CSV",
        ),
        (["--run", str(run), "--cache", str(tmp_path / "c.zarr")], "no such cache store"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i, (args, says) in enumerate(cases):
        if i == 2:
            (run / "config.json").write_text("{}")
        code = (
            "import sys\nfrom predict.cli import main\n"
            f"try:\n    main({args + ['--out', str(tmp_path / 'p.csv')]!r})\n"
            "except SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], (
            args,
            out.stderr,
        )
        assert out.stdout.strip() == "EXIT 1 False", (args, out.stdout)


def test_an_unusable_asr_model_is_one_line_before_the_run_loads(rows_run, tmp_path, monkeypatch):
    """--asr offline (a hub id not in the local cache) or a folder that is no model: one line at once, exit 1,
    not half a minute of hub retries or transformers' traceback."""
    import time

    from huggingface_hub import constants

    import predict.run

    loaded = []
    monkeypatch.setattr(
        predict.run, "Predictor", lambda cfg: loaded.append(cfg)
    )  # must never be reached
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = write_wav(tmp_path / "a.wav", 3.0, 8000)
    (tmp_path / "not-a-model").mkdir()
    for asr, says in (
        ("someone/whisper-absent", "not in the local Hugging Face cache and downloads are off"),
        (str(tmp_path / "not-a-model"), "not a model folder (no config.json in it)"),
    ):
        t0 = time.perf_counter()
        res = CliRunner().invoke(
            predict_cli,
            [
                "--run",
                str(rows_run["run"]),
                "--audio",
                str(path),
                "--asr",
                asr,
                "--out",
                str(tmp_path / "p.csv"),
                "-q",
            ],
        )
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert (
            res.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: --asr {asr}: ")
        ), res.output
        assert says in lines[0] and "--transcripts CSV" in lines[0], lines[0]
        assert time.perf_counter() - t0 < 5 and not loaded


def test_energy_score_in_blocks_equals_the_whole_recording_at_once(monkeypatch):
    """Frame energies are computed a block at a time (bounded memory on hours of audio), with the same
    numbers as one pass over the whole recording, whatever the block and the last partial frame."""
    from predict import segmenter

    x = np.random.default_rng(0).standard_normal(16000 * 7 + 123).astype(np.float32)
    monkeypatch.setattr(segmenter, "BLOCK_SAMPLES", 10**12)
    whole, hop = segmenter.energy_score(x, 16000, 0.02)
    for block in (320, 16000, 16000 * 3 + 7):
        monkeypatch.setattr(segmenter, "BLOCK_SAMPLES", block)
        got, hop2 = segmenter.energy_score(x, 16000, 0.02)
        assert hop2 == hop and len(got) == len(whole) == 351
        np.testing.assert_array_equal(got, whole)


def test_a_recording_streamed_in_blocks_is_the_recording_decoded_whole(tmp_path):
    """msmtfn-predict reads long recordings block by block (flat memory): the samples, the frame
    levels and the cuts are those of the whole recording decoded at once; bad files fail alike."""
    import soundfile as sf

    from extract.audio import AudioError, load_segment, stream_recording
    from predict.segmenter import CutterConfig, Levels, cut_levels, cut_recording, energy_score

    rng = np.random.default_rng(3)
    stereo = 0.3 * rng.standard_normal((8000 * 95 + 17, 2)) * (rng.random((1, 2)) + 0.5)
    sf.write(tmp_path / "s.wav", stereo.astype(np.float32), 8000, subtype="PCM_16")
    sf.write(tmp_path / "m16.wav", stereo[:, 0].astype(np.float32), 16000, subtype="PCM_16")
    write_aac(tmp_path / "s.m4a", [stereo[: 8000 * 40]], 8000)  # AAC in m4a, as phones export
    cases = [("s.wav", "mix"), ("s.wav", "left"), ("s.wav", "1"), ("m16.wav", "mix")]
    for name, channel in cases + [("s.m4a", "mix"), ("s.m4a", "right")]:
        path = str(tmp_path / name)
        whole = load_segment(path, None, None, 16000, channel)[0]
        for block in (997, 4099, 10**7):
            blocks = list(stream_recording(path, 16000, channel, block_frames=block))
            np.testing.assert_array_equal(np.concatenate(blocks), whole)
        levels = Levels.of_blocks(stream_recording(path, 16000, channel, 7919), 16000, 0.01)
        score, hop = energy_score(whole, 16000, 0.01)
        np.testing.assert_array_equal(levels.score, score)
        assert levels.hop == hop and levels.duration == len(whole) / 16000
        cfg = CutterConfig(max_seconds=8.0, search_seconds=4.0)
        cuts = cut_levels(levels, cfg)
        assert cuts == cut_recording(whole, 16000, cfg) and len(cuts) > 5
    bad = stereo.astype(np.float32)
    bad[40000, 1] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 8000, subtype="FLOAT")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    (tmp_path / "junk.m4a").write_bytes(b"not audio at all" * 10)
    for name in ("nan.wav", "empty.wav", "junk.wav", "missing.wav", "junk.m4a"):
        path = str(tmp_path / name)
        with pytest.raises(AudioError) as whole_error:
            load_segment(path, None, None, 16000)
        with pytest.raises(AudioError) as streamed_error:
            list(stream_recording(path, 16000, block_frames=4099))
        assert str(streamed_error.value) == str(whole_error.value), name
    with pytest.raises(AudioError, match="channel 3 is not one of them"):
        list(stream_recording(str(tmp_path / "s.wav"), 16000, "3"))
