"""Dataset adapters for the paper's public benchmarks: CMU-MOSI / CMU-MOSEI (MMSA label.csv and CMU SDK .csd forms)
and MELD (CSVs + mp4/wav clips). Every file, in its real format (HDF5, WAV, AAC-in-mp4), is generated in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_aac

from pipeline.datasets import DATASETS, ManifestError, load_manifest
from pipeline.labels import get_scheme
from pipeline.manifest import Manifest

h5py = pytest.importorskip("h5py")
av = pytest.importorskip("av")


# ------------------------------------------------------------------------------------------------ fixtures


def tone_wav(path: Path, seconds: float, rate: int = 16000, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def tone_mp4(
    path: Path, seconds: float, rate: int = 44100, freq: float = 440.0, channels: int = 2
) -> Path:
    """A sine tone encoded to AAC in an mp4 container with PyAV (what MELD's clips carry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return write_aac(path, [np.stack([x] * channels, axis=1)], rate)


def write_csd(path: Path, name: str, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A computational sequence as the CMU Multimodal SDK writes it: /<name>/data/<key>/{features,intervals} and
    /<name>/metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group(name)
        data = g.create_group("data")
        for key, (feats, ivs) in entries.items():
            e = data.create_group(key)
            e.create_dataset("features", data=feats)
            e.create_dataset("intervals", data=np.asarray(ivs, dtype=np.float64))
        meta = g.create_group("metadata")
        meta.attrs["root name"] = name
        meta.attrs["computational sequence version"] = "1.0"
    return path


def words_entry(words: list[tuple[str, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    feats = np.array([[w.encode()] for w, _, _ in words], dtype="S32")
    ivs = np.array([[a, b] for _, a, b in words], dtype=np.float64)
    return feats, ivs


def write_csv(
    path: Path, rows: list[dict], header: list[str] | None = None, encoding: str = "utf-8"
) -> Path:
    header = header or list(rows[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def reasons(m: Manifest) -> str:
    return "\n".join(str(i) for i in m.issues)


def by_id(m: Manifest) -> dict:
    return {s.segment_id: s for s in m.segments}


def check_invariants(m: Manifest) -> None:
    """Unique ids, indices 0..k-1 per call, one split per call, absolute existing audio, valid labels."""
    scheme = get_scheme(m.label_scheme)
    assert scheme.level == "segment"
    ids = [s.segment_id for s in m.segments]
    assert len(ids) == len(set(ids))
    for cid, segs in m.calls().items():
        assert [s.index for s in segs] == list(range(len(segs))), cid
        assert len({s.split for s in segs}) == 1, cid
        for s in segs:
            assert Path(s.audio_path).is_absolute() and Path(s.audio_path).is_file()
            assert scheme.is_valid(s.label), s.label
            assert s.source_row


# ------------------------------------------------------------------------------------------------ MOSI, SDK form

# video -> [(start, end, score, words spoken in the interval)], listed out of time order on purpose
MOSI_VIDEOS = {
    "vidA": [
        (4.0, 6.0, -1.4, ["but", "the", "ending"]),
        (0.5, 2.0, 2.4, ["i", "loved", "it"]),
        (2.5, 3.8, 0.0, ["really"]),
    ],
    "vidB": [(0.2, 1.5, -3.0, ["awful"]), (1.6, 3.0, 1.0, ["okay", "then"])],
    "vidC": [(0.0, 1.0, 3.0, ["great"]), (1.2, 2.2, -0.6666667, ["meh", "so", "so"])],
    "vidD": [(0.0, 1.0, 0.4, ["fine"])],
}


def make_sdk(
    root: Path,
    *,
    per_segment_keys: bool = False,
    dataset: str = "mosi",
    label_width: int = 1,
    extra_labels: dict | None = None,
) -> Path:
    """labels + words .csd and one 16 kHz WAV per video at Raw/Audio/WAV_16000/Full/<video>.wav."""
    labels, words = {}, {}
    for vid, utts in {**MOSI_VIDEOS, **(extra_labels or {})}.items():
        ivs = np.array([[a, b] for a, b, _, _ in utts])
        feats = np.zeros((len(utts), label_width), dtype=np.float32)
        feats[:, 0] = [score for _, _, score, _ in utts]
        if label_width > 1:
            feats[:, 1:] = 0.5  # MOSEI's emotion columns: not the label
        if per_segment_keys:
            for k in range(len(utts)):
                labels[f"{vid}[{k}]"] = (feats[k : k + 1], ivs[k : k + 1])
        else:
            labels[vid] = (feats, ivs)
        ws = []
        for a, b, _, spoken in utts:
            step = (b - a) / (len(spoken) + 1)
            ws += [(w, a + i * step, a + (i + 1) * step) for i, w in enumerate(spoken)]
            ws.append(("sp", b, b + 0.1))
        ws.sort(key=lambda x: x[1])
        words[vid] = words_entry(ws)
        tone_wav(
            root / "Raw" / "Audio" / "WAV_16000" / "Full" / f"{vid}.wav",
            max(b for _, b, _, _ in utts) + 0.5,
        )
    up = dataset.upper()
    write_csd(
        root / f"CMU_{up}_{'Opinion_Labels' if dataset == 'mosi' else 'Labels'}.csd",
        "Opinion Segment Labels" if dataset == "mosi" else "All Labels",
        labels,
    )
    write_csd(root / f"CMU_{up}_TimestampedWords.csd", "words", words)
    return root


FOLDS_PY = """standard_train_fold=['vidA',
 'vidB']
standard_valid_fold=['vidC']
standard_test_fold=['vidD']
"""


def test_sdk_form_with_standard_folds_file(tmp_path):
    root = make_sdk(tmp_path / "mosi", extra_labels={"vidE": [(0.0, 1.0, 1.0, ["x"])]})
    (root / "cmu_mosi_std_folds.py").write_text(FOLDS_PY + "import os\nos.remove('never run')\n")
    (root / "Raw/Audio/WAV_16000/Full/vidD.wav").rename(
        root / "vidD.wav"
    )  # also found in DATA_DIR itself
    m = load_manifest("mosi", root)
    check_invariants(m)
    assert (m.dataset, m.label_scheme) == ("mosi", "sentiment")
    assert m.notes["form"] == "sdk" and m.notes["split"] == "file"
    assert m.notes["split_file"] == "cmu_mosi_std_folds.py"
    calls = m.calls()
    assert set(calls) == {"vidA", "vidB", "vidC", "vidD"}, "vidE is in no fold"
    assert "video vidE" in reasons(m) and "not in any split" in reasons(m)
    a = calls["vidA"]
    # time order, ids from the SDK row, transcripts from the words inside each interval ("sp" dropped)
    assert [s.segment_id for s in a] == ["vidA[1]", "vidA[2]", "vidA[0]"]
    assert [s.text for s in a] == ["i loved it", "really", "but the ending"]
    assert [s.label for s in a] == ["2.4", "0.0", "-1.4"]
    assert [(s.start, s.end) for s in a] == [(0.5, 2.0), (2.5, 3.8), (4.0, 6.0)]
    assert (
        {s.split for s in a} == {"train"}
        and calls["vidC"][0].split == "valid"
        and calls["vidD"][0].split == "test"
    )
    assert calls["vidC"][1].label == "-0.6666667" and calls["vidC"][1].text == "meh so so"
    assert calls["vidD"][0].audio_path == str((root / "vidD.wav").resolve())
    assert a[0].source_row == "CMU_MOSI_Opinion_Labels.csd:vidA[1]"
    enc = get_scheme("sentiment").encode_all([s.label for s in a])
    np.testing.assert_allclose(enc["score"], [2.4, 0.0, -1.4], rtol=1e-6)
    assert (
        enc["2"].tolist() == [1, 1, 0]
        and enc["7"].tolist() == [5, 3, 2]
        and enc["5"].tolist() == [4, 2, 1]
    )


def test_sdk_form_bad_scores_missing_audio_and_generated_split_noted(tmp_path):
    extra = {
        "vidE": [(0.0, 1.0, float("nan"), ["x"]), (1.0, 2.0, 3.5, ["y"]), (2.0, 3.0, -2.0, ["z"])]
    }
    root = make_sdk(tmp_path / "mosi", extra_labels=extra)
    (root / "Raw/Audio/WAV_16000/Full/vidB.wav").unlink()
    m = load_manifest("mosi", root, seed=3)
    check_invariants(m)
    r = reasons(m)
    assert "CMU_MOSI_Opinion_Labels.csd:vidE[0]: unknown label 'nan'" in r
    assert "CMU_MOSI_Opinion_Labels.csd:vidE[1]: unknown label '3.5'" in r
    assert "audio of video vidB not found" in r and "Raw/Audio/WAV_16000/Full/vidB.wav" in r
    assert [s.segment_id for s in m.calls()["vidE"]] == ["vidE[2]"]
    assert "vidB" not in m.calls()
    assert (
        m.notes["split"] == "generated"
        and "NOT the standard CMU-MOSI folds" in m.notes["split_note"]
    )
    assert (
        set(m.notes["split_counts"]) == {"train", "valid", "test"}
        and sum(m.notes["split_counts"].values()) == 4
    )
    again = load_manifest("mosi", root, seed=3)
    assert [(s.segment_id, s.split) for s in again.segments] == [
        (s.segment_id, s.split) for s in m.segments
    ]


def test_sdk_form_mosei_aligned_keys_and_split_file_option(tmp_path):
    """CMU-MOSEI: 7-column labels (sentiment first), entries keyed <video>[k], audio in a folder named by option."""
    root = make_sdk(tmp_path / "mosei", per_segment_keys=True, dataset="mosei", label_width=7)
    (root / "Raw").rename(tmp_path / "elsewhere")
    pairs = (("vidA", "train"), ("vidB", "dev"), ("vidC", "test"), ("vidD", "train"))
    split = write_csv(root / "my_split.csv", [{"video_id": v, "split": s} for v, s in pairs])
    m = load_manifest(
        "mosei",
        root,
        split_file=split.name,
        audio_dir=tmp_path / "elsewhere" / "Audio" / "WAV_16000" / "Full",
    )
    check_invariants(m)
    assert m.dataset == "mosei" and "of 7" in m.notes["label_column"]
    assert [s.segment_id for s in m.calls()["vidA"]] == ["vidA[1]", "vidA[2]", "vidA[0]"]
    assert [s.label for s in m.calls()["vidA"]] == ["2.4", "0.0", "-1.4"]
    assert m.calls()["vidB"][0].split == "valid" and m.notes["split_file"] == "my_split.csv"
    # an older MOSEI release: the score in LabelsSentiment beside LabelsEmotions; the sentiment file is chosen
    (root / "CMU_MOSEI_Labels.csd").rename(root / "CMU_MOSEI_LabelsSentiment.csd")
    write_csd(
        root / "CMU_MOSEI_LabelsEmotions.csd",
        "Emotion Labels",
        {"vidA[0]": (np.full((1, 6), 9.0, dtype=np.float32), np.array([[4.0, 6.0]]))},
    )
    json_split = root / "folds.json"
    json_split.write_text(
        json.dumps({"train": ["vidA", "vidB"], "valid": ["vidC"], "test": ["vidD"]})
    )
    m2 = load_manifest(
        "mosei", root, split_file=json_split, audio_dir=tmp_path / "elsewhere/Audio/WAV_16000/Full"
    )
    assert {c: segs[0].split for c, segs in m2.calls().items()} == {
        "vidA": "train",
        "vidB": "train",
        "vidC": "valid",
        "vidD": "test",
    }
    assert m2.notes["sources"][0] == "CMU_MOSEI_LabelsSentiment.csd"
    assert [s.label for s in m2.calls()["vidA"]] == ["2.4", "0.0", "-1.4"]


def test_sdk_form_structural_problems_name_the_file_and_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="neither label.csv .* nor a labels .csd"):
        load_manifest("mosi", empty)
    root = make_sdk(tmp_path / "mosi")
    (root / "CMU_MOSI_TimestampedWords.csd").unlink()
    with pytest.raises(
        ManifestError, match="no words computational sequence .*CMU_MOSI_TimestampedWords.csd"
    ):
        load_manifest("mosi", root)
    (root / "CMU_MOSI_TimestampedWords.csd").write_bytes(b"not hdf5 at all")
    with pytest.raises(
        ManifestError, match="CMU_MOSI_TimestampedWords.csd: not an HDF5 computational sequence"
    ):
        load_manifest("mosi", root)
    with h5py.File(root / "CMU_MOSI_TimestampedWords.csd", "w") as f:
        f.create_group("words").create_group("metadata")
    with pytest.raises(
        ManifestError, match="TimestampedWords.csd: not a computational sequence .*'data'"
    ):
        load_manifest("mosi", root)
    make_sdk(root)
    with h5py.File(
        root / "CMU_MOSI_Opinion_Labels.csd", "a"
    ) as f:  # one damaged entry: named, the rest read
        del f["Opinion Segment Labels/data/vidB/intervals"]
        f["Opinion Segment Labels/data/vidB"].create_dataset("intervals", data=np.zeros((5, 2)))
    m = load_manifest("mosi", root)
    assert (
        "vidB" not in m.calls()
        and "CMU_MOSI_Opinion_Labels.csd:vidB: features (2, 1) and intervals (5, 2)" in reasons(m)
    )
    (root / "folds.py").write_text("standard_train_fold=['vidA']\nstandard_test_fold=['vidA']\n")
    with pytest.raises(ManifestError, match="folds.py: video vidA is in both train and test"):
        load_manifest("mosi", root, split_file="folds.py")
    (root / "folds.py").write_text("standard_train_fold=['x1']\n")
    with pytest.raises(ManifestError, match="folds.py: names none of the videos"):
        load_manifest("mosi", root, split_file="folds.py")


# ------------------------------------------------------------------------------------------------ MOSI, CSV form

MMSA_HEADER = [
    "video_id",
    "clip_id",
    "text",
    "label",
    "label_T",
    "label_A",
    "label_V",
    "annotation",
    "mode",
]


def mmsa_rows() -> list[dict]:
    rows = []
    for vid, mode, clips in (
        ("03bSnISJMiM", "train", [(1, 2.0), (2, -1.4000000), (10, 0.6)]),
        ("0h-zjBukYpk", "valid", [(1, -3), (2, 1.2)]),
        ("1DmNV9C1hbY", "test", [(3, 0.0), (5, 2.8)]),
    ):
        for clip, score in clips:
            rows.append(
                {
                    "video_id": vid,
                    "clip_id": str(clip),
                    "text": f"{vid[:3]} clip {clip}",
                    "label": str(score),
                    "label_T": "",
                    "label_A": "",
                    "label_V": "",
                    "annotation": "Positive",
                    "mode": mode,
                }
            )
    return rows


def test_csv_form_per_utterance_wav_and_mp4(tmp_path):
    root = tmp_path / "MOSI"
    rows = mmsa_rows()
    rows.append({**rows[0], "clip_id": "11", "label": "abc"})  # not a score
    rows.append({**rows[0], "clip_id": "12", "mode": "holdout"})  # not a split
    rows.append({**rows[0], "clip_id": "13"})  # no audio
    write_csv(root / "label.csv", rows, MMSA_HEADER)
    for r in rows:
        if r["video_id"] == "1DmNV9C1hbY":  # MMSA's Raw/<video>/<clip>.mp4
            tone_mp4(root / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4", 0.6)
        elif r["clip_id"] not in ("13",):  # MMML's wav/<video>/<clip>.wav
            tone_wav(root / "wav" / r["video_id"] / f"{r['clip_id']}.wav", 0.5)
    m = load_manifest("mosi", root)
    check_invariants(m)
    assert (
        m.notes["form"] == "csv"
        and m.notes["split"] == "column"
        and m.notes["audio"] == "per utterance"
    )
    a = m.calls()["03bSnISJMiM"]
    assert [s.segment_id for s in a] == ["03bSnISJMiM_1", "03bSnISJMiM_2", "03bSnISJMiM_10"], (
        "clip 10 after 2"
    )
    assert [s.label for s in a] == ["2.0", "-1.4", "0.6"]
    assert a[0].text == "03b clip 1" and a[0].start is None and a[0].source_row == "label.csv:2"
    assert {s.split for s in m.calls()["0h-zjBukYpk"]} == {"valid"}
    t = m.calls()["1DmNV9C1hbY"]
    assert t[0].split == "test" and t[0].audio_path.endswith("Raw/1DmNV9C1hbY/3.mp4")
    r = reasons(m)
    assert "unknown label 'abc'" in r and "unknown mode 'holdout'" in r
    assert "audio of utterance 03bSnISJMiM_13 not found; looked for wav/03bSnISJMiM/13.wav|mp4" in r
    assert len(m) == 7
    enc = get_scheme("sentiment").encode_all([s.label for s in m.segments])
    assert enc["2"].tolist() == [1, 0, 1, 0, 1, 1, 1]


def test_csv_form_per_video_wav_with_timings(tmp_path):
    root = tmp_path / "mosi"
    rows = [
        {
            "video_id": "v1",
            "clip_id": "2",
            "text": "second",
            "label": "-0.5",
            "mode": "train",
            "start": "3.0",
            "end": "5.5",
        },
        {
            "video_id": "v1",
            "clip_id": "1",
            "text": "first",
            "label": "1",
            "mode": "train",
            "start": "0.25",
            "end": "2.75",
        },
        {
            "video_id": "v1",
            "clip_id": "3",
            "text": "late",
            "label": "1",
            "mode": "train",
            "start": "9",
            "end": "10",
        },
        {
            "video_id": "v1",
            "clip_id": "4",
            "text": "bad",
            "label": "1",
            "mode": "train",
            "start": "x",
            "end": "1",
        },
        {
            "video_id": "v2",
            "clip_id": "1",
            "text": "other",
            "label": "3",
            "mode": "test",
            "start": "0",
            "end": "1",
        },
    ]
    write_csv(root / "label.csv", rows)
    tone_wav(root / "Raw" / "Audio" / "WAV_16000" / "Full" / "v1.wav", 6.0)
    tone_wav(root / "wav" / "v2.wav", 1.5)
    m = load_manifest("mosi", root)
    check_invariants(m)
    assert m.notes["audio"] == "per video with start/end"
    v1 = m.calls()["v1"]
    assert [(s.segment_id, s.start, s.end, s.label) for s in v1] == [
        ("v1_1", 0.25, 2.75, "1.0"),
        ("v1_2", 3.0, 5.5, "-0.5"),
    ]
    assert v1[0].audio_path == v1[1].audio_path
    assert m.calls()["v2"][0].audio_path.endswith("wav/v2.wav")
    r = reasons(m)
    assert (
        "label.csv:4: start 9 s is past the end of v1.wav" in r
        and "label.csv:5: start/end 'x'/'1'" in r
    )


def test_csv_form_whole_video_only_hints_timings_and_missing_columns(tmp_path):
    root = tmp_path / "mosi"
    write_csv(
        root / "label.csv",
        [
            {"video_id": "v1", "clip_id": "1", "text": "t", "label": "1", "mode": "train"},
            {"video_id": "v2", "clip_id": "1", "text": "t", "label": "1", "mode": "test"},
        ],
    )
    tone_wav(root / "wav" / "v1" / "1.wav", 0.5)
    tone_wav(root / "wav" / "v2.wav", 0.5)
    m = load_manifest("mosi", root)
    assert set(m.calls()) == {"v1"}
    assert "only the whole video v2.wav is there: add start,end columns" in reasons(m)
    write_csv(root / "label.csv", [{"video_id": "v1", "text": "t", "score": "1"}])
    with pytest.raises(
        ManifestError, match=r"label.csv: missing column\(s\) clip_id, label; found video_id, text"
    ):
        load_manifest("mosi", root)


def test_csv_form_without_mode_gets_a_noted_video_level_split(tmp_path):
    root = tmp_path / "mosi"
    rows = [
        {"video_id": f"v{i}", "clip_id": str(k), "text": "t", "label": str((-1) ** i * 0.5 * k)}
        for i in range(10)
        for k in (1, 2)
    ]
    write_csv(root / "label.csv", rows)
    for r in rows:
        tone_wav(root / "wav" / r["video_id"] / f"{r['clip_id']}.wav", 0.3)
    m = load_manifest("mosi", root, split_ratios="0.6,0.2,0.2")
    check_invariants(m)
    assert m.notes["split"] == "generated" and "NOT the standard" in m.notes["split_note"]
    assert m.notes["split_counts"] == {"train": 6, "valid": 2, "test": 2}


def test_registered_with_options():
    assert {"mosi", "mosei", "meld"} <= set(DATASETS)
    with pytest.raises(ManifestError, match="has no option"):
        load_manifest("meld", ".", split_file="x")


# ------------------------------------------------------------------------------------------------ MELD

MELD_HEADER = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]


def meld_row(i: int, text: str, emotion: str, sentiment: str, dia: int, utt: int) -> dict:
    return {
        "Sr No.": str(i),
        "Utterance": text,
        "Speaker": "Chandler",
        "Emotion": emotion,
        "Sentiment": sentiment,
        "Dialogue_ID": str(dia),
        "Utterance_ID": str(utt),
        "Season": "8",
        "Episode": "21",
        "StartTime": "00:16:16,059",
        "EndTime": "00:16:21,731",
    }


def make_meld(root: Path) -> Path:
    train = [
        meld_row(1, "Oh my God, he\u2019s lost it.", "Surprise", "Negative", 0, 1),
        meld_row(2, "You\u2019re kidding\u2026", "neutral", "neutral", 0, 0),
        meld_row(3, "I\u2019m so happy!", "Joy", "Positive", 1, 0),
        meld_row(4, "Whatever.", "boredom", "neutral", 1, 1),
    ]  # not a MELD emotion
    dev = [
        meld_row(1, "Where\u2019s my \u201ccoffee\u201d?", "Anger", "Negative", 125, 2),
        meld_row(2, "Gone.", "sadness", "negative", 125, 3),  # MELD's missing clip
        meld_row(3, "Hi.", "neutral", "neutral", 0, 0),
    ]  # dev's dia0 is not train's dia0
    test = [
        meld_row(1, "Fine.", "disgust", "negative", 3, 0),
        meld_row(2, "Ugh.", "fear", "negative", 3, 1),
    ]
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        write_csv(root / f"{name}_sent_emo.csv", rows, MELD_HEADER, encoding="cp1252")
    tone_wav(root / "train_splits" / "dia0_utt0.wav", 0.6, rate=16000)  # extracted beforehand
    tone_mp4(root / "train_splits" / "dia0_utt1.mp4", 0.8)
    tone_mp4(root / "train_splits" / "dia1_utt0.mp4", 0.7, rate=48000, channels=1)
    tone_mp4(root / "train_splits" / "dia1_utt1.mp4", 0.5)
    tone_mp4(root / "dev_splits_complete" / "dia125_utt2.mp4", 0.9)
    tone_mp4(root / "dev_splits_complete" / "dia0_utt0.mp4", 0.5)
    tone_wav(root / "test" / "dia3_utt0.wav", 0.5)
    tone_wav(root / "test" / "dia3_utt1.wav", 0.5)
    return root


def test_meld_manifest_from_cp1252_csvs_and_clips(tmp_path):
    root = make_meld(tmp_path / "MELD.Raw")
    assert "\x92".encode("latin-1") in (root / "train_sent_emo.csv").read_bytes(), (
        "the fixture is cp1252"
    )
    m = load_manifest("meld", tmp_path)  # the CSVs sit in DATA_DIR/MELD.Raw
    check_invariants(m)
    assert (m.dataset, m.label_scheme) == ("meld", "meld")
    assert m.notes["encodings"]["train_sent_emo.csv"] == "cp1252"
    calls = m.calls()
    assert set(calls) == {"train/dia0", "train/dia1", "dev/dia125", "dev/dia0", "test/dia3"}
    d0 = calls["train/dia0"]
    assert [s.segment_id for s in d0] == ["train/dia0_utt0", "train/dia0_utt1"], (
        "Utterance_ID order"
    )
    assert [s.label for s in d0] == ["neutral/neutral", "surprise/negative"]
    assert (
        d0[1].text == "Oh my God, he\u2019s lost it." and d0[0].text == "You\u2019re kidding\u2026"
    )
    assert d0[0].audio_path.endswith("dia0_utt0.wav") and d0[1].audio_path.endswith("dia0_utt1.mp4")
    assert d0[1].source_row == "train_sent_emo.csv:2"
    assert [s.segment_id for s in calls["train/dia1"]] == ["train/dia1_utt0"]
    assert {s.split for s in calls["dev/dia125"]} == {"valid"} and calls["test/dia3"][
        0
    ].split == "test"
    assert calls["dev/dia125"][0].text == "Where\u2019s my \u201ccoffee\u201d?"
    r = reasons(m)
    assert "train_sent_emo.csv:5: unknown label 'boredom/neutral'" in r
    assert "dev_sent_emo.csv:3: clip dia125_utt3.mp4 (or .wav) not found" in r
    enc = get_scheme("meld").encode_all([s.label for s in m.segments])
    labels = [s.label for s in m.segments]
    assert enc["emotion"].tolist() == [
        ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger").index(x.split("/")[0])
        for x in labels
    ]
    assert enc["sentiment"][labels.index("joy/positive")] == 1


def test_meld_repairs_double_encoded_text_and_names_missing_columns(tmp_path):
    from pipeline.datasets._common import WESTERN_ENCODINGS, decode_csv_bytes
    from pipeline.datasets.meld import repair_text

    def decode_meld_bytes(raw):
        return decode_csv_bytes(raw, "x.csv", [], WESTERN_ENCODINGS)

    assert (
        repair_text("Oh my God, he\u00e2\u0080\u0099s lost it.") == "Oh my God, he\u2019s lost it."
    )
    assert repair_text("he\x92s") == "he\u2019s"
    assert repair_text("café déjà vu") == "café déjà vu"  # genuine Latin-1 text is left alone
    assert decode_meld_bytes("caf\u00e9".encode("utf-8")) == ("caf\u00e9", "utf-8")
    assert decode_meld_bytes(b"he\x92s \x81") == ("he\x92s \x81", "latin-1")  # cp1252 has no 0x81
    root = tmp_path
    write_csv(
        root / "train_sent_emo.csv", [{"Utterance": "x", "Dialogue_ID": "0", "Utterance_ID": "0"}]
    )
    (root / "train_splits").mkdir()
    with pytest.raises(
        ManifestError, match=r"train_sent_emo.csv: missing column\(s\) emotion, sentiment"
    ):
        load_manifest("meld", root)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no MELD CSV found; expected train_sent_emo.csv"):
        load_manifest("meld", empty)


def test_meld_without_clip_folders_says_where_they_go(tmp_path):
    write_csv(
        tmp_path / "dev_sent_emo.csv", [meld_row(1, "Hi.", "joy", "positive", 0, 0)], MELD_HEADER
    )
    with pytest.raises(ManifestError, match="no MELD clip folder found .*dev_splits_complete"):
        load_manifest("meld", tmp_path)
    (tmp_path / "clips" / "dev").mkdir(parents=True)
    tone_wav(tmp_path / "clips" / "dev" / "dia0_utt0.wav", 0.4)
    m = load_manifest("meld", tmp_path, clips_dir="clips")
    assert [s.segment_id for s in m.segments] == ["dev/dia0_utt0"] and m.notes[
        "missing_splits"
    ] == ["train", "test"]
    (tmp_path / "clips" / "dev" / "dia0_utt0.wav").write_bytes(b"")
    with pytest.raises(ManifestError, match="dia0_utt0.wav is empty"):
        load_manifest("meld", tmp_path, clips_dir="clips")


# ------------------------------------------------------------------------------------------------ mp4 decoding


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def test_mp4_aac_decoded_through_load_segment(tmp_path):
    from extract.audio import AudioError, load_segment, probe_duration

    clip = tone_mp4(tmp_path / "dia0_utt0.mp4", 1.5, rate=44100, freq=440.0)
    assert probe_duration(str(clip)) == pytest.approx(1.5, abs=0.03)
    x, warnings = load_segment(str(clip), None, None, 16000)
    assert x.dtype == np.float32 and x.ndim == 1 and warnings == []
    assert len(x) == pytest.approx(1.5 * 16000, abs=0.03 * 16000), "priming and padding are cut off"
    assert _peak_hz(x, 16000) == pytest.approx(440.0, abs=3.0)
    assert 0.2 < float(np.sqrt(np.mean(x[2000:-2000] ** 2))) < 0.25, (
        "a 0.3-amplitude sine has RMS 0.21"
    )
    part, _ = load_segment(str(clip), 0.5, 1.0, 8000)
    assert len(part) == 4000 and _peak_hz(part, 8000) == pytest.approx(440.0, abs=5.0)
    tail, _ = load_segment(str(clip), 1.2, None, 8000)
    assert len(tail) == pytest.approx(0.3 * 8000, abs=0.03 * 8000)
    with pytest.raises(AudioError, match="past the end"):
        load_segment(str(clip), 2.0, None, 16000)
    broken = tmp_path / "dia125_utt3.mp4"
    broken.write_bytes(clip.read_bytes()[:200])
    with pytest.raises(AudioError, match="cannot decode audio"):
        load_segment(str(broken), None, None, 16000)
    assert probe_duration(str(tmp_path / "missing.mp4")) is None


def test_mp4_without_audio_track_is_refused(tmp_path):
    from extract.audio import AudioError, load_segment, probe_duration

    path = tmp_path / "silent_video.mp4"
    with av.open(str(path), "w", format="mp4") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 32, 3), 40 * i, dtype=np.uint8), format="rgb24"
            )
            for packet in st.encode(frame):
                c.mux(packet)
        for packet in st.encode(None):
            c.mux(packet)
    assert probe_duration(str(path)) is None
    with pytest.raises(AudioError, match="no audio track"):
        load_segment(str(path), None, None, 16000)


# ------------------------------------------------------------------------------------------------ end to end


def test_extract_meld_store_has_per_utterance_labels(tmp_path, tiny_encoders, one_torch_thread):
    from extract.run import ExtractConfig, extract
    from pipeline.store import CacheStore

    root = make_meld(tmp_path / "meld")
    cfg = ExtractConfig(
        dataset="meld",
        data_dir=str(root),
        out=str(tmp_path / "meld.zarr"),
        audio_model=str(tiny_encoders["group"]),
        text_model=str(tiny_encoders["text"]),
        num_workers=0,
        shard_size=4,
        block_shards=2,
    )
    res = extract(cfg, progress=False)
    m = load_manifest("meld", root)
    assert (res.total, res.done, res.skipped) == (len(m), len(m), 0)
    assert res.manifest_skipped == 2
    s = CacheStore.open(res.store)
    t = s.table()
    want = {seg.segment_id: (seg.label, seg.split, seg.call_id) for seg in m.segments}
    got = {
        sid: (lab, sp, cid)
        for sid, lab, sp, cid in zip(t["segment_id"], t["label"], t["split"], t["call_id"])
    }
    assert got == want
    assert len(set(t["label"][t["call_id"] == "train/dia0"])) == 2, (
        "each utterance keeps its own label"
    )
    al = s.lengths("audio")
    assert np.all(al > 0) and np.abs(s.array("audio/hidden")[:]).sum() > 0


def test_mosi_sdk_files_extract_with_cli_options_then_train_the_regression(
    tmp_path, tiny_encoders, one_torch_thread
):
    """The user's path: msmtfn-extract --dataset mosi --option split_file=... then msmtfn-train on the store."""
    from click.testing import CliRunner

    from extract.cli import main as extract_cli
    from train.cli import main as train_cli

    root = make_sdk(tmp_path / "mosi")
    pairs = (("vidA", "train"), ("vidB", "valid"), ("vidC", "train"), ("vidD", "test"))
    write_csv(tmp_path / "my_split.csv", [{"video_id": v, "split": s} for v, s in pairs])
    out = tmp_path / "mosi.zarr"
    args = [
        "--dataset",
        "mosi",
        "--data-dir",
        str(root),
        "--out",
        str(out),
        "--audio-model",
        str(tiny_encoders["group"]),
        "--text-model",
        str(tiny_encoders["text"]),
        "--num-workers",
        "0",
        "-q",
        "--option",
        f"split_file={tmp_path / 'my_split.csv'}",
    ]
    r = CliRunner().invoke(extract_cli, args + ["--option", "nope=1"])
    assert r.exit_code == 2 and "has no option 'nope'" in r.output and not out.exists()
    r = CliRunner().invoke(extract_cli, args)
    assert r.exit_code == 0, r.output
    from pipeline.store import CacheStore

    t = CacheStore.open(out).table()
    assert {c: s for c, s in zip(t["call_id"], t["split"])} == dict(pairs)
    r = CliRunner().invoke(
        train_cli,
        [
            "--cache",
            str(out),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            "--d-model",
            "32",
            "--heads",
            "4",
            "--ffn",
            "64",
            "--gru-hidden",
            "8",
            "--head-hidden",
            "16",
            "--cross-layers",
            "1",
            "--bottleneck-layers",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-plots",
            "-q",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["config"]["task"] == "score" and m["level"] == "segment"
    n_test = int((t["split"] == "test").sum())
    assert m["test"]["score"]["n"] == n_test and m["test"]["7"]["derived_from"] == "score"
    assert "accuracy_nonzero" in m["test"]["2"]


def test_summaries_count_segment_labels_per_class():
    from pipeline.labels import label_counts

    got = label_counts("meld", ["d0", "d0", "d1"], ["joy/positive", "", "anger/negative"])
    assert got["segments per emotion"]["joy"] == 1 and got["segments per emotion"]["(none)"] == 1
    assert got["segments per sentiment"] == {
        "neutral": 0,
        "positive": 1,
        "negative": 1,
        "(none)": 1,
    }
    got = label_counts("sentiment", ["v", "v"], ["-1.2", "0.4"])
    assert (
        got["segments per 2-class"] == {"negative": 1, "non-negative": 1}
        and "segments per score" not in got
    )
    assert label_counts("marketcalls", ["c1", "c1", "c2"], ["B", "B", "A"]) == {
        "calls per label": {"A": 1, "B": 1}
    }
