"""Shared fixtures: tiny encoders built once per session and saved like real checkpoints, small WAV writers."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def assert_same_features(a, b, err_msg: str = "") -> None:
    """Exactly equal, or for float arrays equal to float16 rounding (2 steps of 2**-10, relative).

    A repeated or resumed extraction computes some rows in other batches (other padding), and CPU BLAS sums in an
    order that depends on batch shape, thread count and memory alignment, so a value near a float16 rounding
    boundary can land one step away. A wrong, shifted or stale row differs by far more than this.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f":
        np.testing.assert_array_equal(a, b, err_msg=err_msg)
        return
    np.testing.assert_allclose(
        a.astype(np.float32), b.astype(np.float32), rtol=2**-9, atol=1e-4, err_msg=err_msg
    )


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and OpenMP spin-waits make them 10-50x slower on a busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    """{'group': audio dir, 'layer': audio dir, 'text': text dir} — random weights, loaded via from_pretrained."""
    from extract.tiny import build_tiny_encoders

    root = tmp_path_factory.mktemp("encoders")
    group, text = build_tiny_encoders(root, norm="group")
    layer, _ = build_tiny_encoders(root, norm="layer")
    return {"group": group, "layer": layer, "text": text}


def write_wav(
    path: Path,
    seconds: float,
    rate: int = 8000,
    *,
    seed: int = 0,
    channels: int = 1,
    freq: float = 180.0,
) -> Path:
    """A voice-like test signal (harmonics + noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = sum(
        np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6)
    ) * 0.1 + 0.01 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (1 + 0.1 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate)
    return path


def write_aac(path: Path, blocks, rate: int) -> Path:
    """Blocks of (frames × channels) float32 samples as AAC in an mp4/m4a container, encoded with
    PyAV 1024 frames at a time (what MELD's clips and phone exports carry)."""
    import av

    with av.open(str(path), "w", format="mp4") as c:
        st, pts = None, 0
        for block in blocks:
            block = np.asarray(block, np.float32).reshape(len(block), -1)
            layout = "stereo" if block.shape[1] == 2 else "mono"
            if st is None:
                st = c.add_stream("aac", rate=rate)
                st.layout = layout
            for i in range(0, len(block), 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(block[i : i + 1024].T), format="fltp", layout=layout
                )
                frame.sample_rate, frame.pts = rate, pts
                pts += frame.samples
                for packet in st.encode(frame):
                    c.mux(packet)
        for packet in st.encode(None):
            c.mux(packet)
    return path


def write_marketcalls(
    root: Path,
    calls: int = 9,
    segments: int = 3,
    *,
    seconds=(1.0, 3.0),
    seed: int = 0,
    rate: int = 8000,
) -> Path:
    """A small dataset in the released MarketCalls format (train/valid/test CSVs + audio/)."""
    rng = np.random.default_rng(seed)
    words = "好的可以我想了解一下价格不需要谢谢再见"
    rows = {"train": [], "valid": [], "test": []}
    for c in range(calls):
        split = ("train", "valid", "test")[c % 3]
        label = "ABCDE"[c % 5]
        for k in range(segments):
            name = f"1380000{c:04d}_{k}"
            write_wav(
                root / "audio" / f"{name}.wav",
                float(rng.uniform(*seconds)),
                rate,
                seed=seed + 31 * c + k,
                freq=120 + 20 * (c % 4),
            )
            text = "".join(rng.choice(list(words), size=int(rng.integers(4, 20))))
            rows[split].append(
                {"phone": f"1380000{c:04d}", "Audio_id": name, "text": text, "label": label}
            )
    for split, rs in rows.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["phone", "Audio_id", "text", "label"])
            w.writeheader()
            w.writerows(rs)
    return root


def tiny_sweep_base(epochs: int) -> str:
    """A grid file's [base] of tiny trials (width 16, one layer each) for the sweep tests."""
    return f"""
[base]
d_model = 16
heads = 2
ffn = 32
gru_hidden = 8
head_hidden = 16
cross_layers = 1
bottleneck_layers = 1
epochs = {epochs}
plots = false
threads = 1
"""


