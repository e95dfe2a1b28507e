"""The dataset adapters on the real published label and transcript files (MELD current and 2019, CMU-MOSEI's
``label.csv``, CMU-MOSI's ``.csd`` with the SDK folds, the community MOSI ``label.csv``).

The files are not part of the project (other people's data under their own terms): they are read from
``$MSMTFN_REALDATA`` or from ``shared/realdata`` beside the checkout (``../shared/realdata``), and every test here is
skipped when neither exists. They hold no audio: the tests write audio themselves — hard links to one short WAV for
the full-file parses (every row needs a file), real short WAV and MP4 clips for the extraction runs.
"""

from __future__ import annotations

import ast
import collections
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.datasets import load_manifest

h5py = pytest.importorskip("h5py")


def _find_realdata() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [
        os.environ.get("MSMTFN_REALDATA"),
        here.parents[2] / "shared" / "realdata",
        here.parents[1] / "shared" / "realdata",
        Path.cwd().parent / "shared" / "realdata",
    ]
    for c in candidates:
        if c and (Path(c) / "README.md").is_file() and (Path(c) / "meld").is_dir():
            return Path(c)
    return None


REAL = _find_realdata()
pytestmark = pytest.mark.skipif(
    REAL is None,
    reason="the published benchmark files are not here: set MSMTFN_REALDATA to the realdata folder "
    "(meld/, meld-2019/, mosi/, mosei/) or put it at ../shared/realdata beside the checkout",
)

MELD_SPLITS = {"train": "train", "dev": "valid", "test": "test"}  # MELD's file name → our split
MELD_CLIP_DIRS = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}


# ------------------------------------------------------------------------------------------------ helpers


def published_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    """The rows as the csv module reads the published file (the reference, independent of the adapters)."""
    with open(path, newline="", encoding=encoding) as f:
        return list(csv.DictReader(f))


def sdk_folds(path: Path) -> dict[str, str]:
    """video → train/valid/test from the SDK's folds file, read as data."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            name = node.targets[0].id
            split = {
                "standard_train_fold": "train",
                "standard_valid_fold": "valid",
                "standard_test_fold": "test",
            }
            for vid in ast.literal_eval(node.value):
                out[vid] = split[name]
    return out


def link_all(one: Path, paths) -> None:
    """A hard link to ``one`` at every path (distinct paths, one file's bytes)."""
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            os.link(one, p)


def silence_wav(path: Path, seconds: float, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * rate) + 1, np.float32), rate, subtype="PCM_16")
    return path


def csd_labels() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with h5py.File(REAL / "mosi" / "CMU_MOSI_Opinion_Labels.csd", "r") as f:
        data = f["Opinion Segment Labels"]["data"]
        return {v: (data[v]["features"][()], data[v]["intervals"][()]) for v in data}


def score(value) -> str:
    """The label string the adapters write for a score (shortest decimal of its own precision)."""
    return repr(float(str(value)))


def spy_texts(monkeypatch) -> collections.Counter:
    """Every transcript the extraction hands to the text tokenizer."""
    from extract.encoders import Tokenize

    seen: collections.Counter = collections.Counter()
    original = Tokenize.__call__

    def call(self, text):
        seen[text] += 1
        return original(self, text)

    monkeypatch.setattr(Tokenize, "__call__", call)
    return seen


def run_extract(tmp_path, tiny_encoders, dataset: str, data_dir: Path, **options):
    from extract.run import ExtractConfig, extract
    from pipeline.store import CacheStore

    cfg = ExtractConfig(
        dataset=dataset,
        data_dir=str(data_dir),
        out=str(tmp_path / f"{dataset}.zarr"),
        audio_model=str(tiny_encoders["group"]),
        text_model=str(tiny_encoders["text"]),
        num_workers=0,
        shard_size=8,
        block_shards=4,
        max_text_tokens=64,
        dataset_options=options,
    )
    res = extract(cfg, progress=False)
    assert res.skipped == 0 and res.done == res.total
    t = CacheStore.open(res.store).table()
    return {
        sid: {"label": lab, "split": sp, "call": cid, "start": st, "end": en}
        for sid, lab, sp, cid, st, en in zip(
            t["segment_id"], t["label"], t["split"], t["call_id"], t["start"], t["end"]
        )
    }


# ------------------------------------------------------------------------------------------------ MELD


