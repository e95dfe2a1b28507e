"""What an interrupted `msmtfn-extract` keeps: Ctrl-C (or any error) in the middle of a block keeps every encoded
segment but the batch in flight; a SIGKILL loses at most the last checkpoint interval; the re-run encodes only the
rest and ends equal to an uninterrupted run (extract/writer.py: partial shards)."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_features, write_marketcalls

from extract.cli import main as extract_cli
from extract.encoders import AudioEncoder
from extract.writer import ShardWriter
from pipeline.store import CacheStore, StoreError, StoreShape

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ARRAYS = ("audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped")
SHARD = 4


def _arrays(path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {k: np.asarray(s.array(k)[:]) for k in ARRAYS}


def _partial_shards(done: np.ndarray) -> int:
    """Shards with some but not all rows done: only a partial-shard write makes them."""
    per = [done[i : i + SHARD].sum() for i in range(0, len(done), SHARD)]
    return sum(
        1 for k, i in zip(per, range(0, len(done), SHARD)) if 0 < k < len(done[i : i + SHARD])
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_encoders):
    """40 length-mixed rows in shards of 4; blocks of 4 shards (3 blocks); batches of ≤ 2 rows (8 per block)."""
    root = tmp_path_factory.mktemp("interrupt")
    data = write_marketcalls(root / "mc", calls=10, segments=4, seconds=(1.0, 6.0))
    args = [
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
        str(SHARD),
        "--block-shards",
        "4",
        "--batch-size",
        "2",
        "--max-text-tokens",
        "24",
        "-q",
    ]
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(root / "ref.zarr")])
    assert r.exit_code == 0, r.output
    return args, _arrays(root / "ref.zarr")


def _stop_after(monkeypatch, batches: int, exc: BaseException) -> list[list[int]]:
    """The audio encoder raises ``exc`` on batch ``batches + 1``; returns the sizes of the batches it encoded."""
    real, seen = AudioEncoder.encode, []

    def encode(self, waves):
        if len(seen) == batches:
            raise exc
        seen.append(len(waves))
        return real(self, waves)

    monkeypatch.setattr(AudioEncoder, "encode", encode)
    return seen


def test_ctrl_c_in_the_first_block_keeps_every_encoded_segment_and_resume_encodes_the_rest(
    dataset, tmp_path, monkeypatch
):
    args, want = dataset
    out = tmp_path / "c.zarr"
    seen = _stop_after(
        monkeypatch, 3, KeyboardInterrupt()
    )  # Ctrl-C while batch 4 of block 1's 8 is encoded
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(out)])
    assert r.exit_code == 130, r.output
    kept = sum(seen)
    assert kept == 6
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines == [
        f"interrupted: every encoded segment but the batch in flight is kept ({kept} of 40 segments "
        f"done in {out}); run the same command again to resume"
    ], r.output
    done = CacheStore.open(out).done()
    assert done.sum() == kept and done[16:].sum() == 0, (
        "the encoded rows of the first block, nothing else"
    )
    assert _partial_shards(done) > 0, "rows of shards still incomplete are kept too"
    got = _arrays(out)
    for k in ("audio/hidden", "audio/length", "text/hidden", "text/length"):
        assert_same_features(got[k][done], want[k][done], err_msg=k)
    monkeypatch.undo()
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["encoded_this_run"] == 40 - kept
    got = _arrays(out)
    for k in ARRAYS:
        assert_same_features(got[k], want[k], err_msg=k)


def test_an_error_mid_block_keeps_the_encoded_rows_too(dataset, tmp_path, monkeypatch):
    from extract.config import ExtractConfig
    from extract.run import extract

    args, want = dataset
    seen = _stop_after(monkeypatch, 5, RuntimeError("CUDA out of memory"))
    opts = dict(zip(args[0:-1:2], args[1::2]))
    cfg = ExtractConfig(
        dataset="marketcalls",
        data_dir=opts["--data-dir"],
        out=str(tmp_path / "e.zarr"),
        audio_model=opts["--audio-model"],
        text_model=opts["--text-model"],
        num_workers=0,
        shard_size=SHARD,
        block_shards=4,
        max_batch=2,
        max_text_tokens=24,
    )
    with pytest.raises(RuntimeError, match="out of memory"):
        extract(cfg, progress=False)
    done = CacheStore.open(tmp_path / "e.zarr").done()
    assert done.sum() == sum(seen) == 10 and _partial_shards(done) > 0


# a child `msmtfn-extract` whose partial shards are written every 0.3 s and whose encoder takes 0.5 s a batch
CHILD = """import sys, time
import extract.run, extract.encoders
extract.run.CHECKPOINT_SECONDS = 0.3
real = extract.encoders.AudioEncoder.encode
def slow(self, waves):
    time.sleep(0.5)
    return real(self, waves)
