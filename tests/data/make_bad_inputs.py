"""Generate the bad-input corpus: a MarketCalls-format dataset in which every call is one kind of messy input.

    python tests/data/make_bad_inputs.py OUT_DIR [--no-long]

Writes OUT_DIR/corpus/ (train.csv, valid.csv in GB18030 with extra columns, test.csv, audio/) plus
OUT_DIR/missing-columns/ (a CSV without its ``text`` column) and OUT_DIR/expected.json, which says for every item
what must happen to it: ``extracted`` (every segment done), ``skipped`` (named in the report's ``skipped`` list
with the reason), ``manifest`` (named in the report's ``manifest_issues``), or ``dataset error`` (the whole
dataset is refused before anything is written). Generated, not stored: no binary blobs in the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

LONG_SECONDS = 3 * 3600  # the 3-hour recording


def _voice(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = sum(
        np.sin(2 * np.pi * 160 * k * t) / k for k in range(1, 5)
    ) * 0.1 + 0.01 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x, 0.8 * x], axis=1) if channels == 2 else x


def _write_long(path: Path, seconds: int, rate: int = 8000) -> None:
    """A long 16-bit file written in one-minute blocks (never the whole recording in memory)."""
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for m in range(math.ceil(seconds / 60)):
            f.write(_voice(min(60, seconds - 60 * m), rate, seed=m))


def make_corpus(out: str | Path, long: bool = True, long_seconds: int = LONG_SECONDS) -> dict:
    out = Path(out)
    root = out / "corpus"
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    expected: dict[str, dict] = {}
    n = [0]

    def item(
        name: str,
        outcome: str,
        reason: str = "",
        *,
        split: str = "train",
        label: str = "A",
        text: str = "好的",
        segments: int = 1,
        write=None,
        rows_override: list[dict] | None = None,
        extra: dict | None = None,
    ):
        """One call = one kind of input. ``write(path, k)`` writes segment k's file (None: no file)."""
        n[0] += 1
        phone = f"1390000{n[0]:04d}"
        ids = []
        for k in range(segments):
            sid = f"{phone}_{k}"
            if write is not None:
                write(audio / f"{sid}.wav", k)
            ids.append(sid)
            rows[split].append(
                {"phone": phone, "Audio_id": sid, "text": text, "label": label, **(extra or {})}
            )
        if rows_override:
            rows[split].extend(rows_override)
        expected[name] = {
            "call_id": phone,
            "segment_ids": ids,
            "outcome": outcome,
            "reason": reason,
            "split": split,
        }
        return phone, ids

    def ok(rate, seconds=2.0, channels=1):
        return lambda p, k: sf.write(p, _voice(seconds, rate, k, channels), rate)

    # --- good inputs (must be extracted)
    for split in (
        "train",
        "valid",
        "test",
    ):  # every split has a plain call and a call of each other label
        for lab in "ABCDE":
            item(f"plain {split} {lab}", "extracted", split=split, label=lab, write=ok(8000))
    item("8 kHz", "extracted", write=ok(8000))
    item("16 kHz", "extracted", write=ok(16000))
    item("44.1 kHz", "extracted", write=ok(44100))
    item("48 kHz", "extracted", write=ok(48000))
    item("stereo", "extracted", write=ok(16000, channels=2))
    item(
        "silent audio",
        "extracted",
        "silent",
        write=lambda p, k: sf.write(p, np.zeros(16000, np.float32), 8000),
    )
    item("empty transcript", "extracted", "empty transcript", text="", write=ok(8000))
    item(
        "10,000-character transcript",
        "extracted",
        "truncated",
        text="我想了解一下价格" * 1250,
        write=ok(8000),
    )
    item(
        "non-UTF-8 transcript (GB18030 file)",
        "extracted",
        split="valid",
        text="不需要谢谢再见",
        write=ok(8000),
    )
    item(
        "extra columns",
        "extracted",
        split="valid",
        write=ok(8000),
        extra={"note": "x", "agent": "7"},
    )
    item("call with 200 segments", "extracted", segments=200, write=ok(8000, seconds=0.5))
    if long:
        # 3 hours for the slow test and the command line; the default test suite uses a few minutes
        item(
            "long recording",
            "extracted",
            "split into",
            write=lambda p, k: _write_long(p, long_seconds),
        )
    # --- bad inputs (named, skipped, the run goes on)
    item("missing file", "manifest", "not found", write=None)
    item("zero-byte file", "skipped", "0 bytes", write=lambda p, k: p.write_bytes(b""))
    good = audio / "_header_source.wav"
    sf.write(good, _voice(1.0, 8000, 0), 8000, subtype="PCM_16")
    item(
        "truncated WAV header",
        "skipped",
        "cannot decode",
        write=lambda p, k: p.write_bytes(good.read_bytes()[:30]),
    )
    good.unlink()
    item(
        "not audio, .wav name",
        "skipped",
        "cannot decode",
        write=lambda p, k: p.write_bytes(b"<html>this is a web page, not audio</html>\n" * 40),
    )
    item(
        "RIFF header, garbage body",
        "skipped",
        "cannot decode",
        write=lambda p, k: p.write_bytes(
            b"RIFF" + struct.pack("<I", 4000) + b"WAVEfmt " + bytes(range(256)) * 16
        ),
    )

    def nonfinite(value):
        def write(p, k):
            x = _voice(1.0, 16000, 1)
            x[500] = value
            sf.write(p, x, 16000, subtype="FLOAT")

        return write

    item("NaN samples", "skipped", "NaN/inf", write=nonfinite(np.nan))
    item("inf samples", "skipped", "NaN/inf", write=nonfinite(np.inf))
    item(
        "1-sample audio",
        "skipped",
        "too short",
        write=lambda p, k: sf.write(p, np.zeros(1, np.float32), 8000),
    )
    item("unknown label", "manifest", "unknown label", label="Z", write=ok(8000))
    dup_phone, dup_ids = item("duplicate segment id", "extracted", write=ok(8000), segments=2)
    rows["train"].append({"phone": dup_phone, "Audio_id": dup_ids[0], "text": "重复", "label": "A"})
    expected["duplicate segment id"]["reason"] = "duplicate segment"

    fields = {
        "train": ["phone", "Audio_id", "text", "label"],
        "test": ["phone", "Audio_id", "text", "label"],
        "valid": ["phone", "Audio_id", "text", "label", "note", "agent"],
    }
    for split, rs in rows.items():
        enc = "gb18030" if split == "valid" else "utf-8"  # a Chinese Excel export
        with open(root / f"{split}.csv", "w", newline="", encoding=enc) as f:
            w = csv.DictWriter(f, fieldnames=fields[split], restval="")
            w.writeheader()
            w.writerows(rs)

    bad = out / "missing-columns"
    (bad / "audio").mkdir(parents=True, exist_ok=True)
    sf.write(bad / "audio" / "1_0.wav", _voice(1.0, 8000, 0), 8000)
    with open(bad / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [["phone", "Audio_id", "transcript", "label"], ["1", "1_0", "好的", "A"]]
        )
    expected["CSV with a missing column"] = {
        "data_dir": str(bad),
        "outcome": "dataset error",
        "reason": "missing column(s) text",
    }
    (out / "expected.json").write_text(
        json.dumps(expected, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    return expected


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--no-long", action="store_true", help="leave out the 3-hour recording")
    args = ap.parse_args(argv)
    expected = make_corpus(args.out, long=not args.no_long)
    print(f"{len(expected)} items in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
