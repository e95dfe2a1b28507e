"""Datasets and recordings in object storage (a moto S3 server on 127.0.0.1): ``--data-dir
s3://bucket/prefix`` for the csv and marketcalls adapters, in one process and on dask workers that
share no filesystem with the driver, and ``msmtfn-predict --audio 's3://bucket/calls/*.wav'``. The
store equals the one made from the same files on disk; the fingerprint follows the objects' ETags."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import build_tiny_run, write_marketcalls
from test_datasets_benchmarks import (
    FOLDS_PY,
    MMSA_HEADER,
    make_meld,
    make_sdk,
    mmsa_rows,
    tone_mp4,
    tone_wav,
    write_csv,
)

from extract.run import ExtractConfig, extract
from pipeline.datasets import DATASETS, Adapter, ManifestError, load_manifest, register
from pipeline.store import CacheStore, StoreError
from predict.cli import main as predict_cli

pytest.importorskip("s3fs")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARRAYS = ["audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped"]
RATE = 16000


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _upload(local: Path, url: str) -> str:
    _fs().put(str(local), url.removeprefix("s3://"), recursive=True)
    return url


def _timed_csv(root: Path) -> Path:
    """Four 6-s recordings, each cut into three timed rows (ranged reads of one object)."""
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(4):
        sf.write(root / "audio" / f"r{i}.wav", 0.2 * rng.standard_normal(6 * RATE), RATE)
        split = ("train", "train", "valid", "test")[i]
        for k, (a, b) in enumerate(((0, 2), (2, 4.5), (4.5, 6))):
            rows.append([f"r{i}", f"audio/r{i}.wav", a, b, f"第{k}句话", "ABCDE"[i], split])
    with open(root / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "audio", "start", "end", "text", "label", "split"])
        w.writerows(rows)
    return root


def _cfg(dataset: str, data, out, enc: dict, **kw) -> ExtractConfig:
    base = dict(
        dataset=dataset,
        data_dir=str(data),
        out=str(out),
        audio_model=str(enc["group"]),
        text_model=str(enc["text"]),
        num_workers=0,
        shard_size=4,
        max_text_tokens=24,
    )
    return ExtractConfig(**{**base, **kw})


def _arrays(path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


def _mosi_csv_form(root: Path) -> Path:
    """MMSA's label.csv: clips as wav/<video>/<clip>.wav and Raw/<video>/<clip>.mp4, one missing."""
    rows = mmsa_rows()
    write_csv(root / "label.csv", rows, MMSA_HEADER)
    for r in rows[1:]:
        if r["video_id"] == "1DmNV9C1hbY":
            tone_mp4(root / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4", 0.6)
        else:
            tone_wav(root / "wav" / r["video_id"] / f"{r['clip_id']}.wav", 0.5)
    return root


@pytest.mark.parametrize("form", ["csv", "marketcalls", "meld", "mosi-csv", "mosi-sdk"])
def test_a_dataset_in_s3_makes_the_store_its_files_on_disk_make(form, tmp_path, tiny_encoders, s3):
    dataset = form.partition("-")[0]
    if form == "csv":
        local = _timed_csv(tmp_path / "data")
    elif form == "meld":  # CSVs in MELD.Raw/, wav and AAC-in-mp4 clips, a clip missing
        local = make_meld(tmp_path / "data" / "MELD.Raw").parent
    elif form == "mosi-csv":
        local = _mosi_csv_form(tmp_path / "data")
    elif form == "mosi-sdk":  # HDF5 .csd labels and words, one WAV per video, a folds file
        local = make_sdk(tmp_path / "data")
        (local / "cmu_mosi_std_folds.py").write_text(FOLDS_PY, encoding="utf-8")
    else:
        local = write_marketcalls(tmp_path / "data", calls=6, segments=3)
    url = _upload(local, f"{s3}/{form}-data")
    ref = extract(_cfg(dataset, local, tmp_path / "local.zarr", tiny_encoders), progress=False)
    # marketcalls: decoded in 2 loader processes (the command's default), each opening the objects
    loaders = 2 if dataset == "marketcalls" else 0
    got = extract(
        _cfg(dataset, url, tmp_path / "s3.zarr", tiny_encoders, num_workers=loaders), progress=False
    )
    assert got.done == ref.done == got.total and got.skipped == 0
    # the same rows left out, for the same reasons (a folder named by its URL, not its path)
    issues = [load_manifest(dataset, d).issues for d in (local, url)]
    assert [i.where for i in issues[0]] == [i.where for i in issues[1]]
    assert [i.reason.split()[:2] for i in issues[0]] == [i.reason.split()[:2] for i in issues[1]]
    a, b = _arrays(ref.store), _arrays(got.store)
    for k in ARRAYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    table = CacheStore.open(got.store).table()
    assert all(str(p).startswith(f"{url}/") for p in table["source_path"])
    # read again: the same fingerprint (resume finds nothing to do)
    again = extract(_cfg(dataset, url, tmp_path / "s3.zarr", tiny_encoders), progress=False)
    assert again.computed == 0


def test_the_demo_generated_into_s3_makes_the_store_a_local_demo_makes(tmp_path, tiny_encoders, s3):
    opts = {"dataset_options": {"n_calls": 15, "use_espeak": False}}
    url = f"{s3}/demo-data"
    ref = extract(_cfg("demo", tmp_path / "demo", tmp_path / "local.zarr", tiny_encoders, **opts))
    got = extract(_cfg("demo", url, tmp_path / "s3.zarr", tiny_encoders, **opts), progress=False)
    assert got.done == ref.done == got.total > 15 and got.skipped == 0
    a, b = _arrays(ref.store), _arrays(got.store)
    for k in ARRAYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    names = sorted(p.rpartition("/")[2] for p in _fs().ls(f"{url.removeprefix('s3://')}/audio"))
    assert names == sorted(p.name for p in (tmp_path / "demo" / "audio").iterdir())
    # a smaller generation asked for (another seed): the objects the new CSVs do not name are gone
    smaller = {"dataset_options": {"n_calls": 15, "use_espeak": False, "seed": 1}}
    m = load_manifest("demo", url, **smaller["dataset_options"])
    assert all(s.audio_path.startswith(f"{url}/audio/") for s in m.segments)
    left = {p.rpartition("/")[2] for p in _fs().ls(f"{url.removeprefix('s3://')}/audio")}
    assert left == {s.audio_path.rpartition("/")[2] for s in m.segments}


def test_the_fingerprint_follows_the_objects(tmp_path, tiny_encoders, s3):
    local = _timed_csv(tmp_path / "data")
    url = _upload(local, f"{s3}/etag-data")
    first = load_manifest("csv", url).digest()
    assert load_manifest("csv", url).digest() == first
    # a recording replaced by other audio (same size, same name): another ETag, another fingerprint
    other = tmp_path / "other.wav"
    sf.write(other, 0.1 * np.random.default_rng(9).standard_normal(6 * RATE), RATE)
    assert other.stat().st_size == (local / "audio" / "r0.wav").stat().st_size
    _fs().put(str(other), f"{url.removeprefix('s3://')}/audio/r0.wav")
    assert load_manifest("csv", url).digest() != first
    out = tmp_path / "s.zarr"
    extract(_cfg("csv", local, out, tiny_encoders), progress=False)
    with pytest.raises(StoreError, match="fingerprint|changed"):
        extract(_cfg("csv", url, out, tiny_encoders), progress=False)


def test_missing_objects_and_local_only_adapters_are_one_line(tmp_path, s3):
    local = _timed_csv(tmp_path / "data")
    (local / "audio" / "r1.wav").unlink()
    # a row naming an object outside the dataset's prefix (which exists)
    with open(local / "calls.csv", "a", encoding="utf-8") as f:
        f.write("r9,../elsewhere/r9.wav,0,2,出去,A,train\n")
    _fs().put(str(local / "audio" / "r0.wav"), f"{s3.removeprefix('s3://')}/elsewhere/r9.wav")
    url = _upload(local, f"{s3}/holes")
    m = load_manifest("csv", url)
    assert len(m.calls()) == 3
    assert any("r1.wav not found" in str(i) for i in m.issues)
    assert any("escapes the dataset directory" in str(i) for i in m.issues)
    assert len(load_manifest("csv", url, allow_outside_paths=True).calls()) == 4
    with pytest.raises(ManifestError, match="no such folder"):
        load_manifest("csv", f"{s3}/nothing-here")
    # an adapter of the user's own that reads through Path only: refused by name, before it reads
    register(Adapter("local-only", lambda data_dir, **kw: None, "marketcalls"))
    try:
        with pytest.raises(ManifestError, match="the local-only adapter reads a local folder only"):
            load_manifest("local-only", url)
    finally:
        DATASETS.pop("local-only")


def test_dask_workers_read_the_dataset_from_s3(tmp_path, tiny_encoders, s3):
    distributed = pytest.importorskip("distributed")
    local = _timed_csv(tmp_path / "data")
    url = _upload(local, f"{s3}/dask-data")
    ref = extract(_cfg("csv", local, tmp_path / "local.zarr", tiny_encoders), progress=False)
    # workers started after the AWS_* variables are set, as on a cluster whose nodes have them
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc,
        distributed.Client(lc) as client,
    ):
        got = extract(
            _cfg("csv", url, tmp_path / "dask.zarr", tiny_encoders, shard_size=2, block_shards=1),
            progress=False,
            client=client,
        )
    assert got.done == got.total == 12
    a, b = _arrays(ref.store), _arrays(got.store)
    for k in ARRAYS:
        np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3)


