"""The bad-input corpus (tests/data/make_bad_inputs.py) through `msmtfn-extract`: every good item is extracted,
every bad one is named in the report with its reason, no bad item stops the run, and the exit code says that
something was skipped. A dataset-level problem (a CSV without a required column) is one line, before any work."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from extract.cli import main as extract_cli
from pipeline.store import CacheStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_spec = importlib.util.spec_from_file_location(
    "make_bad_inputs", Path(__file__).parent / "data" / "make_bad_inputs.py"
)
make_bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_bad_inputs)


def _args(data: Path, out: Path, enc: dict) -> list[str]:
    return [
        "--dataset",
        "marketcalls",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--audio-model",
        str(enc["group"]),
        "--text-model",
        str(enc["text"]),
        "--num-workers",
        "1",
        "--max-text-tokens",
        "32",
        "-q",
    ]


@pytest.mark.parametrize(
    "long_seconds",
    [
        pytest.param(
            200, id="200s-recording"
        ),  # the default suite: ≤ 40 s pieces shown on 5 pieces
        pytest.param(make_bad_inputs.LONG_SECONDS, id="3-hour-recording", marks=pytest.mark.slow),
    ],
)
def test_bad_input_corpus(tmp_path, tiny_encoders, long_seconds):
    expected = make_bad_inputs.make_corpus(tmp_path, long=True, long_seconds=long_seconds)
    out = tmp_path / "corpus.zarr"
    r = CliRunner().invoke(extract_cli, _args(tmp_path / "corpus", out, tiny_encoders))
    assert r.exit_code == 3, (
        r.output
    )  # 3 = finished, some inputs skipped (documented in the README)
    report = json.loads((out / "report.json").read_text())
    skipped = {s["segment_id"]: s["reason"] for s in report["skipped"]}
    manifest = report["manifest_issues"]
    warnings = report["warnings"]
    left_out = sum(1 for m in manifest if not m["reason"].startswith("warning"))
    # the summary line counts the rows left out of the dataset beside the segments skipped while encoding
    assert left_out and f"{left_out} dataset rows left out before encoding" in r.output, r.output
    store = CacheStore.open(out)
    table = store.table()
    done, flagged = store.done(), store.skipped()
    by_id: dict[str, list[int]] = {}
    for i, sid in enumerate(table["segment_id"]):
        by_id.setdefault(str(sid).split("#")[0].split("@")[0], []).append(i)

    def manifest_names(call_id: str, reason: str) -> bool:
        return any(
            reason in m["reason"] and (call_id in m["where"] or call_id in m["reason"])
            for m in manifest
        ) or any(
            reason in m["reason"]
            and m["where"].startswith(("train.csv", "valid.csv", "test.csv"))
            and call_id in _row_of(tmp_path / "corpus", m["where"])
            for m in manifest
        )

    for name, exp in expected.items():
        if exp["outcome"] == "dataset error":
            continue
        ids, outcome, reason = exp["segment_ids"], exp["outcome"], exp["reason"]
        if outcome == "extracted":
            rows = [r for sid in ids for r in by_id.get(sid, [])]
            assert rows and done[rows].all(), f"{name}: not extracted"
            assert not flagged[rows].any(), name
            if reason in ("silent", "empty transcript"):
                assert any(
                    w["segment_id"] in ids and reason in w["warning"] for w in warnings
                ) or manifest_names(exp["call_id"], reason), f"{name}: no warning"
            elif reason == "duplicate segment":
                assert manifest_names(exp["call_id"], reason), f"{name}: duplicate not named"
        elif outcome == "skipped":
            for sid in ids:
                assert reason in skipped.get(sid, ""), (
                    f"{name}: expected {reason!r}, got {skipped.get(sid)!r}"
                )
                (row,) = by_id[sid]
                assert flagged[row] and not done[row] and reason in store.skip_reasons()[row]
        elif outcome == "manifest":
            assert manifest_names(exp["call_id"], reason), f"{name}: not named ({reason!r})"
            assert not any(sid in by_id for sid in ids), f"{name}: should not be in the store"
    assert report["text_truncated"] >= 1
    # the long recording (3 hours in the slow form): planned in ≤ 40 s pieces, all encoded
    long_id = expected["long recording"]["segment_ids"][0]
    assert len(by_id[long_id]) == long_seconds // 40
    assert (table["end"][by_id[long_id]] - table["start"][by_id[long_id]] <= 40.0 + 1e-6).all()
    # the 200-segment call keeps its order
    rows200 = [by_id[s][0] for s in expected["call with 200 segments"]["segment_ids"]]
    assert list(table["segment_index"][rows200]) == list(range(200))

    # a re-run retries only the bad rows and loses nothing
    before = np.asarray(store.array("audio/hidden")[:])
    r = CliRunner().invoke(extract_cli, _args(tmp_path / "corpus", out, tiny_encoders))
    assert r.exit_code == 3, r.output
    again = json.loads((out / "report.json").read_text())
    assert again["segments_encoded_this_run"] == 0 and len(again["skipped"]) == len(
        report["skipped"]
    )
    np.testing.assert_array_equal(before, np.asarray(CacheStore.open(out).array("audio/hidden")[:]))

    # a dataset-level problem: one line naming the file and what is missing; nothing written
    bad = expected["CSV with a missing column"]
    r = CliRunner().invoke(
        extract_cli, _args(Path(bad["data_dir"]), tmp_path / "bad.zarr", tiny_encoders)
    )
    assert r.exit_code == 1, r.output  # 1 = error, nothing done
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "train.csv" in lines[0] and bad["reason"] in lines[0], r.output
    assert not (tmp_path / "bad.zarr").exists() and not (tmp_path / "bad.zarr.lock").exists()


def _row_of(data: Path, where: str) -> str:
    """The CSV line a manifest issue points at ("train.csv:17")."""
    name, _, line = where.partition(":")
    if not line.split()[0].isdigit():
        return ""
    enc = "gb18030" if name == "valid.csv" else "utf-8"
    lines = (data / name).read_text(encoding=enc).splitlines()
    k = int(line.split()[0]) - 1
    return lines[k] if 0 <= k < len(lines) else ""