extract.encoders.AudioEncoder.encode = slow
from extract.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_block_loses_at_most_the_last_checkpoint_interval(dataset, tmp_path):
    args, want = dataset
    out = tmp_path / "k.zarr"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.getcwd(), str(Path(__file__).parent)]),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    done = np.zeros(0, bool)
    t_first = None
    while p.poll() is None:
        try:
            done = CacheStore.open(out).done()
        except (StoreError, Exception):  # not created yet, or being created
            pass
        if done.sum() and t_first is None:
            t_first = time.monotonic()
        if (
            t_first is not None and time.monotonic() - t_first > 1.0
        ):  # ~2 batches later, in the first block
            break
        time.sleep(0.05)
    assert p.poll() is None, f"the run ended before the kill: {p.stderr.read().decode()[-2000:]}"
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = CacheStore.open(out).done()
    assert 0 < done.sum() < 40 and _partial_shards(done) > 0, done.astype(int)
    got = _arrays(out)
    for k in ("audio/hidden", "audio/length", "text/hidden", "text/length"):  # a done row is whole
        assert_same_features(got[k][done], want[k][done], err_msg=k)
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["encoded_this_run"] == 40 - int(done.sum())
    got = _arrays(out)
    for k in ARRAYS:
        assert_same_features(got[k], want[k], err_msg=k)


# ----------------------------------------------------------------------------- the writer's shard semantics
def _store(path: Path, n: int) -> CacheStore:
    return CacheStore.create(
        path,
        StoreShape(n=n, audio_frames=6, audio_dim=4, text_tokens=3, text_dim=4, shard_size=SHARD),
        [],
        fingerprint="x",
        settings={},
        manifest_digest="x",
    )


def test_a_shard_written_partially_then_completed_is_byte_identical_to_a_one_shot_write(tmp_path):
    n = 14  # the last shard is short
    rng = np.random.default_rng(0)
    al, tl = rng.integers(1, 7, n).astype(np.int32), rng.integers(1, 4, n).astype(np.int32)
    a, t = (
        rng.standard_normal((n, 6, 4)).astype(np.float16),
        rng.standard_normal((n, 3, 4)).astype(np.float16),
    )

    def put(w, rows):
        w.put(rows, a[rows], al[rows], t[rows], tl[rows])

    one = _store(tmp_path / "one.zarr", n)
    w = ShardWriter(one, np.ones(n, bool))
    put(w, list(range(n)))
    w.close()
    assert set(w.shard_writes.values()) == {1}

    now = [0.0]
    parts = _store(tmp_path / "parts.zarr", n)
    w = ShardWriter(parts, np.ones(n, bool), checkpoint_seconds=10, clock=lambda: now[0])
    put(w, [0, 5, 13])  # t=0: shards 0, 1, 3 get a row each
    now[0] = 4.0
    put(w, [9])  # t=4: shard 2
    now[0] = 11.0
    put(w, [1, 2])  # t=11: shards 0, 1, 3 have waited 11 s: written; shard 2 only 7 s
    now[0] = 12.0
    put(w, [6])  # t=12: shard 1 again, 1 s after its write: it waits
    for _ in range(100):  # the write is in the background
        if parts.done().sum() == 5:
            break
        time.sleep(0.05)
    assert np.flatnonzero(parts.done()).tolist() == [0, 1, 2, 5, 13]
    w.close(keep_partial=True)  # an interrupt: shards 1 and 2 written too
    done = parts.done()
    assert np.flatnonzero(done).tolist() == [0, 1, 2, 5, 6, 9, 13]
    assert w.shard_writes == {0: 1, 1: 2, 2: 1, 3: 1} and w.rows_written == 7
    # the resumed run reads the kept rows back into its shard buffers, and writes each shard once, whole
    w = ShardWriter(parts, ~done)
    put(w, [i for i in range(n) if not done[i]])
    w.close()
    assert w.shard_writes == {0: 1, 1: 1, 2: 1, 3: 1} and w.rows_written == n - 7
    for root, _, files in os.walk(tmp_path / "one.zarr"):
        for f in (f for f in files if f != "zarr.json"):  # (metadata holds the creation time)
            mine = Path(root, f)
            other = tmp_path / "parts.zarr" / mine.relative_to(tmp_path / "one.zarr")
            assert filecmp.cmp(mine, other, shallow=False), f"{mine.relative_to(tmp_path)} differs"