def test_predict_reads_recordings_from_s3(tmp_path, tiny_encoders, s3):
    tiny = build_tiny_run(tmp_path / "tiny", tiny_encoders)
    calls = tmp_path / "calls"
    calls.mkdir()
    rng = np.random.default_rng(3)
    for name in ("callA", "callB"):
        sf.write(calls / f"{name}.wav", 0.2 * rng.standard_normal(9 * 8000), 8000)
    (calls / "notes.txt").write_text("not a recording")
    url = _upload(calls, f"{s3}/new-calls")
    transcripts = tmp_path / "t.csv"
    transcripts.write_text(
        "call_id,start,end,text\ncallA,0,9,你好我想了解一下\ncallB,0,9,不需要谢谢\n",
        encoding="utf-8",
    )

    def predict(*audio: str) -> list[dict]:
        out = tmp_path / "p.csv"
        args = ["--run", str(tiny["run"]), "--transcripts", str(transcripts), "--out", str(out)]
        r = CliRunner().invoke(predict_cli, args + ["-q", "--audio", *audio])
        assert r.exit_code == 0, r.output
        return list(csv.DictReader(open(out, encoding="utf-8")))

    remote = predict(f"{url}/*.wav")
    disk = predict(str(calls / "callA.wav"), str(calls / "callB.wav"))
    assert [r["call_id"] for r in remote] == ["callA", "callB"]
    assert [r["source"] for r in remote] == [f"{url}/callA.wav", f"{url}/callB.wav"]
    for a, b in zip(remote, disk):
        assert a["status"] == b["status"] == "ok"
        assert {k: v for k, v in a.items() if k.startswith("p_")} == {
            k: v for k, v in b.items() if k.startswith("p_")
        }
    r = CliRunner().invoke(
        predict_cli,
        ["--run", str(tiny["run"]), "--transcripts", str(transcripts), "--out", str(tmp_path / "x")]
        + ["--audio", f"{url}/*.mp3"],
    )
    assert r.exit_code == 2 and "no files match" in r.output
