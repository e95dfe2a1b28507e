"""The 20-kill extraction run (bench/kill_resume.py) as a test: `python3 -m pytest -m slow` (a few minutes).
The default test run has the quick version (tests/test_extract.py::test_sigkill_then_resume_matches_uninterrupted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "kill_resume.py"


@pytest.mark.slow
def test_twenty_sigkills_then_resume_matches_uninterrupted(tmp_path):
    spec = importlib.util.spec_from_file_location("kill_resume", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(kills=20, seed=1, workdir=tmp_path, log=lambda *a: None)
    assert res["kills"] == 20 and res["kills_with_partial_chunk_files"] >= 5, res
    assert res["identical"], res["mismatched"]
    assert (
        res["bad_done_rows"] == 0 and res["items_lost"] == 0 and res["duplicate_segment_ids"] == 0
    )
    assert res["rows_checked_after_kills"] > 0 and res["leftover_partial_files"] == 0
