"""Stage 1 end to end on CPU with tiny encoders: schema, exactness of batching, resume, refusal, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import assert_same_features, write_marketcalls, write_wav

from extract.audio import AudioPolicy
from extract.cli import main as extract_cli
from extract.encoders import AudioEncoder, EncoderSpec, TextEncoder
from extract.run import ExtractConfig, SegmentSource, extract
from pipeline.datasets import load_manifest
from pipeline.store import SCHEMA_VERSION, CacheStore, StoreError


def _cfg(data: Path, out: Path, enc: dict, norm: str = "group", **kw) -> ExtractConfig:
    base = dict(
        dataset="marketcalls",
        data_dir=str(data),
        out=str(out),
        audio_model=str(enc[norm]),
        text_model=str(enc["text"]),
        num_workers=0,
        shard_size=4,
        block_shards=2,
    )
    base.update(kw)
    return ExtractConfig(**base)


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    names = ["audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped"]
    return {n: np.asarray(s.array(n)[:]) for n in names}


# ------------------------------------------------------------------ schema
def test_end_to_end_store_schema(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=6, segments=3)
    res = extract(_cfg(data, tmp_path / "c.zarr", tiny_encoders), progress=False)
    assert (res.total, res.done, res.skipped) == (18, 18, 0)
    s = CacheStore.open(res.store)
    a = s.attrs
    assert a["schema_version"] == SCHEMA_VERSION and len(a["fingerprint"]) == 32
    for key in ("settings", "manifest_digest", "package_version", "created", "updated", "shape"):
        assert key in a
    sh = s.shape
    # tiny HuBERT keeps HuBERT-base's 320-sample hop: 40 s at 16 kHz = 1999 frames, pooled in pairs = 999
    assert (sh.audio_frames, sh.text_tokens, sh.audio_dim, sh.text_dim) == (999, 199, 32, 32)
    ah, th = s.array("audio/hidden"), s.array("text/hidden")
    assert ah.dtype == np.float16 and th.dtype == np.float16
    assert ah.shape == (18, 999, 32) and th.shape == (18, 199, 32)
    assert ah.shards == (4, 999, 32) and ah.chunks == (1, 999, 32)
    al, tl = s.lengths("audio"), s.lengths("text")
    A, T = ah[:], th[:]
    for i in range(18):
        assert 0 < al[i] < 999 and 2 < tl[i] <= 199
        assert np.all(A[i, al[i] :] == 0) and np.all(T[i, tl[i] :] == 0), (
            "padding rows must be zeros"
        )
        assert np.abs(A[i, : al[i]]).sum() > 0
    t = s.table()
    assert set(t["split"]) == {"train", "valid", "test"} and set(t["variant"]) == {"orig"}
    # rows of a call are contiguous and in segment order
    for cid in set(t["call_id"]):
        idx = np.flatnonzero(t["call_id"] == cid)
        assert list(idx) == list(range(idx[0], idx[0] + len(idx)))
        assert list(t["segment_index"][idx]) == list(range(len(idx)))
    assert s.done().all() and not s.skipped().any()
    report = json.loads((res.store / "report.json").read_text())
    assert report["segments_done"] == 18 and report["skipped"] == []


# --------------------------------------------------- batching changes nothing
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_stored_rows_equal_each_segment_encoded_alone(tmp_path, tiny_encoders, norm):
    data = write_marketcalls(tmp_path / "mc", calls=6, segments=3, seconds=(0.5, 4.0))
    res = extract(
        _cfg(data, tmp_path / "c.zarr", tiny_encoders, norm=norm, batch_seconds=400), progress=False
    )
    s = CacheStore.open(res.store)
    rows = [seg for seg in load_manifest("marketcalls", data).segments]
    by_id = {r.segment_id: r for r in rows}
    table = s.table()
    from transformers import AutoModel

    audio = AudioEncoder(EncoderSpec(str(tiny_encoders[norm])), pool=2)
    text = TextEncoder(EncoderSpec(str(tiny_encoders["text"])))
    plain_audio = AutoModel.from_pretrained(tiny_encoders[norm]).eval()
    plain_text = AutoModel.from_pretrained(tiny_encoders["text"]).eval()
    segs = [by_id[sid] for sid in table["segment_id"]]
    src = SegmentSource(segs, 16000, 640000, audio.min_samples(), audio.feature_extractor, text)
    A, T = s.array("audio/hidden")[:], s.array("text/hidden")[:]
    al, tl = s.lengths("audio"), s.lengths("text")
    assert len(set(al.tolist())) > 5, "segments of many lengths share batches"
    for i in range(len(segs)):
        item = src[i]
        with (
            torch.no_grad()
        ):  # the reference: the plain HF forward on this segment alone, no padding at all
            ha = plain_audio(item["wave"][None]).last_hidden_state[0]
            ht = plain_text(input_ids=torch.tensor([item["ids"]])).last_hidden_state[0]
        la, lt = ha.shape[0] // 2, ht.shape[0]
        ha = ha[: 2 * la].reshape(la, 2, -1).mean(1)  # frame pairs, as stored
        assert la == al[i] and lt == tl[i]
        ref_a = ha.numpy().astype(np.float16).astype(np.float32)
        ref_t = ht.numpy().astype(np.float16).astype(np.float32)
        # fp32 compute; both sides rounded once to float16: identical up to a rare last-bit flip
        np.testing.assert_allclose(A[i, :la].astype(np.float32), ref_a, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(T[i, :lt].astype(np.float32), ref_t, rtol=2e-3, atol=2e-3)


def test_group_norm_batching_would_differ_without_the_design(tiny_encoders):
    """The reason for the per-length front end: plain zero padding changes HuBERT-base-style outputs."""
    from transformers import AutoModel

    m = AutoModel.from_pretrained(tiny_encoders["group"]).eval()
    w = torch.randn(1, 12000)
    with torch.no_grad():
        alone = m(w).last_hidden_state
        padded = m(torch.cat([w, torch.zeros(1, 6000)], 1)).last_hidden_state[:, : alone.shape[1]]
    assert (alone - padded).abs().max() > 1e-2
    enc = AudioEncoder(EncoderSpec(str(tiny_encoders["group"])), pool=1)
    assert enc.masked_group_norm
    waves = [w[0], torch.randn(18000), torch.randn(720)]
    batched, lengths = enc.encode(waves)
    torch.testing.assert_close(batched[0, : lengths[0]], alone[0], rtol=1e-4, atol=1e-5)


def test_layer_selection_matches_hf_hidden_states(tiny_encoders):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(tiny_encoders["layer"]).eval()
    w = torch.randn(16000)
    with torch.no_grad():
        out = m(w[None], output_hidden_states=True)
    # 0 = input to the first block, i = output of block i, -1 = last_hidden_state (after a pre-LN model's
    # final LayerNorm, which transformers 5 leaves out of hidden_states[-1])
    for layer, ref in (
        (0, out.hidden_states[0][0]),
        (1, out.hidden_states[1][0]),
        (-1, out.last_hidden_state[0]),
    ):
        enc = AudioEncoder(EncoderSpec(str(tiny_encoders["layer"]), layer=layer), pool=1)
        got, _ = enc.encode([w])
        torch.testing.assert_close(got[0], ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------- segmentation
def test_long_segment_is_split_not_truncated(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    long = write_wav(
        data / "audio" / "13800000000_0.wav", 95.0, 8000, seed=5
    )  # replace call 0's segment
    res = extract(_cfg(data, tmp_path / "c.zarr", tiny_encoders), progress=False)
    s = CacheStore.open(res.store)
    t = s.table()
    idx = np.flatnonzero(t["call_id"] == "13800000000")
    assert len(idx) == 3, "95 s at ≤ 40 s a piece is 3 pieces"
    starts, ends = t["start"][idx], t["end"][idx]
    assert np.all(ends - starts <= 40.0 + 1e-6)
    assert starts[0] == 0 and abs(ends[-1] - sf.info(long).duration) < 1e-3
    assert np.all(np.abs(s.lengths("audio")[idx] - 95 / 3 * 25) < 2), (
        "each 31.7 s piece holds ~791 rows at 25/s"
    )
    assert res.done == res.total


@pytest.mark.parametrize("policy,pool,rate", [("encoder", 2, 16000), ("paper-8k", 1, 8000)])
def test_rate_policies_give_999_frames_for_40_s(tmp_path, tiny_encoders, policy, pool, rate):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    write_wav(data / "audio" / "13800000000_0.wav", 40.0, 8000, seed=1)
    res = extract(
        _cfg(data, tmp_path / "c.zarr", tiny_encoders, rate_policy=policy), progress=False
    )
    s = CacheStore.open(res.store)
    assert s.shape.audio_frames == 999
    assert s.settings["audio"]["pool"] == pool and s.settings["audio"]["input_rate"] == rate
    i = int(np.flatnonzero(s.table()["call_id"] == "13800000000")[0])
    assert s.lengths("audio")[i] == 999


# ------------------------------------------------------ resume and refusal
def test_rerun_skips_finished_segments(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=6, segments=2)
    cfg = _cfg(data, tmp_path / "c.zarr", tiny_encoders)
    first = extract(cfg, progress=False)
    before = _store_arrays(first.store)
    again = extract(cfg, progress=False)
    assert again.computed == 0 and again.done == first.done
    after = _store_arrays(first.store)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


@pytest.mark.parametrize(
    "calls,attempts",
    [
        pytest.param(8, 1, id="one-kill"),  # the default suite
        pytest.param(16, 3, id="three-kills", marks=pytest.mark.slow),
    ],
)  # (the 20-kill run: test_reliability_slow)
def test_sigkill_then_resume_matches_uninterrupted(
    tmp_path, tiny_encoders, one_torch_thread, calls, attempts
):
    data = write_marketcalls(tmp_path / "mc", calls=calls, segments=4, seconds=(4.0, 12.0))
    common = [
        "--dataset",
        "marketcalls",
        "--data-dir",
        str(data),
        "--audio-model",
        str(tiny_encoders["group"]),
        "--text-model",
        str(tiny_encoders["text"]),
        "--loader-workers",
        "0",
        "--shard-size",
        "2",
        "-q",
        "--batch-seconds",
        "40",
    ]
    # one thread everywhere: tiny models gain nothing from more, and a busy CPU makes OpenMP spin
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref.zarr"
    # the uninterrupted reference in this process (same command, one interpreter start saved)
    r = CliRunner().invoke(extract_cli, [*common, "--out", str(ref)])
    assert r.exit_code == 0, r.output[-2000:]
    out = tmp_path / "killed.zarr"
    kills = 0
    step = calls * 4 // (attempts + 1)
    for attempt in range(attempts):
        p = subprocess.Popen(
            [sys.executable, "-m", "extract.cli", *common, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        # kill once some (but not all) shards of this attempt are done
        target = step * (attempt + 1)
        while p.poll() is None:
            try:
                d = CacheStore.open(out).done()
                if d.sum() >= target and not d.all():
                    break
            except (StoreError, Exception):
                pass
            time.sleep(0.02)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if CacheStore.open(out).done().all():
            break
    assert kills >= 1, "the run finished before any kill; make the dataset larger"
    r = subprocess.run(
        [sys.executable, "-m", "extract.cli", *common, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _store_arrays(ref), _store_arrays(out)
    for k in a:
        assert_same_features(a[k], b[k], err_msg=k)
    assert a["done"].all()


def test_different_settings_are_refused_then_overwrite(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=2)
    out = tmp_path / "c.zarr"
    args = [
        "--dataset",
        "marketcalls",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--audio-model",
        str(tiny_encoders["group"]),
        "--text-model",
        str(tiny_encoders["text"]),
        "--num-workers",
        "0",
        "-q",
    ]
    runner = CliRunner()
    assert runner.invoke(extract_cli, args).exit_code == 0
    r = runner.invoke(extract_cli, [*args, "--max-text-tokens", "64"])
    assert r.exit_code == 1
    assert "text.max_tokens: 199 → 64" in r.output and "--overwrite" in r.output
    r = runner.invoke(extract_cli, [*args, "--audio-model", str(tiny_encoders["layer"])])
    assert r.exit_code == 1 and "audio.weights" in r.output
    # a changed recording (size/mtime) changes the manifest part of the fingerprint
    write_wav(data / "audio" / "13800000000_0.wav", 2.5, 8000, seed=99)
    r = runner.invoke(extract_cli, args)
    assert r.exit_code == 1 and "manifest" in r.output
    r = runner.invoke(extract_cli, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert CacheStore.open(out).done().all()


def test_store_from_newer_schema_is_refused(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    res = extract(_cfg(data, tmp_path / "c.zarr", tiny_encoders), progress=False)
    s = CacheStore.open(res.store, mode="r+")
    s.group.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer"):
        CacheStore.open(res.store)


# -------------------------------------------------------------- bad input
def test_bad_inputs_are_skipped_and_named(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=12, segments=1)
    audio = data / "audio"
    (audio / "13800000000_0.wav").unlink()  # missing
    (audio / "13800000001_0.wav").write_bytes(b"")  # zero bytes
    (audio / "13800000002_0.wav").write_bytes(
        (audio / "13800000003_0.wav").read_bytes()[:30]
    )  # cut header
    (audio / "13800000004_0.wav").write_bytes(b"this is not audio at all" * 50)
    sf.write(audio / "13800000005_0.wav", np.zeros(16000, np.float32), 8000)  # silent: kept, warned
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    x[100] = np.nan
    sf.write(audio / "13800000006_0.wav", x, 16000, subtype="FLOAT")  # NaN
    sf.write(audio / "13800000007_0.wav", np.zeros(1, np.float32), 8000)  # 1 sample
    write_wav(
        audio / "13800000008_0.wav", 2.0, 44100, channels=2, seed=3
    )  # stereo 44.1 kHz: handled
    write_wav(audio / "13800000009_0.wav", 2.0, 48000, seed=4)  # 48 kHz: handled
    res = extract(_cfg(data, tmp_path / "c.zarr", tiny_encoders), progress=False)
    reasons = {
        it["segment_id"]: it["reason"] for it in json.loads(res.report.read_text())["skipped"]
    }
    manifest_issues = json.loads(res.report.read_text())["manifest_issues"]
    # the missing file is named (at manifest time or at extraction)
    assert any(
        "13800000000_0" in (m["where"] + m["reason"]) for m in manifest_issues
    ) or "not found" in reasons.get("13800000000_0", "")
    assert "0 bytes" in reasons["13800000001_0"] or "empty" in reasons["13800000001_0"]
    assert "cannot decode" in reasons["13800000002_0"]
    assert "cannot decode" in reasons["13800000004_0"]
    assert "NaN" in reasons["13800000006_0"]
    assert "too short" in reasons["13800000007_0"]
    s = CacheStore.open(res.store)
    sid = list(s.table()["segment_id"])
    done, skipped = s.done(), s.skipped()
    for ok in ("13800000005_0", "13800000008_0", "13800000009_0", "13800000010_0", "13800000011_0"):
        assert done[sid.index(ok)], ok
    for bad in reasons:
        assert skipped[sid.index(bad)] and not done[sid.index(bad)]
        assert s.skip_reasons()[sid.index(bad)] == reasons[bad]
    warnings = json.loads(res.report.read_text())["warnings"]
    assert any(w["segment_id"] == "13800000005_0" and "silent" in w["warning"] for w in warnings)
    # the CLI says so in its exit code, and a re-run retries only the bad rows
    r = CliRunner().invoke(
        extract_cli,
        [
            "--dataset",
            "marketcalls",
            "--data-dir",
            str(data),
            "--out",
            str(res.store),
            "--audio-model",
            str(tiny_encoders["group"]),
            "--text-model",
            str(tiny_encoders["text"]),
            "--num-workers",
            "0",
            "--shard-size",
            "4",
            "-q",
        ],
    )
    assert r.exit_code == 3, r.output


def test_long_transcript_is_truncated_and_counted(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    import csv

    rows = list(csv.DictReader(open(data / "train.csv", encoding="utf-8")))
    rows[0]["text"] = "好" * 10_000
    with open(data / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = extract(_cfg(data, tmp_path / "c.zarr", tiny_encoders), progress=False)
    assert json.loads(res.report.read_text())["text_truncated"] == 1
    s = CacheStore.open(res.store)
    assert s.lengths("text").max() == 199


def test_extraction_with_loader_workers_matches_inline(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=4, segments=2)
    a = extract(_cfg(data, tmp_path / "a.zarr", tiny_encoders, num_workers=0), progress=False)
    b = extract(_cfg(data, tmp_path / "b.zarr", tiny_encoders, num_workers=2), progress=False)
    x, y = _store_arrays(a.store), _store_arrays(b.store)
    for k in x:
        assert_same_features(x[k], y[k], err_msg=k)


# -------------------------------------------------------------------- info
def test_info_command(tmp_path, tiny_encoders):
    data = write_marketcalls(tmp_path / "mc", calls=6, segments=2)
    res = extract(_cfg(data, tmp_path / "c.zarr", tiny_encoders), progress=False)
    r = CliRunner().invoke(extract_cli, ["info", str(res.store)])
    assert r.exit_code == 0, r.output
    for needle in (
        f"schema version   {SCHEMA_VERSION}",
        "chunks checksummed (CRC32C)",
        "fingerprint",
        "12/12 done",
        "per split:",
        "train 2",
        "calls per label",
        "compression ratio",
        "on disk",
    ):
        assert needle in r.output, needle
    r = CliRunner().invoke(extract_cli, ["info", str(res.store), "--json"])
    info = json.loads(r.output)
    assert info["segments_done"] == 12 and info["calls_per_label"] == {
        "A": 2,
        "B": 1,
        "C": 1,
        "D": 1,
        "E": 1,
    }
    r = CliRunner().invoke(extract_cli, ["info", str(tmp_path / "nothing.zarr")])
    assert r.exit_code == 1 and "no cache store here" in r.output


def test_policy_rates():
    assert AudioPolicy("encoder", 16000).input_rate == 16000
    assert AudioPolicy("paper-8k", 16000).input_rate == 8000
    with pytest.raises(ValueError):
        AudioPolicy("nope", 16000)


# ------------------------------------------------------------------- lock
def test_one_writer_per_store_and_stale_lock_taken_over(tmp_path, tiny_encoders):
    import socket

    from pipeline.lock import StoreLock, StoreLocked

    data = write_marketcalls(tmp_path / "mc", calls=3, segments=1)
    out = tmp_path / "c.zarr"
    with StoreLock(out):  # a live writer (this process) holds the store
        with pytest.raises(StoreLocked, match="another msmtfn-extract is writing it"):
            extract(_cfg(data, out, tiny_encoders), progress=False)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    Path(str(out) + ".lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()})
    )
    res = extract(_cfg(data, out, tiny_encoders), progress=False)  # the dead owner's lock is stale
    assert res.done == res.total and not Path(str(out) + ".lock").exists()
    Path(str(out) + ".lock").write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(StoreLocked, match="another-host"):
        extract(_cfg(data, out, tiny_encoders), progress=False)


def test_write_failure_stops_cleanly_and_a_rerun_resumes(tmp_path, tiny_encoders, monkeypatch):
    import errno

    from extract.writer import WriteFailed

    data = write_marketcalls(tmp_path / "mc", calls=8, segments=3)
    ref = extract(_cfg(data, tmp_path / "ref.zarr", tiny_encoders, shard_size=2), progress=False)
    real_write = CacheStore.write_slab
    calls = {"n": 0}

    def failing_write(self, *args, **kw):  # the disk fills up after two shards
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kw)

    monkeypatch.setattr(CacheStore, "write_slab", failing_write)
    out = tmp_path / "full.zarr"
    with pytest.raises(WriteFailed, match="No space left.*run the same command to resume"):
        extract(_cfg(data, out, tiny_encoders, shard_size=2, write_threads=1), progress=False)
    done = CacheStore.open(out).done()
    assert 0 < done.sum() < len(done), (
        "the shards written before the failure are kept, and marked done"
    )
    a, b = _store_arrays(ref.store), _store_arrays(out)
    assert_same_features(a["audio/hidden"][done], b["audio/hidden"][done])
    assert not Path(str(out) + ".lock").exists(), "the lock is released on failure"
    monkeypatch.setattr(CacheStore, "write_slab", real_write)
    again = extract(_cfg(data, out, tiny_encoders, shard_size=2), progress=False)
    assert again.computed == len(done) - done.sum()
    b = _store_arrays(out)
    for k in a:
        assert_same_features(a[k], b[k], err_msg=k)
