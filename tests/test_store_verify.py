"""Checksummed stores: a flipped bit in a shard is found by ``msmtfn-extract verify`` (named by segment
id), stops training with one line instead of a traceback or silently different features, and after
``verify --repair`` the same ``msmtfn-extract`` command re-encodes exactly those rows: the repaired
store equals the original bit for bit. Row invariants (lengths, padding, NaN) are checked too, and a
store made before checksums still reads and says it has none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_marketcalls

import pipeline.store as store_module
from extract.cli import main as extract_cli
from extract.run import ExtractConfig, extract
from pipeline.store import SCHEMA_VERSION, CacheStore, DamagedStore
from predict.cli import main as predict_cli
from train.cli import main as train_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARRAYS = (
    "audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped", "table/segment_id",
)  # fmt: skip


def _args(data: Path, out: Path, enc: dict) -> list[str]:
    return [
        "--dataset", "marketcalls", "--data-dir", str(data), "--out", str(out),
        "--audio-model", str(enc["group"]), "--text-model", str(enc["text"]),
        "--loader-workers", "0", "--shard-size", "4", "--max-text-tokens", "32", "-q",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def made(tiny_encoders, tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    data = write_marketcalls(root / "data", calls=6, segments=2, seconds=(1.0, 2.0))
    out = root / "c.zarr"
    # the thread count the tests re-encode with (one_torch_thread applies only inside each test):
    # bit for bit holds for one machine and one setting, and BLAS sums in another order on 2 threads
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(extract_cli, _args(data, out, tiny_encoders))
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return {"root": root, "data": data, "store": out, "enc": tiny_encoders}


def arrays(path: Path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {n: np.asarray(s.array(n)[:]) for n in ARRAYS}


def flip_a_bit(store: Path, array: str, shard: int) -> Path:
    """One bit inside the first chunk of a shard file (chunks come first, the index last)."""
    f = store / array / "c" / str(shard) / "0" / "0"
    b = bytearray(f.read_bytes())
    b[12] ^= 0x04
    f.write_bytes(bytes(b))
    return f


def verify(path: Path, *extra: str):
    r = CliRunner().invoke(extract_cli, ["verify", str(path), "--json", "-q", *extra])
    return r.exit_code, (json.loads(r.output) if r.output.strip().startswith("{") else r.output)


def test_new_stores_checksum_every_chunk_and_verify_clean(made):
    s = CacheStore.open(made["store"])
    assert s.attrs["schema_version"] == SCHEMA_VERSION >= 2 and s.checksums
    assert s.info()["checksums"] is True
    code, report = verify(made["store"])
    assert code == 0 and report["damaged"] == [] and report["done"] == report["rows"] == 12
    r = CliRunner().invoke(extract_cli, ["verify", str(made["store"]), "-q"])
    assert r.exit_code == 0 and "clean" in r.output and "CRC32C" in r.output


def test_a_flipped_bit_is_found_stops_training_and_is_repaired_bit_for_bit(made, tmp_path):
    original = arrays(made["store"])
    damaged = tmp_path / "c.zarr"
    shutil.copytree(made["store"], damaged)
    flip_a_bit(damaged, "audio/hidden", shard=1)  # rows 4-7: the first chunk is row 4
    sid = str(original["table/segment_id"][4])

    code, report = verify(damaged)
    assert code == 1 and report["checksums"]
    assert [(d["row"], d["segment_id"], d["array"]) for d in report["damaged"]] == [
        (4, sid, "audio/hidden")
    ]
    assert report["damaged"][0]["reason"] == "checksum mismatch"
    r = CliRunner().invoke(extract_cli, ["verify", str(damaged), "-q"])
    assert r.exit_code == 1 and sid in r.output and "--repair" in r.output

    # reading it: one line naming the store, the array, the segment and the fix
    with pytest.raises(DamagedStore) as e:
        CacheStore.open(damaged).read_rows("audio/hidden", np.arange(12))
    assert e.value.rows == [4] and sid in str(e.value) and "verify" in str(e.value)
    r = CliRunner().invoke(
        train_cli,
        ["--cache", str(damaged), "--out", str(tmp_path / "run"), "--epochs", "1", "--heads", "4"]
        + ["--d-model", "32", "--ffn", "64", "--gru-hidden", "16", "--head-hidden", "32", "-q"],
    )
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert "\n" not in line and "Traceback" not in line, r.output
    assert str(damaged) in line and "audio/hidden" in line and sid in line and "--repair" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # a run trained on the intact store scoring the damaged one (msmtfn-predict --cache): the same line
    r = CliRunner().invoke(
        train_cli,
        [
            "--cache",
            str(made["store"]),
            "--out",
            str(tmp_path / "ok"),
            "--epochs",
            "1",
            "--heads",
            "4",
        ]
        + ["--d-model", "32", "--ffn", "64", "--gru-hidden", "16", "--head-hidden", "32", "-q"],
    )
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "ok").glob("**/model.safetensors")).parent
    r = CliRunner().invoke(
        predict_cli,
        [
            "--run",
            str(run),
            "--cache",
            str(damaged),
            "--split",
            "all",
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert r.exit_code == 1 and sid in r.output and "--repair" in r.output, r.output
    assert r.output.strip().count("\n") == 0 and not (tmp_path / "p.csv").exists()

    code, report = verify(damaged, "--repair")
    assert code == 1 and report["repaired"] == 1
    s = CacheStore.open(damaged)
    assert not s.done()[4] and s.done().sum() == 11  # exactly that row is to be done again
    assert verify(damaged)[0] == 0  # what is left reads back whole
    # the same command as the first time re-encodes it through the resume path
    r = CliRunner().invoke(extract_cli, _args(made["data"], damaged, made["enc"]))
    assert r.exit_code == 0, r.output
    repaired = arrays(damaged)
    for name in ARRAYS:
        np.testing.assert_array_equal(repaired[name], original[name], err_msg=name)


def test_row_invariants_are_checked(made, tmp_path):
    bad = tmp_path / "c.zarr"
    shutil.copytree(made["store"], bad)
    s = CacheStore.open(bad, "r+")
    a, t = s.array("audio/hidden"), s.array("text/hidden")
    al, tl = s.lengths("audio"), s.lengths("text")
    row = a[1]
    row[3, 0] = np.nan
    a[1] = row
    row = t[2]
    row[tl[2] + 1, 5] = 1.0  # past the text's length: padding must stay zero
    t[2] = row
    lengths = s.array("audio/length")[:]
    lengths[9] = 5000
    s.array("audio/length")[:] = lengths
    code, report = verify(bad)
    got = {d["row"]: (d["array"], d["reason"]) for d in report["damaged"]}
    assert code == 1 and got == {
        1: ("audio/hidden", "NaN/inf values"),
        2: ("text/hidden", f"non-zero values past its length {tl[2]}"),
        9: ("audio/length", f"length 5000 outside 1–{a.shape[1]}"),
    }
    assert al[1] > 3


def test_a_store_without_checksums_still_reads_and_says_so(made, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "checksummed", lambda compressors: tuple(compressors))
    out = tmp_path / "old.zarr"
    extract(
        ExtractConfig(
            dataset="marketcalls",
            data_dir=str(made["data"]),
            out=str(out),
            audio_model=str(made["enc"]["group"]),
            text_model=str(made["enc"]["text"]),
            num_workers=0,
            shard_size=4,
            max_text_tokens=32,
        ),
        progress=False,
    )
    s = CacheStore.open(out, "r+")
    s.group.attrs["schema_version"] = 1  # as stores were made before checksums
    monkeypatch.undo()
    s = CacheStore.open(out)
    assert not s.checksums and s.info()["checksums"] is False
    r = CliRunner().invoke(extract_cli, ["verify", str(out), "-q"])
    assert r.exit_code == 0 and "no checksums" in r.output, r.output
    np.testing.assert_array_equal(
        s.read_rows("text/hidden", [0, 1]), arrays(made["store"])["text/hidden"][:2]
    )
