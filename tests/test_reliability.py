"""A disk that fills up after N bytes, at any point of an extraction (creating the store, writing shards):
one clear line, everything written before intact, and a re-run (once there is room) resumes to the same store
an uninterrupted run makes."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local as zarr_local
from click.testing import CliRunner
from conftest import assert_same_features, write_marketcalls

from extract.cli import main as extract_cli
from pipeline.store import CacheStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ARRAYS = ("audio/hidden", "audio/length", "text/hidden", "text/length", "done", "skipped")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_encoders):
    root = tmp_path_factory.mktemp("full")
    data = write_marketcalls(root / "mc", calls=8, segments=3)
    args = [
        "--dataset",
        "marketcalls",
        "--data-dir",
        str(data),
        "--audio-model",
        str(tiny_encoders["group"]),
        "--text-model",
        str(tiny_encoders["text"]),
        "--num-workers",
        "0",
        "--shard-size",
        "2",
        "--max-text-tokens",
        "24",
        "-q",
    ]
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(root / "ref.zarr")])
    assert r.exit_code == 0, r.output
    s = CacheStore.open(root / "ref.zarr")
    return args, {k: np.asarray(s.array(k)[:]) for k in ARRAYS}


@pytest.mark.parametrize(
    "budget", [500, 3_000, 20_000, 60_000]
)  # bytes the disk takes before it is full
def test_disk_full_after_n_bytes_then_resume(reference, tmp_path, monkeypatch, budget):
    args, want = reference
    out = tmp_path / "c.zarr"
    real_put, used = zarr_local._put, [0]

    def put(
        path, value, exclusive=False
    ):  # every chunk/metadata write of zarr's local store goes through here
        n = len(value.as_buffer_like())
        if used[0] + n > budget:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        used[0] += n
        return real_put(path, value, exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(out)])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert (
        len(lines) == 1
        and "No space left on device" in lines[0]
        and "run the same command" in lines[0]
    ), r.output
    if (out / "zarr.json").is_file() and "schema_version" in (out / "zarr.json").read_text():
        got = CacheStore.open(out)
        done = got.done()
        for k in (
            "audio/hidden",
            "text/hidden",
            "audio/length",
        ):  # what is marked done is exactly right
            assert_same_features(np.asarray(got.array(k)[:])[done], want[k][done], err_msg=k)
    assert not (tmp_path / "c.zarr.lock").exists()
    monkeypatch.setattr(zarr_local, "_put", real_put)  # room again
    r = CliRunner().invoke(extract_cli, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = CacheStore.open(out)
    for k in ARRAYS:
        assert_same_features(np.asarray(got.array(k)[:]), want[k], err_msg=k)


def test_model_code_in_a_checkpoint_never_runs_without_the_flag(tmp_path, tiny_encoders):
    """A model folder whose config points at its own Python code (``auto_map``): without --trust-remote-code that
    code is never imported; with the flag it is (so the check can fail)."""
    import json
    import shutil

    from extract.encoders import EncoderSpec, TextEncoder

    evil = Path(shutil.copytree(tiny_encoders["text"], tmp_path / "evil-text"))
    marker = tmp_path / "code-ran"
    cfg = json.loads((evil / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel"}
    (evil / "config.json").write_text(json.dumps(cfg))
    (evil / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n"
    )
    TextEncoder(EncoderSpec(str(evil), None, -1), "cpu", "float32", max_tokens=16)
    assert not marker.exists(), "checkpoint code ran without --trust-remote-code"
    TextEncoder(
        EncoderSpec(str(evil), None, -1), "cpu", "float32", max_tokens=16, trust_remote_code=True
    )
    assert marker.exists()