def build_tiny_run(root: Path, tiny_encoders: dict, max_seconds: float = 8.0) -> dict:
    """A marketcalls-format dataset of 4-7.5 s segment files extracted with the tiny encoders (segment limit ``max_seconds``)
    and a 2-epoch run; predict cuts new recordings at pauses into pieces of at most the training's 95th
    percentile (~7.3 s)."""
    data = write_marketcalls(root / "data", calls=9, segments=2, seconds=(4.0, 7.5))
    cache = root / "cache.zarr"
    from extract.run import ExtractConfig, extract
    from train.config import TrainConfig
    from train.loop import fit

    extract(
        ExtractConfig(
            dataset="marketcalls",
            data_dir=str(data),
            out=str(cache),
            audio_model=str(tiny_encoders["group"]),
            text_model=str(tiny_encoders["text"]),
            num_workers=0,
            max_text_tokens=32,
            max_seconds=max_seconds,
        ),
        progress=False,
    )
    m = fit(
        TrainConfig(
            cache=str(cache),
            out=str(root / "run"),
            d_model=32,
            heads=4,
            ffn=64,
            gru_hidden=16,
            head_hidden=32,
            cross_layers=1,
            bottleneck_layers=1,
            epochs=2,
            patience=2,
            lr=1e-3,
            batch_calls=4,
            device="cpu",
            plots=False,
            progress=False,
        )
    )
    return {"root": root, "data": data, "cache": cache, "run": Path(m["run_dir"]), **tiny_encoders}


def _byte_symbols() -> list[str]:
    """GPT-2's byte → printable-character table (what a byte-level BPE vocabulary is made of)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_whisper(folder: Path) -> Path:
    """A randomly initialised Whisper (16 wide, 1+1 layers) with a byte-level tokenizer (no merges) carrying
    Whisper's special and timestamp tokens, saved like a hub checkpoint: the real ASR pipeline code path, offline.
    Its transcripts are random bytes; only the timing structure is meaningful."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(_byte_symbols())}), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
    )
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|startoftranscript|>",
                "<|en|>",
                "<|zh|>",
                "<|translate|>",
                "<|transcribe|>",
                "<|startoflm|>",
                "<|startofprev|>",
                "<|nocaptions|>",
                "<|notimestamps|>",
            ]
        }
    )
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids(eot),
        pad_token_id=ids(eot),
        bos_token_id=ids(eot),
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids(eot),
        pad_token_id=ids(eot),
        bos_token_id=ids(eot),
        no_timestamps_token_id=ids("<|notimestamps|>"),
        is_multilingual=False,
        max_initial_timestamp_index=50,
        max_length=32,
        begin_suppress_tokens=[ids(eot)],
        suppress_tokens=[],
    )
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- msmtfn-serve
REPO = Path(__file__).resolve().parents[1]
KEY = "k3y-for-tests"


class ServeProcess:
    """``msmtfn-serve`` in a child process (port 0, CPU, 1 thread, ``TMPDIR`` = ``tmp``), ``url`` once
    /readyz answers 200; ``predict`` posts a recording as a client would (tests, bench/serve_load.py)."""

    def __init__(
        self,
        run: Path,
        tmp: Path,
        *args: str,
        env: dict | None = None,
        device: str = "cpu",
        threads: str = "1",
    ):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        cmd = [sys.executable, "-m", "predict.serve_cli", "--run", str(run), "--port", "0"]
        cmd += ["--device", device, "--threads", threads, *args]
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        port = self.wait_for(r"Uvicorn running on http://127\.0\.0\.1:(\d+)").group(1)
        self.url = f"http://127.0.0.1:{port}"
        import requests

        deadline = time.monotonic() + 120
        while requests.get(self.url + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log
            time.sleep(0.2)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, seconds: float = 120, after: int = 0):
        """The first log line from line ``after`` on that matches ``pattern``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in list(self.lines)[after:]:
                if m := re.search(pattern, line):
                    return m
            assert self.proc.poll() is None, self.log
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n{self.log}")

    def predict(self, audio: Path, transcript=None, key: str | None = KEY, **fields):
        import requests

        data = {k: str(v) for k, v in fields.items()}
        if transcript is not None:
            data["transcript"] = json.dumps(transcript)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with open(audio, "rb") as f:
            r = requests.post(
                self.url + "/v1/predict",
                files={"audio": (audio.name, f)},
                data=data,
                headers=headers,
                timeout=120,
            )
        return r.status_code, r.json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


S3_BUCKET = "msmtfn-test"


@pytest.fixture(scope="module")
def s3():
    """A local S3 endpoint (a moto server on 127.0.0.1; nothing leaves the machine) with one bucket;
    the AWS_* variables point every client (s3fs, dask workers) at it."""
    pytest.importorskip("s3fs")
    ThreadedMotoServer = pytest.importorskip("moto.server").ThreadedMotoServer
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps one backend per process: start each module on an empty one
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    ).close()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
