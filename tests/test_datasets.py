"""Dataset adapters: marketcalls, generic csv, demo. Every file is generated inside tmp_path."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.datasets import (
    DATASETS,
    ManifestError,
    generate_demo,
    load_manifest,
    stratified_split,
)
from pipeline.manifest import Manifest

HEADER = ["phone", "Audio_id", "text", "label"]


def wav(path: Path, seconds: float = 0.2, rate: int = 8000, freq: float = 200.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


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


def mc_rows(
    n_calls: int,
    segs: int = 3,
    *,
    labels: str = "ABCDE",
    prefix: str = "1380000",
    ext: bool = False,
) -> list[dict]:
    rows = []
    for c in range(n_calls):
        for k in range(segs):
            name = f"{prefix}{c:04d}_{k}"
            rows.append(
                {
                    "phone": f"{prefix}{c:04d}",
                    "Audio_id": name + (".wav" if ext else ""),
                    "text": f"第{k}段好的可以",
                    "label": labels[c % len(labels)],
                }
            )
    return rows


def make_audio(root: Path, rows: list[dict], key: str = "Audio_id", sub: str = "audio") -> None:
    for r in rows:
        name = r[key]
        wav(root / sub / (name if name.endswith(".wav") else name + ".wav"))


def check_invariants(m: Manifest) -> None:
    """Every manifest: absolute existing audio, unique ids, indices 0..k-1, one split and one label per call."""
    ids = [s.segment_id for s in m.segments]
    assert len(ids) == len(set(ids))
    for cid, segs in m.calls().items():
        assert [s.index for s in segs] == list(range(len(segs))), cid
        assert len({s.split for s in segs}) == 1 and len({s.label for s in segs}) == 1, cid
        for s in segs:
            assert Path(s.audio_path).is_absolute() and Path(s.audio_path).is_file()


def reasons(m: Manifest) -> list[str]:
    return [str(i) for i in m.issues]


# ------------------------------------------------------------------------------------------------ marketcalls


def test_marketcalls_per_split_files_with_and_without_wav_and_audio_in_root(tmp_path):
    train = mc_rows(4, prefix="1390000")
    valid = mc_rows(2, prefix="1391000", ext=True)  # Audio_id with .wav
    test = mc_rows(2, prefix="1392000")
    make_audio(tmp_path, train)  # in audio/
    make_audio(tmp_path, valid, sub="")  # in DATA_DIR itself
    make_audio(tmp_path, test)
    write_csv(tmp_path / "train.csv", train)
    write_csv(tmp_path / "val.csv", valid)  # val.csv is the valid split
    write_csv(tmp_path / "test.csv", test)
    m = load_manifest("marketcalls", tmp_path)
    check_invariants(m)
    assert m.dataset == "marketcalls" and m.label_scheme == "marketcalls"
    assert len(m) == 24 and not m.issues
    assert m.summary()["calls_per_split"] == {"train": 4, "valid": 2, "test": 2}
    assert m.notes["split"] == "files" and m.notes["split_files"]["valid"] == "val.csv"
    seg = next(s for s in m.segments if s.call_id == "13910000001" and s.index == 2)
    assert seg.segment_id == "13910000001_2"  # ".wav" is not part of the id
    assert Path(seg.audio_path) == (tmp_path / "13910000001_2.wav").resolve()
    assert Path(m.segments[0].audio_path).parent == (tmp_path / "audio").resolve()


def test_marketcalls_one_csv_with_split_column(tmp_path):
    rows = mc_rows(6)
    for r, sp in zip(
        rows, ["train"] * 6 + ["val"] * 3 + ["DEV"] * 3 + ["Test"] * 3 + ["bogus"] * 3
    ):
        r["split"] = sp
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "data.csv", rows)
    m = load_manifest("marketcalls", tmp_path)
    check_invariants(m)
    assert m.notes["split"] == "column"
    assert {cid: segs[0].split for cid, segs in m.calls().items()} == {
        "13800000000": "train",
        "13800000001": "train",
        "13800000002": "valid",
        "13800000003": "valid",
        "13800000004": "test",
    }
    bad = [i for i in m.issues if "unknown split" in i.reason]
    assert [i.where for i in bad] == ["data.csv:17", "data.csv:18", "data.csv:19"]


def test_marketcalls_generated_split_is_stratified_deterministic_and_leaves_files_alone(tmp_path):
    rows = mc_rows(50, segs=2)  # 10 calls per label
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "marketcalls.csv", rows)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    a = load_manifest("marketcalls", tmp_path, seed=3)
    b = load_manifest("marketcalls", tmp_path, seed=3)
    assert {
        p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    } == before  # nothing written
    check_invariants(a)
    split_a = {cid: s[0].split for cid, s in a.calls().items()}
    assert split_a == {cid: s[0].split for cid, s in b.calls().items()}
    assert a.notes["split"] == "generated" and a.notes["split_seed"] == 3
    assert a.notes["split_counts"] == {"train": 40, "valid": 5, "test": 5}
    label = {cid: s[0].label for cid, s in a.calls().items()}
    for split, per_label in (("valid", 1), ("test", 1), ("train", 8)):
        for lab in "ABCDE":  # stratified: each label equally in each split
            assert sum(1 for c in split_a if split_a[c] == split and label[c] == lab) == per_label
    other = load_manifest("marketcalls", tmp_path, seed=4)
    assert {cid: s[0].split for cid, s in other.calls().items()} != split_a
    custom = load_manifest("marketcalls", tmp_path, split_ratios="0.6,0.2,0.2")
    assert custom.notes["split_counts"] == {"train": 30, "valid": 10, "test": 10}


def test_stratified_split_small_and_uneven():
    # 3 calls: still one per split; uneven labels: every call assigned, sizes from rounding
    assert sorted(stratified_split({"a": "A", "b": "A", "c": "B"}).values()) == [
        "test",
        "train",
        "valid",
    ]
    labels = {f"c{i}": "ABCDE"[min(i // 7, 4)] for i in range(23)}
    out = stratified_split(labels, (0.8, 0.1, 0.1), seed=1)
    assert set(out) == set(labels)
    assert (
        sum(v == "valid" for v in out.values()) == 2 and sum(v == "test" for v in out.values()) == 2
    )
    assert out == stratified_split(dict(reversed(list(labels.items()))), (0.8, 0.1, 0.1), seed=1)
    with pytest.raises(ManifestError, match="split_ratios"):
        stratified_split(labels, (0.5, 0.5), seed=0)


def test_lowercase_audio_id_and_segment_number_order(tmp_path):
    # augmented variant: audio_id + segment_number; file order and file-name numbers both disagree with it
    rows = [
        {
            "phone": "p1",
            "audio_id": f"aug_{n}",
            "segment_number": str(sn),
            "text": f"t{sn}",
            "label": "b",
        }
        for n, sn in [(0, 2), (1, 0), (2, 1)]
    ]
    make_audio(tmp_path, rows, key="audio_id")
    write_csv(tmp_path / "train.csv", rows)
    m = load_manifest("marketcalls", tmp_path)
    check_invariants(m)
    assert [s.text for s in m.calls()["p1"]] == ["t0", "t1", "t2"]
    assert [s.segment_id for s in m.calls()["p1"]] == ["aug_1", "aug_2", "aug_0"]
    assert m.segments[0].label == "B"  # labels are case-insensitive


def test_order_by_number_in_file_name_not_lexicographic(tmp_path):
    rows = [
        {"phone": "p1", "Audio_id": f"13800001111_{k}", "text": f"t{k}", "label": "A"}
        for k in [10, 2, 9, 1, 0, 11]
    ]
    rows.append(
        {"phone": "p2", "Audio_id": "zeta", "text": "first", "label": "C"}
    )  # no number: file order
    rows.append({"phone": "p2", "Audio_id": "alpha", "text": "second", "label": "C"})
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "train.csv", rows)
    m = load_manifest("marketcalls", tmp_path)
    check_invariants(m)
    assert [s.text for s in m.calls()["p1"]] == ["t0", "t1", "t2", "t9", "t10", "t11"]
    assert [s.text for s in m.calls()["p2"]] == ["first", "second"]


def test_unknown_labels_are_skipped_and_named_unless_most_rows_are_unknown(tmp_path):
    rows = mc_rows(4, segs=2)
    rows[1]["label"] = "X"
    rows[3]["label"] = ""
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "train.csv", rows)
    m = load_manifest("marketcalls", tmp_path)
    named = {x.where: x.reason for x in m.issues}
    assert "unknown label 'X'" in named["train.csv:3"] and "row skipped" in named["train.csv:3"]
    assert "unknown label ''" in named["train.csv:5"] and "A, B, C, D, E" in named["train.csv:5"]
    assert len(m) == 6 and {s.source_row for s in m.segments}.isdisjoint(
        {"train.csv:3", "train.csv:5"}
    )
    # most rows unknown: not this scheme's labels at all (wrong column or dataset) -> stop, listing rows
    many = mc_rows(14, segs=1, labels="Z")
    make_audio(tmp_path, many)
    write_csv(tmp_path / "train.csv", many)
    with pytest.raises(ManifestError, match=r"14 row\(s\).*train\.csv:11 'Z'; and 4 more") as e:
        load_manifest("marketcalls", tmp_path)
    assert "\n" not in str(e.value)


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    rows = [{"phone": "p", "Audio_id": "a_0", "transcript": "x", "label": "A"}]
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(ManifestError) as e:
        load_manifest("marketcalls", tmp_path)
    msg = str(e.value)
    assert "train.csv" in msg and "missing column(s) text" in msg and "transcript" in msg


def test_missing_audio_duplicate_id_and_empty_text_are_issues(tmp_path):
    rows = mc_rows(3, segs=3)
    make_audio(tmp_path, rows)
    (tmp_path / "audio" / "13800000001_1.wav").unlink()  # missing audio
    rows.append(dict(rows[0], text="again"))  # duplicate Audio_id (train.csv:11)
    rows[5]["text"] = "   "  # whitespace transcript (train.csv:7)
    write_csv(tmp_path / "train.csv", rows)
    m = load_manifest("marketcalls", tmp_path)
    check_invariants(m)
    assert len(m) == 8
    assert [s.segment_id for s in m.calls()["13800000001"]] == ["13800000001_0", "13800000001_2"]
    by_where = {i.where: i.reason for i in m.issues}
    assert "audio file 13800000001_1 not found" in by_where["train.csv:6"]
    assert "duplicate segment 13800000000_0" in by_where["train.csv:11"]
    first = next(s for s in m.segments if s.segment_id == "13800000000_0")
    assert first.text != "again"  # the first row is kept
    empty = next(s for s in m.segments if s.source_row == "train.csv:7")
    assert empty.text == "" and by_where["train.csv:7"].startswith("warning: empty transcript")


def test_path_escaping_data_dir_is_refused_unless_allowed(tmp_path):
    data = tmp_path / "data"
    wav(tmp_path / "outside" / "x_0.wav")
    rows = mc_rows(2, segs=2) + [
        {"phone": "p9", "Audio_id": "../../outside/x_0.wav", "text": "t", "label": "A"},
        {"phone": "p9", "Audio_id": str(tmp_path / "outside" / "x_0"), "text": "u", "label": "A"},
    ]
    make_audio(data, rows[:4])
    write_csv(data / "train.csv", rows)
    m = load_manifest("marketcalls", data)
    check_invariants(m)
    assert "p9" not in m.calls() and len(m) == 4
    refused = {i.where: i.reason for i in m.issues}
    assert "escapes the dataset directory" in refused["train.csv:6"]
    assert "absolute path" in refused["train.csv:7"]
    allowed = load_manifest("marketcalls", data, allow_outside_paths=True)
    assert len(allowed.calls()["p9"]) == 2  # the two rows name one file but have different ids
    assert Path(allowed.calls()["p9"][0].audio_path) == (tmp_path / "outside" / "x_0.wav").resolve()


def test_gb18030_bom_and_broken_bytes(tmp_path):
    rows = mc_rows(2, segs=2)
    rows[0]["text"] = "您好，我对这个产品很感兴趣，多少钱？"
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "train.csv", rows, encoding="gb18030")
    m = load_manifest("marketcalls", tmp_path)
    assert m.segments[0].text == "您好，我对这个产品很感兴趣，多少钱？" and not m.issues
    write_csv(tmp_path / "train.csv", rows, encoding="utf-8-sig")  # Excel's UTF-8 with BOM
    m = load_manifest("marketcalls", tmp_path)
    assert (
        m.segments[0].text == "您好，我对这个产品很感兴趣，多少钱？"
        and m.segments[0].call_id == "13800000000"
    )
    # one row with bytes that are neither UTF-8 nor GB18030: that row is flagged, the file still reads
    write_csv(tmp_path / "train.csv", rows)
    raw = (tmp_path / "train.csv").read_bytes().split(b"\n")
    raw[3] = raw[3].replace("第0段".encode(), b"\xff\xfe\x80")
    (tmp_path / "train.csv").write_bytes(b"\n".join(raw))
    m = load_manifest("marketcalls", tmp_path)
    assert len(m) == 4
    assert m.segments[0].text == "您好，我对这个产品很感兴趣，多少钱？"  # other rows not mojibake
    assert "\ufffd" in m.segments[2].text
    assert [i.where for i in m.issues] == ["train.csv:4"] and m.issues[0].reason.startswith(
        "warning:"
    )


def test_majority_label_per_call_and_nothing_usable(tmp_path):
    rows = mc_rows(1, segs=3)
    rows[2]["label"] = "E"
    make_audio(tmp_path, rows)
    write_csv(tmp_path / "train.csv", rows)
    m = load_manifest("marketcalls", tmp_path)
    assert {s.label for s in m.segments} == {"A"}
    assert any("different labels" in i.reason for i in m.issues)
    shutil.rmtree(tmp_path / "audio")
    with pytest.raises(ManifestError, match="no usable rows.*train.csv:2.*not found"):
        load_manifest("marketcalls", tmp_path)


def test_dataset_level_errors(tmp_path):
    with pytest.raises(ManifestError, match="unknown dataset 'nope'"):
        load_manifest("nope", tmp_path)
    with pytest.raises(ManifestError, match="no CSV found"):
        load_manifest("marketcalls", tmp_path)
    with pytest.raises(ManifestError, match="no such folder"):
        load_manifest("marketcalls", tmp_path / "missing")
    write_csv(tmp_path / "a.csv", mc_rows(1))
    write_csv(tmp_path / "b.csv", mc_rows(1))
    with pytest.raises(ManifestError, match="several CSVs"):
        load_manifest("marketcalls", tmp_path)
    with pytest.raises(ManifestError, match="no option.*n_calls"):
        load_manifest("marketcalls", tmp_path, n_calls=3)
    assert set(DATASETS) == {"marketcalls", "csv", "demo", "mosi", "mosei", "meld"}


# ------------------------------------------------------------------------------------------------ generic csv


def test_generic_csv_segments_of_long_recordings_and_unlabelled_calls(tmp_path):
    wav(tmp_path / "rec" / "long.wav", seconds=10.0)
    wav(tmp_path / "rec" / "b.wav", seconds=1.0)
    wav(tmp_path / "rec" / "c.wav", seconds=1.0)
    rows = [
        {
            "call_id": "c1",
            "audio": "rec/long.wav",
            "start": "4",
            "end": "9",
            "text": "二",
            "label": "b",
        },
        {
            "call_id": "c1",
            "audio": "rec/long.wav",
            "start": "0",
            "end": "4",
            "text": "一",
            "label": "B",
        },
        {"call_id": "c2", "audio": "rec/b", "start": "", "end": "", "text": "", "label": "D"},
        {
            "call_id": "c3",
            "audio": "rec/c.wav",
            "start": "",
            "end": "",
            "text": "新的",
            "label": "",
        },
        {
            "call_id": "c1",
            "audio": "rec/long.wav",
            "start": "12",
            "end": "",
            "text": "x",
            "label": "B",
        },
        {
            "call_id": "c1",
            "audio": "rec/long.wav",
            "start": "5",
            "end": "3",
            "text": "x",
            "label": "B",
        },
        {
            "call_id": "c1",
            "audio": "rec/long.wav",
            "start": "abc",
            "end": "",
            "text": "x",
            "label": "B",
        },
        {
            "call_id": "c1",
            "audio": "rec/long.wav",
            "start": "0",
            "end": "4",
            "text": "dup",
            "label": "B",
        },
        {
            "call_id": "c4",
            "audio": "../elsewhere.wav",
            "start": "",
            "end": "",
            "text": "x",
            "label": "A",
        },
    ]
    write_csv(tmp_path / "calls.csv", rows)
    m = load_manifest("csv", tmp_path)
    check_invariants(m)
    assert m.dataset == "csv" and set(m.calls()) == {"c1", "c2", "c3"}
    c1 = m.calls()["c1"]
    assert [(s.start, s.end, s.text) for s in c1] == [(0.0, 4.0, "一"), (4.0, 9.0, "二")]
    assert c1[0].audio_path == c1[1].audio_path and c1[0].segment_id != c1[1].segment_id
    assert {s.label for s in c1} == {"B"}
    c2, c3 = m.calls()["c2"][0], m.calls()["c3"][0]
    assert (c2.start, c2.end, c2.text, c2.label) == (None, None, "", "D")
    assert (c3.label, c3.split) == ("", "")  # unlabelled: no split, kept
    assert c1[0].split and c2.split  # labelled calls got a generated split
    assert m.notes["split"] == "generated" and m.notes["unlabelled_calls"] == 1
    by_where = {i.where: i.reason for i in m.issues}
    assert "past the end" in by_where["calls.csv:6"]
    assert "not after start" in by_where["calls.csv:7"]
    assert "not a number" in by_where["calls.csv:8"]
    assert "duplicate segment" in by_where["calls.csv:9"]
    assert "escapes the dataset directory" in by_where["calls.csv:10"]
    assert by_where["calls.csv:4"].startswith("warning: empty transcript")


def test_generic_csv_split_column_segment_order_scheme_and_csv_path(tmp_path):
    for k in range(3):
        wav(tmp_path / f"s{k}.wav")
    rows = [
        {
            "call_id": "a",
            "audio": f"s{k}.wav",
            "segment": str(2 - k),
            "text": f"t{2 - k}",
            "label": "A",
            "split": "val",
            "speaker": "x",
        }
        for k in range(3)
    ]
    rows.append(
        {
            "call_id": "b",
            "audio": "s0.wav",
            "segment": "",
            "text": "b",
            "label": "",
            "split": "test",
        }
    )
    write_csv(
        tmp_path / "mine.csv",
        rows,
        header=["call_id", "audio", "segment", "text", "label", "split", "speaker"],
    )
    m = load_manifest("csv", tmp_path, csv_path="mine.csv")
    check_invariants(m)
    assert [s.text for s in m.calls()["a"]] == ["t0", "t1", "t2"]
    assert m.calls()["a"][0].split == "valid" and m.calls()["b"][0].split == "test"
    assert m.notes["split"] == "column"
    with pytest.raises(ManifestError, match="label_scheme"):
        load_manifest("csv", tmp_path, csv_path="mine.csv", label_scheme="mosi9")
    with pytest.raises(ManifestError, match="calls.csv"):
        load_manifest("csv", tmp_path)
    write_csv(tmp_path / "calls.csv", [{"call": "a", "audio": "s0.wav"}])
    with pytest.raises(ManifestError, match="missing column.*call_id.*found call, audio"):
        load_manifest("csv", tmp_path)


def test_generic_csv_absolute_paths_need_permission(tmp_path):
    outside = wav(tmp_path / "elsewhere" / "x.wav")
    data = tmp_path / "data"
    wav(data / "in.wav")
    write_csv(
        data / "manifest.csv",
        [
            {"call_id": "a", "audio": str(outside), "label": "C"},
            {"call_id": "b", "audio": "in.wav", "label": "C"},
        ],
    )
    m = load_manifest("csv", data)
    assert set(m.calls()) == {"b"} and "absolute path" in m.issues[0].reason
    m = load_manifest("csv", data, allow_outside_paths=True)
    assert Path(m.calls()["a"][0].audio_path) == outside.resolve()


# ------------------------------------------------------------------------------------------------ demo


def _f0(x: np.ndarray, rate: int = 8000) -> float:
    """Median autocorrelation pitch of the voiced frames."""
    est = []
    for i in range(0, len(x) - 320, 160):
        w = x[i : i + 320] - x[i : i + 320].mean()
        if np.sqrt((w**2).mean()) < 0.02:
            continue
        ac = np.correlate(w, w, "full")[319:]
        lo, hi = rate // 400, rate // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            est.append(rate / lag)
    return float(np.median(est)) if est else float("nan")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _check_demo(root: Path, n_calls: int, seed: int) -> Manifest:
    m = load_manifest("demo", root, seed=seed)
    check_invariants(m)
    assert m.dataset == "demo" and not m.issues and m.notes["split"] == "files"
    calls = m.calls()
    assert len(calls) == n_calls
    for split in ("train", "valid", "test"):
        assert {segs[0].label for segs in calls.values() if segs[0].split == split} == set("ABCDE")
    for segs in calls.values():
        assert 2 <= len(segs) <= 5
    for s in m.segments[:40]:
        info = sf.info(s.audio_path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (
            8000,
            1,
            "PCM_16",
            "WAV",
        )
        assert 1.5 <= info.duration <= 4.0
    return m


def _check_cues(m: Manifest) -> None:
    """Text cue: the customer's words; audio cue: the voice's pitch. Both must be there, as documented."""
    pos, neg = (
        ("好的", "可以", "感兴趣", "多少钱"),
        ("不需要", "没兴趣", "不考虑", "不用了", "已经有了", "别打了", "挂了"),
    )
    strong = ("别打了", "挂了")
    pitch: dict[str, list[float]] = {}
    for segs in m.calls().values():
        label, text = segs[0].label, "".join(s.text for s in segs)
        has_pos, has_neg = any(w in text for w in pos), any(w in text for w in neg)
        assert has_pos == (label in "AB") and has_neg == (label in "CDE"), (label, text)
        if label == "E":
            assert any(w in text for w in strong)
        if label == "D":
            assert not any(w in text for w in strong)
        x, _ = sf.read(segs[0].audio_path)
        pitch.setdefault("high" if label in "AC" else "low", []).append(_f0(x))
    assert np.nanmin(pitch["high"]) > 1.4 * np.nanmax(pitch["low"]), pitch


def test_demo_is_deterministic_complete_and_needs_both_cues(tmp_path):
    a = generate_demo(tmp_path / "a", n_calls=15, seed=7, use_espeak=False)
    b = generate_demo(tmp_path / "b", n_calls=15, seed=7, use_espeak=False)
    da, db = _digest(a), _digest(b)
    assert da == db and sum(k.endswith(".wav") for k in da) >= 30
    c = generate_demo(tmp_path / "c", n_calls=15, seed=8, use_espeak=False)
    assert _digest(c) != da
    assert json.loads((a / "demo.json").read_text())["audio_backend"] == ["synth"]
    m = _check_demo(a, 15, seed=7)
    _check_cues(m)
    with pytest.raises(ValueError, match="at least 15"):
        generate_demo(tmp_path / "d", n_calls=10)


def test_load_manifest_generates_demo_once_and_regenerates_on_new_settings(tmp_path):
    root = tmp_path / "demo"
    m = load_manifest("demo", root, n_calls=15, use_espeak=False)
    assert len(m.calls()) == 15 and (root / "train.csv").is_file()
    stamp = (root / "train.csv").stat().st_mtime_ns
    load_manifest("demo", root, n_calls=15, use_espeak=False)
    assert (root / "train.csv").stat().st_mtime_ns == stamp  # reused, not rewritten
    m = load_manifest("demo", root, n_calls=16, use_espeak=False)
    assert len(m.calls()) == 16
    assert len(list((root / "audio").glob("*.wav"))) == len(
        m
    )  # no stale audio from the first generation
    # a folder of CSVs that we did not generate is read as it is
    user = tmp_path / "user"
    make_audio(user, mc_rows(1))
    write_csv(user / "train.csv", mc_rows(1))
    assert len(load_manifest("demo", user, n_calls=15).calls()) == 1


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_demo_spoken_by_espeak(tmp_path):
    root = generate_demo(tmp_path / "e", n_calls=15, seed=1, use_espeak=True)
    assert json.loads((root / "demo.json").read_text())["audio_backend"] == ["espeak-ng"]
    m = _check_demo(root, 15, seed=1)
    _check_cues(m)
    again = generate_demo(tmp_path / "f", n_calls=15, seed=1, use_espeak=True)
    assert _digest(again) == _digest(root)


def test_benchmark_label_schemes_map_labels_to_every_task():
    from pipeline.labels import get_scheme

    s = get_scheme("sentiment")
    assert (
        s.level == "segment" and s.task("score").is_regression and s.task("score").num_classes == 1
    )
    got = s.encode_all(["-3", "-0.4", "0", "0.5", "2.6", "1.5"])
    np.testing.assert_allclose(got["score"], [-3, -0.4, 0, 0.5, 2.6, 1.5], rtol=1e-6)
    assert got["2"].tolist() == [0, 0, 1, 1, 1, 1]  # negative vs non-negative
    assert got["7"].tolist() == [0, 3, 3, 3, 6, 5]  # round half to even, like the field's code
    assert got["5"].tolist() == [0, 2, 2, 2, 4, 4]  # clipped to [-2, 2] first
    assert (
        not s.is_valid("3.5")
        and not s.is_valid("nan")
        and not s.is_valid("pos")
        and s.is_valid("-2.25")
    )
    with pytest.raises(ValueError, match="sentiment score"):
        s.encode(["4"], "score")
    m = get_scheme("meld")
    got = m.encode_all(["joy/positive", "anger/negative", "neutral/neutral"])
    assert got["emotion"].tolist() == [4, 6, 0] and got["sentiment"].tolist() == [1, 2, 0]
    assert not m.is_valid("joy") and m.selection == "weighted_f1"
    assert m.class_map("emotion", "sentiment") is None and s.class_map("7", "2") is None


def test_adapter_registry_protocol(tmp_path, monkeypatch):
    """Each registered adapter names an existing label scheme and its options; a new dataset registers with one
    call and is read through the same checks (its folder must exist unless it makes it)."""
    from pipeline.datasets import Adapter, register
    from pipeline.labels import get_scheme
    from pipeline.manifest import Manifest, Segment

    for name, adapter in DATASETS.items():
        assert adapter.name == name and get_scheme(adapter.label_scheme)
        assert "data_dir" not in adapter.options and "seed" not in adapter.options
    assert DATASETS["demo"].makes_data_dir and not DATASETS["meld"].makes_data_dir

    def load_toy(data_dir, *, allow_outside_paths=False, seed=0, greeting="hi"):
        seg = Segment(
            segment_id="t0",
            call_id="t",
            index=0,
            split="train",
            label="A",
            audio_path=str(data_dir / "t.wav"),
            text=greeting,
        )
        return Manifest(dataset="toy", label_scheme="marketcalls", segments=[seg])

    monkeypatch.setitem(DATASETS, "toy", DATASETS["marketcalls"])  # undone after the test
    register(Adapter("toy", load_toy, "marketcalls"))
    assert load_manifest("toy", tmp_path, greeting="hello").segments[0].text == "hello"
    with pytest.raises(ManifestError, match="no such folder"):
        load_manifest("toy", tmp_path / "missing")
    with pytest.raises(ManifestError, match="has no option"):
        load_manifest("toy", tmp_path, n_calls=3)


def test_row_checks_are_worded_the_same_for_every_dataset(tmp_path):
    from pipeline.datasets._common import RowChecks, option_path

    issues = []
    checks = RowChecks(issues)
    assert checks.first_time("s1", "a.csv:2", "segment s1") and not checks.first_time(
        "s1", "a.csv:5", "segment s1"
    )
    assert checks.one_split("c1", "train", "a.csv:2") == "train"
    assert checks.one_split("c1", "test", "a.csv:3", kind="video") == "train"
    assert checks.one_split("c2", None, "a.csv:4") is None and checks.splits == {"c1": "train"}
    assert checks.transcript("a.csv:6", "") == ""
    assert [(i.where, i.reason) for i in issues] == [
        ("a.csv:5", "duplicate segment s1 (first at a.csv:2); row skipped"),
        (
            "a.csv:3",
            "warning: video c1 is in train (a.csv:2) and in test; the segment is kept in train",
        ),
        (
            "a.csv:6",
            "warning: empty transcript (kept; the text encoder sees only its special tokens)",
        ),
    ]
    wav(tmp_path / "x.wav", seconds=1.5)
    assert (
        abs(checks.seconds(tmp_path / "x.wav") - 1.5) < 1e-3
        and checks.seconds(tmp_path / "nope.wav") is None
    )
    assert option_path(tmp_path, "sub") == tmp_path / "sub" and option_path(
        tmp_path, "/abs"
    ) == Path("/abs")
    assert option_path(tmp_path, None) is None and option_path(tmp_path, "") is None
