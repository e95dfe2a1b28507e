"""bench/gpu/run.sh must not rot between the rare tasks that are lent a GPU: its dry run (CPU, tiny sizes) runs
the same code path end to end here, and what it writes must hold every measurement, positive."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("extract_paper-8k", "extract_encoder", "writer", "train", "train_groups", "sweep")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_dry_run_writes_every_measurement(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "OUT": str(out),
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    }
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu" / "run.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    log = r.stdout[-4000:] + r.stderr[-4000:]
    assert r.returncode == 0, log
    assert "== what this machine has" in r.stdout and "torch " in r.stdout, (
        log
    )  # the image is printed first

    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["dry_run"] is True
    env_info = res["environment"]
    assert env_info["python"] and env_info["torch"] and env_info["device"] == "cpu"
    assert positive(res["matmul_tflops"])
    assert list(res["parts"]) == list(PARTS)
    for name, part in res["parts"].items():
        assert "error" not in part and "skipped" not in part, (name, part)

    for policy in ("paper-8k", "encoder"):
        p = res["parts"][f"extract_{policy}"]
        assert p["segments"] == res["sizes"]["segments"][policy]
        for key in (
            "ours_segments_per_s",
            "naive_segments_per_s",
            "speedup_vs_naive",
            "achieved_tflops",
            "flop_share_of_matmul",
            "host_peak_rss_mib",
        ):
            assert positive(p[key]), (policy, key, p[key])
        st = p["stages_per_segment"]
        for key in (
            "decode_resample_tokenise_s",
            "forward_s",
            "device_to_host_s",
            "write_s",
            "flops_per_segment",
        ):
            assert positive(st[key]), (policy, key, st[key])
        assert st["attention"] == {"audio": "sdpa", "text": "sdpa"}
    # paper-8k feeds 8 kHz audio as 16 kHz and pools 1 frame; encoder resamples to 16 kHz and pools 2: same rows
    assert (
        res["parts"]["extract_paper-8k"]["audio_frames"]
        == res["parts"]["extract_encoder"]["audio_frames"]
    )

    w = res["parts"]["writer"]
    for key in ("writer_mib_s", "writer_one_thread_mib_s", "raw_mib_s", "writer_vs_raw"):
        assert positive(w[key]), (key, w[key])

    t = res["parts"]["train"]
    assert t["calls"] == res["sizes"]["calls"] and t["epochs_run"] >= 1
    for key in (
        "epoch_s",
        "fit_wall_s",
        "cpu_busy_ratio",
        "host_peak_rss_mib",
        "packed_feature_gib",
    ):
        assert positive(t[key]), (key, t[key])
    assert t["packed_feature_gib"] < t["padded_feature_gib"]

    g = res["parts"]["train_groups"]
    assert len(g["ms_per_step"]) == 4 and all(positive(v) for v in g["ms_per_step"].values()), g
    assert g["shipped"].startswith(
        "up to 9 groups, 30,000 row pairs"
    )  # the CPU rule in train/model.py

    s = res["parts"]["sweep"]
    assert s["trials"] == res["sizes"]["sweep_trials"]
    assert positive(s["separate_processes_s"]) and positive(s["sweep_s"]) and positive(s["speedup"])

    sp = res["speedups"]
    assert sp["length_bucketed_batches"] is True and sp["pinned_memory_non_blocking"] is True
    assert sp["packed_training_features"] is True

    md = (out / "results.md").read_text(encoding="utf-8")
    assert md.startswith("# msmtfn GPU benchmark") and "| part | measure | value |" in md
    for name in PARTS:
        assert f"| {name} |" in md
    assert "not measured" not in md

    # msmtfn-serve under load: each level's rate and latencies
    load = json.loads((out / "serve_load.json").read_text(encoding="utf-8"))
    assert [lv["clients"] for lv in load["levels"]] == [1, 2]
    for lv in load["levels"]:
        for key in ("requests_per_s", "p50_s", "p95_s", "calls_per_batch"):
            assert positive(lv[key]), (lv, key)
    assert "vs 1" in (out / "serve_load.txt").read_text(encoding="utf-8")