@pytest.fixture(scope="module")
def meld_clips(tmp_path_factory) -> Path:
    """A clip folder per split with a hard link for every utterance of the current files."""
    root = tmp_path_factory.mktemp("meld-full")
    one = silence_wav(root / "one.wav", 0.2, 16000)
    for name, folder in MELD_CLIP_DIRS.items():
        rows = published_rows(REAL / "meld" / f"{name}_sent_emo.csv")
        link_all(
            one, (root / folder / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.wav" for r in rows)
        )
    return root


@pytest.mark.parametrize("version", ["meld", "meld-2019"])
def test_meld_full_files_parse_with_the_published_counts(meld_clips, version):
    m = load_manifest("meld", meld_clips, csv_dir=REAL / version)
    assert [i for i in m.issues] == []
    assert m.notes["split"] == "files"
    segs = collections.Counter(s.split for s in m.segments)
    assert segs == {"train": 9989, "valid": 1109, "test": 2610}
    dialogues = {sp: {s.call_id for s in m.segments if s.split == sp} for sp in segs}
    assert {sp: len(d) for sp, d in dialogues.items()} == {"train": 1038, "valid": 114, "test": 280}
    ids = {int(c.split("dia")[1]) for c in dialogues["train"]}
    assert len(set(range(1039)) - ids) == 1 and ids <= set(range(1039)), (
        "one train dialogue id is missing"
    )
    assert all(c.startswith("dev/") for c in dialogues["valid"])
    emotions = collections.Counter(s.label.split("/")[0] for s in m.segments if s.split == "train")
    assert emotions == {
        "neutral": 4710,
        "joy": 1743,
        "surprise": 1205,
        "anger": 1109,
        "sadness": 683,
        "disgust": 271,
        "fear": 268,
    }
    # every label and transcript as the current files publish them (the 2019 bytes decode to the same text)
    want = {}
    for name, split in MELD_SPLITS.items():
        for r in published_rows(REAL / "meld" / f"{name}_sent_emo.csv"):
            want[f"{name}/dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}"] = (
                f"{r['Emotion']}/{r['Sentiment']}",
                split,
                r["Utterance"].strip(),
            )
    assert {s.segment_id: (s.label, s.split, s.text) for s in m.segments} == want
    # utterances in Utterance_ID order within their dialogue
    for cid, calls in list(m.calls().items())[:200]:
        assert [int(s.segment_id.rsplit("utt", 1)[1]) for s in calls] == sorted(
            int(s.segment_id.rsplit("utt", 1)[1]) for s in calls
        ), cid


def test_meld_2019_bytes_carry_c1_controls_and_read_as_the_current_text(meld_clips):
    raw = (REAL / "meld-2019" / "train_sent_emo.csv").read_bytes()
    assert "\u0092".encode() in raw and b"\r\n" not in raw  # what makes this file the hard case
    cur = {
        s.segment_id: s.text
        for s in load_manifest("meld", meld_clips, csv_dir=REAL / "meld").segments
    }
    old = {
        s.segment_id: s.text
        for s in load_manifest("meld", meld_clips, csv_dir=REAL / "meld-2019").segments
    }
    assert old == cur
    assert not any(
        ch in t for t in old.values() for ch in "\u0085\u0091\u0092\u0093\u0094\u0097\u00a0Â"
    )
    assert sum("’" in t for t in old.values()) > 1000


@pytest.mark.parametrize("version", ["meld", "meld-2019"])
def test_meld_extraction_of_a_few_dialogues_keeps_each_utterance(
    tmp_path, tiny_encoders, one_torch_thread, monkeypatch, version
):
    """Two dialogues per split, clips (WAV and AAC-in-MP4) for all but their last utterance: exactly those are
    extracted, each with its own label, split and published transcript."""
    from test_datasets_benchmarks import tone_mp4

    root = tmp_path / "meld"
    want = {}
    for name, split in MELD_SPLITS.items():
        rows = published_rows(REAL / "meld" / f"{name}_sent_emo.csv")
        by_dia = collections.defaultdict(list)
        for r in rows:
            by_dia[r["Dialogue_ID"]].append(r)
        # dialogues with non-ASCII text and commas, so the decoding and the quoting are both exercised
        picked = [
            d
            for d, rs in by_dia.items()
            if len(rs) >= 3
            and any(not r["Utterance"].isascii() for r in rs)
            and any("," in r["Utterance"] for r in rs)
        ][:2]
        assert len(picked) == 2
        for d in picked:
            for k, r in enumerate(by_dia[d][:-1]):
                stem = f"dia{d}_utt{r['Utterance_ID']}"
                clip = root / MELD_CLIP_DIRS[name] / stem
                if k % 2:
                    tone_mp4(clip.with_suffix(".mp4"), 0.6 + 0.1 * k, freq=200 + 40 * k)
                else:
                    from test_datasets_benchmarks import tone_wav

                    tone_wav(clip.with_suffix(".wav"), 0.5 + 0.1 * k, freq=200 + 40 * k)
                want[f"{name}/{stem}"] = {
                    "label": f"{r['Emotion']}/{r['Sentiment']}",
                    "split": split,
                    "call": f"{name}/dia{d}",
                    "text": r["Utterance"].strip(),
                }
    texts = spy_texts(monkeypatch)
    got = run_extract(tmp_path, tiny_encoders, "meld", root, csv_dir=str(REAL / version))
    assert set(got) == set(want)
    for sid, w in want.items():
        g = got[sid]
        assert (g["label"], g["split"], g["call"]) == (w["label"], w["split"], w["call"]), sid
        assert np.isnan(g["start"]) and np.isnan(g["end"]), "a MELD clip is used whole"
    assert texts == collections.Counter(w["text"] for w in want.values())


# ------------------------------------------------------------------------------------------------ MOSEI


def test_mosei_label_csv_parses_with_the_published_counts_and_the_sdk_folds(tmp_path):
    rows = published_rows(REAL / "mosei" / "label.csv")
    one = silence_wav(tmp_path / "one.wav", 0.2, 16000)
    link_all(one, (tmp_path / "wav" / r["video_id"] / f"{r['clip_id']}.wav" for r in rows))
    m = load_manifest("mosei", tmp_path, label_csv=REAL / "mosei" / "label.csv")
    assert m.issues == [] and m.notes["split"] == "column"
    assert collections.Counter(s.split for s in m.segments) == {
        "train": 16274,
        "valid": 1861,
        "test": 4653,
    }
    assert len(m.calls()) == 3217
    folds = sdk_folds(REAL / "mosei" / "cmu_mosei_std_folds.py")
    assert collections.Counter(folds.values()) == {"train": 2249, "valid": 300, "test": 678}
    assert all(folds[cid] == segs[0].split for cid, segs in m.calls().items()), (
        "mode column = SDK folds"
    )
    want = {f"{r['video_id']}_{r['clip_id']}": (score(r["label"]), r["text"].strip()) for r in rows}
    assert {s.segment_id: (s.label, s.text) for s in m.segments} == want
    assert (
        sum('"' in t and "," in t for _, t in want.values()) > 10
    )  # quotes and commas inside the text
    # utterances in time order: the clip id is the start time ("82_7645" = 82.7645 s), not the row order
    for cid, segs in m.calls().items():
        starts = [float(s.segment_id[len(cid) + 1 :].replace("_", ".")) for s in segs]
        assert starts == sorted(starts), cid
    # the SDK's folds file given explicitly splits the same way
    m2 = load_manifest(
        "mosei",
        tmp_path,
        label_csv=REAL / "mosei" / "label.csv",
        split_file=REAL / "mosei" / "cmu_mosei_std_folds.py",
    )
    assert {s.segment_id: s.split for s in m2.segments} == {
        s.segment_id: s.split for s in m.segments
    }


def test_mosei_extraction_of_a_few_videos(tmp_path, tiny_encoders, one_torch_thread, monkeypatch):
    """One video per split whose text holds quotes and commas; clips for all but one of its utterances."""
    from test_datasets_benchmarks import tone_mp4, tone_wav

    rows = published_rows(REAL / "mosei" / "label.csv")
    by_vid = collections.defaultdict(list)
    for r in rows:
        by_vid[r["video_id"]].append(r)
    want = {}
    for split, mode in (("train", "train"), ("valid", "valid"), ("test", "test")):
        vid = next(
            v
            for v, rs in by_vid.items()
            if rs[0]["mode"] == mode
            and 3 <= len(rs) <= 6
            and any("," in r["text"] for r in rs)
            and any('"' in r["text"] or "'" in r["text"] for r in rs)
        )
        for k, r in enumerate(by_vid[vid][1:]):
            path = tmp_path / "mosei" / "Raw" / vid / r["clip_id"]
            if k % 2:
                tone_mp4(path.with_suffix(".mp4"), 0.6, freq=300 + 30 * k)
            else:
                tone_wav(path.with_suffix(".wav"), 0.5 + 0.1 * k, freq=300 + 30 * k)
            want[f"{vid}_{r['clip_id']}"] = {
                "label": score(r["label"]),
                "split": split,
                "call": vid,
                "text": r["text"].strip(),
            }
    texts = spy_texts(monkeypatch)
    got = run_extract(
        tmp_path,
        tiny_encoders,
        "mosei",
        tmp_path / "mosei",
        label_csv=str(REAL / "mosei/label.csv"),
    )
    assert set(got) == set(want)
    for sid, w in want.items():
        assert (got[sid]["label"], got[sid]["split"], got[sid]["call"]) == (
            w["label"],
            w["split"],
            w["call"],
        )
    assert texts == collections.Counter(w["text"] for w in want.values())


# ------------------------------------------------------------------------------------------------ MOSI


def write_words_csd(path: Path, words: dict[str, list[tuple[str, float, float]]]) -> Path:
    """A TimestampedWords sequence (the real one is not among the published files here)."""
    from test_datasets_benchmarks import words_entry, write_csd

    return write_csd(path, "words", {v: words_entry(ws) for v, ws in words.items()})


def community_text() -> dict[str, str]:
    return {r["id"]: r["text"] for r in published_rows(REAL / "mosi" / "label.csv")}


def spread_words(intervals: np.ndarray, texts: list[str]) -> list[tuple[str, float, float]]:
    """Each interval's words evenly over it, with a silence token between intervals."""
    out = []
    for (a, b), text in zip(intervals.astype(float), texts):
        ws = text.split()
        step = (b - a) / (len(ws) + 1)
        out += [(w, a + (i + 0.5) * step, a + (i + 1.5) * step) for i, w in enumerate(ws)]
        out.append(("sp", b - 0.01, b))
    return out


def test_mosi_csd_parses_with_the_published_counts_and_the_sdk_folds(tmp_path):
    labels = csd_labels()
    assert len(labels) == 93 and sum(len(f) for f, _ in labels.values()) == 2199
    longest = max(float(iv.max()) for _, iv in labels.values())
    one = silence_wav(tmp_path / "one.wav", longest + 1, 100)  # 100 Hz: long enough, and small
    link_all(one, (tmp_path / "Raw/Audio/WAV_16000/Full" / f"{v}.wav" for v in labels))
    write_words_csd(
        tmp_path / "CMU_MOSI_TimestampedWords.csd",
        {v: [("w", float(iv[0, 0]), float(iv[0, 0]) + 0.1)] for v, (_, iv) in labels.items()},
    )
    m = load_manifest(
        "mosi",
        tmp_path,
        labels_csd=REAL / "mosi" / "CMU_MOSI_Opinion_Labels.csd",
        split_file=REAL / "mosi" / "cmu_mosi_std_folds.py",
    )
    # one labelled interval of the published file is empty (2WGyTLYerpo[43], 127.21–127.21 s): named, left out
    empty = {
        f"{v}[{k}]"
        for v, (_, ivs) in labels.items()
        for k in np.flatnonzero(ivs[:, 1] <= ivs[:, 0])
    }
    assert empty == {"2WGyTLYerpo[43]"}
    errors = [i for i in m.issues if not i.reason.startswith("warning:")]
    assert [i.where.split(":")[1] for i in errors] == [
        "2WGyTLYerpo[43]"
    ] and "not a time span" in errors[0].reason
    assert m.notes["split"] == "file" and m.notes["form"] == "sdk"
    folds = sdk_folds(REAL / "mosi" / "cmu_mosi_std_folds.py")
    assert collections.Counter(folds.values()) == {"train": 52, "valid": 10, "test": 31}
    calls = m.calls()
    assert len(calls) == 93 and all(segs[0].split == folds[cid] for cid, segs in calls.items())
    assert collections.Counter(s.split for s in m.segments) == {
        sp: sum(len(labels[v][0]) for v in labels if folds[v] == sp)
        - sum(folds[e.split("[")[0]] == sp for e in empty)
        for sp in ("train", "valid", "test")
    }
    segs = {s.segment_id: s for s in m.segments}
    assert len(segs) == 2198
    for v, (feats, ivs) in labels.items():
        for k in range(len(feats)):
            if f"{v}[{k}]" in empty:
                continue
            s = segs[f"{v}[{k}]"]
            assert s.label == score(feats[k, 0]) and abs(float(s.label) - float(feats[k, 0])) < 1e-6
            assert abs(s.start - ivs[k, 0]) < 1e-3 and abs(s.end - ivs[k, 1]) < 1e-3
        starts = [s.start for s in calls[v]]
        assert starts == sorted(starts), "segments in time order within the video"
    first = calls["03bSnISJMiM"][0]
    assert (len(calls["03bSnISJMiM"]), first.label, round(first.start, 2), round(first.end, 2)) == (
        13,
        "2.4",
        51.9,
        55.95,
    )


def test_mosi_community_label_csv_reads_with_the_csd_labels_and_the_folds(tmp_path):
    rows = published_rows(REAL / "mosi" / "label.csv")
    assert list(rows[0]) == ["id", "text", "label", "mode"]
    one = silence_wav(tmp_path / "one.wav", 0.2, 16000)
    link_all(one, (tmp_path / "Raw/Audio/WAV_16000/Segmented" / f"{r['id']}.wav" for r in rows))
    m = load_manifest("mosi", tmp_path, label_csv=REAL / "mosi" / "label.csv")
    assert m.issues == []
    assert collections.Counter(s.split for s in m.segments) == {
        "train": 1281,
        "valid": 229,
        "test": 685,
    }
    labels, folds = csd_labels(), sdk_folds(REAL / "mosi" / "cmu_mosi_std_folds.py")
    assert len(m.segments) == 2195 and len(m.calls()) == 93
    for s in m.segments:
        vid, k = s.segment_id.rsplit("_", 1)
        assert s.call_id == vid and s.split == folds[vid]
        assert abs(float(s.label) - float(labels[vid][0][int(k) - 1, 0])) < 1e-6, s.segment_id
    text = community_text()
    assert {s.segment_id: s.text for s in m.segments} == text
    for cid, segs in list(m.calls().items()):
        ks = [int(s.segment_id.rsplit("_", 1)[1]) for s in segs]
        assert ks == sorted(ks), cid


def test_mosi_extraction_of_a_few_videos(tmp_path, tiny_encoders, one_torch_thread, monkeypatch):
    """The shortest video of each fold, its audio generated at its real length: every labelled interval is
    extracted with its own label, split and interval (to 1 ms); other videos (no audio) are left out."""
    labels, folds, text = (
        csd_labels(),
        sdk_folds(REAL / "mosi" / "cmu_mosi_std_folds.py"),
        community_text(),
    )
    root = tmp_path / "mosi"
    want, words = {}, {}
    for split in ("train", "valid", "test"):
        # short videos whose intervals do not overlap and whose every segment has a community transcript
        ok = [
            v
            for v in labels
            if folds[v] == split
            and np.all(np.diff(labels[v][1][:, 0]) > 0)
            and np.all(labels[v][1][1:, 0] >= labels[v][1][:-1, 1] - 1e-4)
            and all(f"{v}_{k + 1}" in text for k in range(len(labels[v][0])))
        ]
        vid = min(ok, key=lambda v: float(labels[v][1].max()))
        feats, ivs = labels[vid]
        from test_datasets_benchmarks import tone_wav

        tone_wav(
            root / "Raw/Audio/WAV_16000/Full" / f"{vid}.wav", float(ivs.max()) + 0.5, rate=8000
        )
        texts = [text[f"{vid}_{k + 1}"] for k in range(len(feats))]
        words[vid] = spread_words(ivs, texts)
        for k in range(len(feats)):
            want[f"{vid}[{k}]"] = {
                "label": score(feats[k, 0]),
                "split": split,
                "call": vid,
                "start": float(ivs[k, 0]),
                "end": float(ivs[k, 1]),
                "text": texts[k],
            }
    write_words_csd(root / "CMU_MOSI_TimestampedWords.csd", words)
    seen = spy_texts(monkeypatch)
    got = run_extract(
        tmp_path,
        tiny_encoders,
        "mosi",
        root,
        labels_csd=str(REAL / "mosi" / "CMU_MOSI_Opinion_Labels.csd"),
        split_file=str(REAL / "mosi" / "cmu_mosi_std_folds.py"),
    )
    assert set(got) == set(want)
    for sid, w in want.items():
        g = got[sid]
        assert (g["label"], g["split"], g["call"]) == (w["label"], w["split"], w["call"]), sid
        assert abs(g["start"] - w["start"]) < 1e-3 and abs(g["end"] - w["end"]) < 1e-3, sid
    assert seen == collections.Counter(w["text"] for w in want.values())
