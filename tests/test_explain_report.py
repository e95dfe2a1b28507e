"""msmtfn-predict --explain DIR as a user runs it, in both modes: explanations.csv agrees with the
predictions, words come from the transcript, pages embed the audio and work offline (rendered by a
real headless chromium), and a folder holding anything but a previous report is refused."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_predict import _new_calls, tiny_run  # noqa: F401 — tiny_run is a fixture

from predict.cli import main as predict_cli
from predict.explain import COLUMNS, MARK

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASKS = ("5", "4", "3", "2")


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, encoding="utf-8")))


def predict(args: list[str]):
    return CliRunner().invoke(predict_cli, [*args, "--device", "cpu", "-q"])


def agree_with_predictions(explained: list[dict], predictions: list[dict], key=("call_id",)):
    """Each row explains the class the predictions CSV gives, with that class's probability."""
    by = {tuple(p[k] for k in key): p for p in predictions}
    for r in explained:
        if not r["task"]:
            continue
        p = by[tuple(r[k] for k in key)]
        assert r["class"] == p[f"pred_{r['task']}"], r
        assert float(r["probability"]) == pytest.approx(
            float(p[f"p_{r['task']}_{r['class']}"]), abs=2e-6
        )


@pytest.fixture(scope="module")
def recordings_report(tiny_run, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("explain")
    paths, transcripts, _ = _new_calls(root / "new", ["callA", "callB"])
    r = predict(
        [
            "--run", str(tiny_run["run"]), "--audio", *paths, "--transcripts", str(transcripts),
            "--out", str(root / "p.csv"), "--segments-out", str(root / "s.csv"),
            "--explain", str(root / "report"), "--explain-segments", "1",
        ]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    plain = predict(
        ["--run", str(tiny_run["run"]), "--audio", *paths, "--transcripts", str(transcripts),
         "--out", str(root / "plain.csv")]
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert (root / "p.csv").read_bytes() == (root / "plain.csv").read_bytes(), "same predictions"
    return {"root": root, "report": root / "report", "output": r.output}


def test_recordings_explanations_cover_every_segment_and_task_and_agree(recordings_report):
    root, report = recordings_report["root"], recordings_report["report"]
    assert "report " in recordings_report["output"] and "index.html" in recordings_report["output"]
    with open(report / "explanations.csv", encoding="utf-8") as f:
        assert next(csv.reader(f)) == COLUMNS
    ex = rows(report / "explanations.csv")
    segs = [s for s in rows(root / "s.csv") if s["status"] == "ok"]
    for call in ("callA", "callB"):
        mine = [r for r in ex if r["call_id"] == call]
        theirs = [s for s in segs if s["call_id"] == call]
        assert sorted((r["segment"], r["task"]) for r in mine) == sorted(
            (s["segment"], t) for s in theirs for t in TASKS
        )
        for r in mine:  # the segment's own times and transcript, as --segments-out has them
            s = next(s for s in theirs if s["segment"] == r["segment"])
            assert (r["text"], float(r["start"]), float(r["end"])) == (
                s["text"], pytest.approx(float(s["start"])), pytest.approx(float(s["end"]))
            )  # fmt: skip
            assert r["status"] == "ok"
        worded = [r for r in mine if r["top_words"]]
        assert {r["task"] for r in worded} == {"5"} and len(worded) == 1, "one segment per call"
        strongest = max(
            (r for r in mine if r["task"] == "5"), key=lambda r: abs(float(r["contribution"]))
        )
        assert worded[0]["segment"] == strongest["segment"]
        for pair in worded[0]["top_words"].split("; "):
            assert pair.rsplit(":", 1)[0] in worded[0]["text"]
        assert worded[0]["top_audio"], "the audio stretches that carried it"
    agree_with_predictions(ex, rows(root / "p.csv"))
    skipped = [r for r in ex if r["call_id"] == "callC"]
    assert len(skipped) == 1 and skipped[0]["status"].startswith("skipped: no transcript rows")


def test_recordings_pages_link_embed_audio_and_request_nothing(recordings_report):
    report = recordings_report["report"]
    index = (report / "index.html").read_text(encoding="utf-8")
    assert 'href="calls/callA.html"' in index and 'href="calls/callB.html"' in index
    assert "callC" in index and "skipped" in index
    page = (report / "calls" / "callA.html").read_text(encoding="utf-8")
    assert page.count("data:audio/flac;base64,") == len(
        [
            r
            for r in rows(report / "explanations.csv")
            if r["call_id"] == "callA" and r["task"] == "5"
        ]
    )
    for html in (index, page):
        assert "http://" not in html and "https://" not in html and 'src="/' not in html
    listed = json.loads((report / MARK).read_text())["files"]
    assert sorted(listed) == sorted(
        ["explanations.csv", "index.html", "calls/callA.html", "calls/callB.html"]
    )


def test_cache_mode_explains_the_runs_calls_with_their_transcripts(tiny_run, tmp_path):  # noqa: F811
    out, report = tmp_path / "p.csv", tmp_path / "report"
    base = ["--run", str(tiny_run["run"]), "--cache", str(tiny_run["cache"]), "--split", "all"]
    r = predict([*base, "--out", str(out), "--explain", str(report), "--explain-segments", "-1"])
    assert r.exit_code == 0, r.output
    assert predict([*base, "--out", str(tmp_path / "plain.csv")]).exit_code == 0
    assert out.read_bytes() == (tmp_path / "plain.csv").read_bytes(), (
        "--explain changes no prediction"
    )
    ex = rows(report / "explanations.csv")
    preds = rows(out)
    assert {r["call_id"] for r in ex} == {p["call_id"] for p in preds}
    agree_with_predictions(ex, preds)
    from pipeline.store import CacheStore

    store = CacheStore.open(tiny_run["cache"])
    table, texts = store.table(), store.segment_texts()
    by_segment = {
        (c, int(i)): t for c, i, t in zip(table["call_id"], table["segment_index"], texts)
    }
    for r in ex:
        assert r["text"] == by_segment[(r["call_id"], int(r["segment"]))] and r["text"]
    worded = [r for r in ex if r["top_words"]]
    assert len(worded) == len({(r["call_id"], r["segment"]) for r in ex}), "-1: every segment"
    for r in worded:
        assert all(p.rsplit(":", 1)[0] in r["text"] for p in r["top_words"].split("; "))
    assert len(list((report / "calls").glob("*.html"))) == len(preds)


def test_a_folder_with_other_files_is_refused_and_a_previous_report_replaced(
    tiny_run,  # noqa: F811
    tmp_path,
):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    base = ["--run", str(tiny_run["run"]), "--cache", str(tiny_run["cache"])]
    r = predict([*base, "--out", str(tmp_path / "p.csv"), "--explain", str(folder)])
    assert r.exit_code == 1 and "notes.txt" in r.output and len(r.output.strip().splitlines()) == 1
    assert (folder / "notes.txt").read_text() == "keep me" and not (tmp_path / "p.csv").exists()
    report = tmp_path / "report"
    for split in ("all", "test"):
        r = predict(
            [*base, "--split", split, "--out", str(tmp_path / "p.csv"), "--explain", str(report)]
        )
        assert r.exit_code == 0, r.output
    assert not any(r["top_words"] for r in rows(report / "explanations.csv")), "default: no words"
    pages = {p.name for p in (report / "calls").glob("*.html")}
    test_calls = {p["call_id"] for p in rows(tmp_path / "p.csv")}
    assert pages == {f"{c}.html" for c in test_calls}, "the previous report's pages are gone"


# -------------------------------------------------------------------------------- a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]


def page_requests(html: Path, tmp_path: Path) -> list[str]:
    """The URLs the page itself asked for (chromium's net log; the browser's own background
    requests carry no initiator and are left out)."""
    log = tmp_path / f"{html.stem}.netlog.json"
    subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--log-net-log={log}", "--dump-dom", html.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    events = json.loads(log.read_text(encoding="utf-8"))["events"]
    return sorted(
        {
            e["params"]["url"]
            for e in events
            if "url" in e.get("params", {})
            and e["params"].get("initiator") not in (None, "not an origin")
        }
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (apt-get install chromium) to render the report"
)
def test_pages_render_in_a_headless_browser_without_any_request(recordings_report, tmp_path):
    report = recordings_report["report"]
    leaky = tmp_path / "leaky.html"  # the check itself can fail: a page that does fetch
    leaky.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    assert page_requests(leaky, tmp_path) == ["http://example.invalid/x.png"]
    from PIL import Image

    for page in (report / "index.html", report / "calls" / "callA.html"):
        assert page_requests(page, tmp_path) == [], page
        shot = tmp_path / f"{page.stem}.png"
        subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--screenshot={shot}", "--window-size=1100,1200",
             page.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
        ink = (pixels < 200).mean()
        assert ink > 0.01 and pixels.std() > 10, (page, ink, pixels.std())


def test_segment_level_runs_explain_each_scored_utterance(tmp_path):
    """CMU-MOSI-like: labels belong to utterances; each scored one is a row per task with its own
    prediction, its context and its strongest neighbour; unlabelled utterances are context only."""
    from synthetic import write_synthetic_store
    from test_train_segments import _previous_cue_call

    from train.config import TrainConfig
    from train.loop import fit

    store = write_synthetic_store(
        tmp_path / "meld.zarr", calls=24, segments_per_call=(2, 4), audio_frames=8,
        text_tokens=6, seed=2, fill=_previous_cue_call, label_scheme="meld", dataset="meld",
    )  # fmt: skip
    m = fit(
        TrainConfig(
            cache=str(store.path), out=str(tmp_path / "run"), d_model=16, heads=2, ffn=32,
            gru_hidden=8, head_hidden=16, epochs=1, device="cpu", plots=False, progress=False,
        )
    )  # fmt: skip
    out, report = tmp_path / "p.csv", tmp_path / "report"
    r = predict(
        ["--run", m["run_dir"], "--cache", str(store.path), "--out", str(out), "--explain",
         str(report)]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ex, preds = rows(report / "explanations.csv"), rows(out)
    assert sorted((r["call_id"], r["segment"]) for r in ex if r["task"] == "emotion") == sorted(
        (p["call_id"], p["segment"]) for p in preds
    ), "every scored utterance, and only those (the first of each dialogue has no label)"
    agree_with_predictions(ex, preds, key=("call_id", "segment"))
    for r in ex:
        assert r["context_contribution"] and r["top_neighbour"] != r["segment"]
        assert r["top_neighbour"] and r["neighbour_contribution"]


def test_token_stretches_become_the_transcripts_words_and_phrases(tiny_encoders):
    from transformers import AutoTokenizer

    from predict.explain import audio_spans, word_attributions

    tok = AutoTokenizer.from_pretrained(tiny_encoders["text"])
    text = "好的 not 谢谢"  # tokens: [CLS] 好 的 not 谢 谢 [SEP]; each CJK character is a word
    per_token = [(0, 1, 9.0), (1, 2, 0.1), (2, 3, 0.2), (3, 4, 0.3), (4, 5, 0.4), (5, 6, 0.5)]
    assert word_attributions(tok, text, 32, per_token) == [
        ("好", 0.1, 0, 1), ("的", 0.2, 1, 2), ("not", 0.3, 3, 6), ("谢", 0.4, 7, 8),
        ("谢", 0.5, 8, 9),
    ], "the special token carries no word"  # fmt: skip
    stretches = [(0, 2, 0.1), (2, 4, 0.2), (4, 7, 0.3)]
    assert word_attributions(tok, text, 32, stretches) == [
        ("好", 0.1, 0, 1), ("的 not", 0.2, 1, 6), ("谢谢", 0.3, 7, 9),
    ], "a stretch of several words is one phrase"  # fmt: skip
    assert audio_spans(10.0, 12.0, [(0, 50, 0.1), (50, 100, -0.2)]) == [
        (10.0, 11.0, 0.1), (11.0, 12.0, -0.2),
    ]  # fmt: skip
