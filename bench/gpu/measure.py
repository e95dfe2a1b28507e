"""Everything issue 15 measures on a GPU, in one process and one call: run by bench/gpu/run.sh (which installs
what the device image lacks first); ``--dry-run`` does the same on CPU at tiny sizes (tests/test_gpu_bench.py).

Parts, in order of priority (each one wrapped: a failing part records its error and the rest still run; a part
that would start past the wall-clock budget is recorded as skipped):

* ``extract_paper-8k`` / ``extract_encoder``: msmtfn-extract (``extract.run.extract``) with HuBERT-base and
  RoBERTa-base shapes built from their transformers configs (random weights, saved to a local folder and loaded
  through the project's own encoder code: no download) on 40 s segments, vs the naive loop of
  bench/extract_throughput.py (one segment at a time, fp32, synchronous writes). Segments/s, ratio, the share of
  the FLOP ceiling (spec-sheet peak when the GPU is known, and a measured dense matmul), GPU memory, and where
  the time goes (each stage timed alone, per segment: decode/resample/normalise/tokenise on one CPU core,
  forward, device->host copy, write).
* ``writer``: the shard writer's MiB/s vs a raw sequential write of the same bytes on the same disk.
* ``train``: ``train.loop.fit`` (the trainer's public entry) on a MarketCalls-shape cache (877 calls, 3-6
  segments each, 999x768 audio and 199x768 text rows) with bf16 autocast on CUDA: median epoch seconds, GPU
  utilisation (torch.cuda.utilization through pynvml, else the share of wall time spent in CUDA kernels from
  torch.profiler), peak GPU memory, resident feature bytes.
* ``sweep``: bench/sweep_amortisation.py with 3 short trials on the same cache.

Writes ``results.json`` and ``results.md`` into ``--out`` after every part, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    encoders: str  # "base" (HuBERT-base + RoBERTa-base shapes) | "tiny"
    seconds: float  # segment length
    segments: dict  # rate policy -> segments timed for ours
    warm_segments: int  # warm-up run (model load, kernels, allocator), not timed
    naive_segments: int
    workers: int  # decode/resample/tokenise loader processes
    write_segments: int  # base-size rows for the writer part
    calls: int  # training cache
    width: int  # feature width of the training cache (768 = the paper's)
    frames: tuple  # (audio rows, text rows) per segment in the training cache
    epochs: int
    train_overrides: dict  # model dims (dry run only: tiny)
    sweep_trials: int
    budget_s: float  # wall clock for all parts


DEVICE = Sizes(
    encoders="base",
    seconds=40.0,
    segments={"paper-8k": 3072, "encoder": 1536},
    warm_segments=128,
    naive_segments=48,
    workers=max(1, min(12, (os.cpu_count() or 2) - 2)),
    write_segments=256,
    calls=877,
    width=768,
    frames=(999, 199),
    epochs=3,
    train_overrides={},
    sweep_trials=3,
    budget_s=300.0,
)
DRY = Sizes(
    encoders="tiny",
    seconds=4.0,
    segments={"paper-8k": 12, "encoder": 12},
    warm_segments=4,
    naive_segments=4,
    workers=0,
    write_segments=8,
    calls=30,
    width=24,
    frames=(40, 12),
    epochs=1,
    train_overrides=dict(
        heads=4, ffn=32, head_hidden=16, gru_hidden=8, cross_layers=1, bottleneck_layers=1
    ),
    sweep_trials=2,
    budget_s=150.0,
)

# dense fp16/bf16 tensor-core peak (no sparsity), FLOP/s, from the vendors' data sheets
PEAK = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
}


def spec_peak(name: str) -> float | None:
    for key in sorted(PEAK, key=len, reverse=True):
        if key.replace(" ", "").lower() in name.replace(" ", "").lower():
            return PEAK[key]
    return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def host_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------------------------- environment
def environment(device: str) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        env.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            bf16=torch.cuda.is_bf16_supported(),
        )
    try:
        import pynvml  # noqa: F401

        env["pynvml"] = True
    except ImportError:
        env["pynvml"] = False
    for mod in ("zarr", "numcodecs", "dask", "soundfile", "soxr"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # recorded, not fatal: the parts that need it fail on their own
            env[mod] = f"missing ({e.__class__.__name__})"
    return env


def matmul_ceiling(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s in the compute dtype: what the encoders' GEMMs could reach at best."""
    n = 8192 if device.startswith("cuda") else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 0.5:
        a @ b
        reps += 1
        if reps % 5 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- extraction
def build_encoders(folder: Path, size: str) -> tuple[Path, Path]:
    """HuBERT-base (``HubertConfig()``) and RoBERTa-base (``RobertaConfig()``) shapes with random weights, saved
    like checkpoints (tiny widths for the dry run). The text folder keeps extract/tiny.py's character tokenizer
    (hfl/chinese-roberta-wwm-ext also pairs a BERT tokenizer with its weights)."""
    from transformers import RobertaConfig, RobertaModel

    from extract.tiny import build_tiny_audio_encoder, build_tiny_text_encoder

    audio, text = folder / f"audio-{size}", folder / f"text-roberta-{size}"
    if not (audio / "config.json").is_file():
        build_tiny_audio_encoder(audio, size=size)
    if not (text / "config.json").is_file():
        build_tiny_text_encoder(text, size=size)
        vocab = len((text / "vocab.txt").read_text(encoding="utf-8").splitlines())
        dims = (
            {}
            if size == "base"
            else dict(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
            )
        )
        torch.manual_seed(0)
        # pad id 0 = the tokenizer's [PAD] (RoBERTa numbers positions after its padding index)
        RobertaModel(
            RobertaConfig(vocab_size=vocab, pad_token_id=0, **dims)
        ).eval().save_pretrained(text)
    return audio, text


def stage_times(
    cfg, audio_dir: Path, text_dir: Path, data_dir: Path, tmp: Path, batch: int
) -> dict:
    """Seconds per segment of each stage alone: decode + resample + normalise + tokenise (one CPU process),
    forward (both encoders, one planned batch), device->host copy, write (ShardWriter into a fresh store)."""
    import csv

    from extract.audio import AudioPolicy, load_segment
    from extract.encoders import AudioEncoder, EncoderSpec, TextEncoder, resolve_dtype
    from extract.writer import ShardWriter
    from pipeline.store import CacheStore, StoreShape

    dev, dtype = cfg.device, resolve_dtype(cfg.cache.dtype, cfg.device)
    audio = AudioEncoder(EncoderSpec(str(audio_dir)), dev, dtype, pool=cfg.cache.pool)
    text = TextEncoder(EncoderSpec(str(text_dir)), dev, dtype, max_tokens=cfg.cache.max_text_tokens)
    policy = AudioPolicy(cfg.cache.rate_policy, audio.sampling_rate)
    rows = list(csv.DictReader(open(data_dir / "data.csv", encoding="utf-8")))[:batch]
    out: dict = {
        "attention": {
            "audio": audio.model.config._attn_implementation,
            "text": text.model.config._attn_implementation,
        },
        "compute_dtype": dtype,
        "batch": len(rows),
    }
    t0 = time.perf_counter()
    waves, ids = [], []
    for r in rows:
        x, _ = load_segment(
            str(data_dir / "audio" / f"{r['Audio_id']}.wav"), None, None, policy.input_rate
        )
        waves.append(torch.from_numpy(audio.preprocess(x)))
        ids.append(text.tokenize(r["text"])[0])
    out["decode_resample_tokenise_s"] = (time.perf_counter() - t0) / len(rows)
    if dev.startswith("cuda"):
        waves = [w.pin_memory() for w in waves]

    def forward(audio=audio, text=text):  # bound now: both are deleted below to free the GPU
        a, al = audio.encode(waves)
        t, tl = text.encode(ids)
        return a, al, t, tl

    forward()  # warm-up (kernels, allocator)
    sync(dev)
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < 1.0:
        a, al, t, tl = forward()
        reps += 1
    sync(dev)
    out["forward_s"] = (time.perf_counter() - t0) / (reps * len(rows))
    t0 = time.perf_counter()
    a_np, t_np = a.to(torch.float16).cpu().numpy(), t.to(torch.float16).cpu().numpy()
    out["device_to_host_s"] = (time.perf_counter() - t0) / len(rows)
    # FLOPs of one segment (the longest of the batch; all are 40 s here) through both encoders
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        audio.encode(waves[:1])
        text.encode(ids[:1])
    out["flops_per_segment"] = float(fc.get_total_flops())
    # write: the same rows through the shard writer into a fresh store of the run's shape
    reps_w = max(1, 64 // len(rows))
    n = reps_w * len(rows)
    shape = StoreShape(
        n=n,
        audio_frames=a_np.shape[1],
        audio_dim=a_np.shape[2],
        text_tokens=cfg.cache.max_text_tokens,
        text_dim=t_np.shape[2],
        shard_size=cfg.shard_size,
    )
    tt = np.zeros((len(rows), cfg.cache.max_text_tokens, t_np.shape[2]), np.float16)
    tt[:, : t_np.shape[1]] = t_np
    store = CacheStore.create(
        tmp / "stage-write.zarr", shape, [], fingerprint="x", settings={}, manifest_digest="x"
    )
    t0 = time.perf_counter()
    w = ShardWriter(store, np.ones(n, bool))
    for k in range(reps_w):
        w.put(list(range(k * len(rows), (k + 1) * len(rows))), a_np, al, tt, tl)
    w.close()
    out["write_s"] = (time.perf_counter() - t0) / n
    shutil.rmtree(tmp / "stage-write.zarr", ignore_errors=True)
    del audio, text
    return out


def part_extract(
    policy: str, sz: Sizes, device: str, tmp: Path, encoders: tuple[Path, Path]
) -> dict:
    from extract_throughput import make_dataset, naive

    from extract.run import ExtractConfig, extract

    audio_dir, text_dir = encoders
    work = tmp / f"extract-{policy}"
    n = sz.segments[policy]
    data = make_dataset(work / "data", n, sz.seconds, rate=8000, link=True)
    cfg = ExtractConfig(
        dataset="marketcalls",
        data_dir=str(data),
        out=str(work / "ours.zarr"),
        audio_model=str(audio_dir),
        text_model=str(text_dir),
        device=device,
        rate_policy=policy,
        num_workers=sz.workers,
        max_seconds=sz.seconds,
        overwrite=True,
    )
    ref_store, ref_data = None, data
    if sz.warm_segments:
        warm = make_dataset(work / "warm", sz.warm_segments, sz.seconds, rate=8000, link=True)
        ref_store = extract(
            dataclasses.replace(cfg, data_dir=str(warm), out=str(work / "warm.zarr")),
            progress=False,
        ).store
        ref_data = warm
    reset_peak(device)
    res = extract(cfg, progress=False)
    ours = res.computed / res.loop_seconds
    ours_mem = gpu_peak_mib(device)
    # the naive loop writes into a copy of a store of the same shape: the small warm-up one when there is one
    if ref_store:
        shutil.rmtree(work / "ours.zarr", ignore_errors=True)
    reset_peak(device)
    n_naive, t_naive = naive(
        work / "naive.zarr",
        ref_store or res.store,
        audio_dir,
        text_dir,
        device,
        sz.naive_segments,
        ref_data,
        rate=8000 if policy == "paper-8k" else None,
        pool=cfg.cache.pool,
    )
    naive_rate = n_naive / t_naive
    naive_mem = gpu_peak_mib(device)
    from pipeline.store import CacheStore

    shape = CacheStore.open(ref_store or res.store).shape
    shutil.rmtree(work / "naive.zarr", ignore_errors=True)
    shutil.rmtree(work / "ours.zarr", ignore_errors=True)
    budget = 1280.0 if device.startswith("cuda") else 160.0  # extract.run's default batch_seconds
    batch = max(1, min(cfg.max_batch, int(budget // sz.seconds)))
    stages = stage_times(cfg, audio_dir, text_dir, data, work, batch=batch)
    out = {
        "segments": res.computed,
        "seconds_per_segment": sz.seconds,
        "audio_frames": shape.audio_frames,
        "loader_workers": sz.workers,
        "ours_segments_per_s": ours,
        "ours_loop_s": res.loop_seconds,
        "ours_total_s": res.elapsed,
        "naive_segments": n_naive,
        "naive_segments_per_s": naive_rate,
        "speedup_vs_naive": ours / naive_rate,
        "ours_gpu_peak_mib": ours_mem,
        "naive_gpu_peak_mib": naive_mem,
        "host_peak_rss_mib": host_rss_mib(),
        "stages_per_segment": stages,
    }
    out["achieved_tflops"] = stages["flops_per_segment"] * ours / 1e12
    shutil.rmtree(work, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------- writer
def part_writer(sz: Sizes, tmp: Path) -> dict:
    from extract_throughput import write_throughput

    from extract.writer import ShardWriter  # noqa: F401  (the class measured)

    w_one, _, _ = write_throughput(tmp, segments=sz.write_segments, threads=1)
    w_ours, w_raw, nbytes = write_throughput(tmp, segments=sz.write_segments)
    shutil.rmtree(tmp / "w1.zarr", ignore_errors=True)
    shutil.rmtree(tmp / "w0.zarr", ignore_errors=True)
    threads = min(8, os.cpu_count() or 1)
    return {
        "segments": sz.write_segments,
        "mib": nbytes / 2**20,
        "writer_threads": threads,
        "writer_mib_s": w_ours / 2**20,
        "writer_one_thread_mib_s": w_one / 2**20,
        "raw_mib_s": w_raw / 2**20,
        "writer_vs_raw": w_ours / w_raw,
        "base_segments_per_s": w_ours / (2 * (999 + 199) * 768),
    }


# ----------------------------------------------------------------------------------------------- training
def training_cache(path: Path, sz: Sizes) -> Path:
    """MarketCalls-shape store (uncompressed: its write and load are not what is measured here). Rows are
    slices of one random pool, so that 7 GB of float16 are written in seconds, not minutes of random draws."""
    from tests.synthetic import SyntheticCall, write_synthetic_store

    if (path / "zarr.json").is_file():
        return path
    a_rows, t_rows = sz.frames
    d = sz.width
    pool = np.random.default_rng(1).standard_normal(a_rows * d + 4096, dtype=np.float32)

    def fill(rng, index, n_segments, shape):
        def rows(k):
            x = np.empty((n_segments, k, d), np.float32)
            for i in range(n_segments):
                o = int(rng.integers(0, 4096))
                x[i] = pool[o : o + k * d].reshape(k, d)
            return x

        return SyntheticCall(
            label="ABCDE"[int(rng.integers(0, 5))],
            audio=rows(a_rows),
            audio_len=rng.integers(a_rows // 3, a_rows + 1, size=n_segments),
            text=rows(t_rows),
            text_len=rng.integers(2, t_rows + 1, size=n_segments),
        )

    write_synthetic_store(
        path,
        calls=sz.calls,
        segments_per_call=(3, 6),
        audio_frames=a_rows,
        audio_dim=d,
        text_tokens=t_rows,
        text_dim=d,
        seed=0,
        split_fractions=(0.8, 0.1, 0.1),
        fill=fill,
        codec="none",
    )
    return path


class UtilSampler:
    """torch.cuda.utilization() (pynvml) sampled every 50 ms in a thread while the block runs."""

    def __init__(self, device: str):
        self.device, self.samples, self._stop = device, [], threading.Event()
        self.ok = False
        if device.startswith("cuda"):
            try:
                torch.cuda.utilization(device)
                self.ok = True
            except Exception:
                pass

    def __enter__(self):
        if self.ok:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self._stop.set()
        if self.ok:
            self._t.join()


def train_config(cache: Path, out: Path, device: str, epochs: int, overrides: dict):
    """A TrainConfig of the fields that exist (the model's options may be renamed; the bench keeps running)."""
    from train.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    wanted = dict(
        cache=str(cache),
        out=str(out),
        device=device,
        epochs=epochs,
        patience=epochs,
        plots=False,
        progress=False,
        state_every=0,
        **overrides,
    )
    return TrainConfig(**{k: v for k, v in wanted.items() if k in names})


# what the running part has measured so far: kept in results.json when the hard limit interrupts it
PROGRESS: dict = {}


def part_train(sz: Sizes, device: str, tmp: Path) -> dict:
    from train.loop import fit

    t0 = time.perf_counter()
    cache = training_cache(tmp / "train-cache.zarr", sz)
    write_s = time.perf_counter() - t0
    PROGRESS.update(cache_write_s=write_s, fit_started_at_s=write_s)
    print(f"   training cache written in {write_s:.1f} s; fit starts", flush=True)
    cfg = train_config(cache, tmp / "train-run", device, sz.epochs, sz.train_overrides)
    reset_peak(device)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with UtilSampler(device) as util:
        m = fit(cfg)
    wall = time.perf_counter() - t0
    out = {
        "calls": sz.calls,
        "width": sz.width,
        "segments": None,
        "cache_write_s": write_s,
        "epochs_run": m.get("epochs_run"),
        "epoch_s": m.get("epoch_seconds"),
        "fit_wall_s": wall,
        "amp_bf16": bool(getattr(cfg, "amp", False) and device.startswith("cuda")),
        "gpu_peak_mib": gpu_peak_mib(device),
        "host_peak_rss_mib": host_rss_mib(),
    }
    from pipeline.store import CacheStore

    st = CacheStore.open(cache)
    out["segments"] = st.n
    out["padded_feature_gib"] = st.n * 2 * (sz.frames[0] + sz.frames[1]) * sz.width / 2**30
    valid = int(st.lengths("audio").sum() + st.lengths("text").sum())
    out["packed_feature_gib"] = valid * 2 * sz.width / 2**30
    if util.samples:
        out["gpu_util_pct_mean"] = float(np.mean(util.samples))
        out["gpu_util_pct_max"] = float(np.max(util.samples))
        out["gpu_util_source"] = "torch.cuda.utilization (pynvml), whole fit incl. cache load"
    elif device.startswith("cuda"):
        try:
            out.update(kernel_time_ratio(cfg, tmp))
        except Exception as e:  # keep the epoch time measured above
            out["gpu_util_error"] = f"{e.__class__.__name__}: {e}"
    else:  # CPU: busy share of the process's CPU time over wall time (all threads)
        out["cpu_busy_ratio"] = (time.process_time() - cpu0) / wall
    shutil.rmtree(tmp / "train-run", ignore_errors=True)
    return out


def part_train_groups(sz: Sizes, device: str) -> dict:
    """One training step (8 calls, 3-6 segments of random lengths as in the training cache, bf16 autocast on
    CUDA) with the segments run as one padded batch vs in up to 2, 4, 9 length groups (no per-group cost), and
    the number the shipped rule (train.model.MSMTFN.LENGTH_GROUPS) picks: the figures that set the CUDA rule,
    which CPU runs cannot."""
    from train.config import TrainConfig
    from train.model import MSMTFN, ModelDims, build_model

    d, (a_rows, t_rows) = sz.width, sz.frames
    torch.manual_seed(0)
    model = (
        build_model(
            TrainConfig(cache="-", task="5", dropout=0.0, heads=12 if d % 12 == 0 else 4),
            ModelDims(d, d, t_rows, {"5": 5, "4": 4, "3": 3, "2": 2}),
        )
        .to(device)
        .train()
    )
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(3, 7, (8,), generator=g)
    s = int(counts.sum())
    alen, tlen = (
        torch.randint(a_rows // 3, a_rows + 1, (s,), generator=g),
        torch.randint(2, t_rows + 1, (s,), generator=g),
    )
    audio, text = torch.randn(s, a_rows, d, generator=g), torch.randn(s, t_rows, d, generator=g)
    audio, text, alen, tlen, counts = (x.to(device) for x in (audio, text, alen, tlen, counts))
    kind, saved = torch.device(device).type, MSMTFN.LENGTH_GROUPS
    out = {"segments": s, "ms_per_step": {}}
    try:
        for groups in ((1, 0), (2, 0), (4, 0), (9, 0)):
            MSMTFN.LENGTH_GROUPS = {**saved, kind: groups}
            times = []
            for _ in range(7):
                sync(device)
                t0 = time.perf_counter()
                with torch.autocast(kind, dtype=torch.bfloat16, enabled=kind == "cuda"):
                    logits = model(audio, alen, text, tlen, counts)
                sum(v.float().sum() for v in logits.values()).backward()
                sync(device)
                times.append(time.perf_counter() - t0)
            out["ms_per_step"][f"up to {groups[0]} groups"] = 1e3 * float(np.median(times[2:]))
        MSMTFN.LENGTH_GROUPS = saved
        chosen = model.length_groups(alen, tlen, kind)
    finally:
        MSMTFN.LENGTH_GROUPS = saved
    most, overhead = saved.get(kind, (1, 0))
    out["shipped"] = (
        "one padded batch"
        if most <= 1
        else f"up to {most} groups, {overhead:,} row pairs a group; here {len(chosen or [0])}"
    )
    return out


def kernel_time_ratio(cfg, tmp: Path) -> dict:
    """No pynvml: one profiled epoch; CUDA kernel time over wall time."""
    from torch.profiler import ProfilerActivity, profile

    from train.loop import fit

    one = dataclasses.replace(cfg, epochs=1, patience=1, out=str(tmp / "train-prof"))
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fit(one)
    wall = time.perf_counter() - t0
    kern = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    shutil.rmtree(tmp / "train-prof", ignore_errors=True)
    return {
        "gpu_kernel_time_ratio": kern / wall,
        "gpu_util_source": "torch.profiler kernel time / wall, 1 epoch",
    }


def part_sweep(sz: Sizes, device: str, tmp: Path) -> dict:
    from sweep_amortisation import amortisation

    cache = training_cache(tmp / "train-cache.zarr", sz)
    work = tmp / "sweep"
    work.mkdir(exist_ok=True)
    threads = 1 if device == "cpu" else (os.cpu_count() or 1)
    r = amortisation(cache, work, sz.sweep_trials, 1, device, threads, parallel=1)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "trials": sz.sweep_trials,
        "epochs_per_trial": 1,
        "separate_processes_s": r["separate_s"],
        "sweep_s": r["sweep_s"],
        "speedup": r["separate_s"] / r["sweep_s"],
    }


# ----------------------------------------------------------------------------------------------- speed-ups
def speedups(device: str, results: dict) -> dict:
    """Which of issue 15's part-3 speed-ups the code has, as found in it (not assumed)."""
    import inspect

    import extract.encode as encode
    import extract.encoders as enc
    import train.data as data
    from extract.writer import ShardWriter

    st = next(
        (
            p["stages_per_segment"]
            for k, p in results.items()
            if k.startswith("extract_") and "stages_per_segment" in p
        ),
        {},
    )
    return {
        "sdpa_attention": st.get("attention"),
        "compute_dtype_extract": enc.resolve_dtype("auto", device),
        "bf16_autocast_train": device.startswith("cuda"),
        "length_bucketed_batches": hasattr(encode, "make_batches"),
        "pinned_memory_non_blocking": "pin_memory" in inspect.getsource(enc.AudioEncoder._stack),
        "writer_threads": ShardWriter.__init__.__defaults__[-1] or min(8, os.cpu_count() or 1),
        "resampling_on_gpu": False,  # soxr in the loader processes (extract/audio.py)
        "torch_compile_or_cuda_graphs": "torch.compile" in inspect.getsource(enc),
        "packed_training_features": "packed" in inspect.signature(data.FeatureSource).parameters,
    }


# ----------------------------------------------------------------------------------------------- report
def fmt(x, spec=".1f"):
    if x is None:
        return "–"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def markdown(res: dict) -> str:
    e = res["environment"]
    gpu = e.get("gpu", "CPU (dry run)" if res["dry_run"] else "CPU")
    lines = [
        f"# msmtfn GPU benchmark ({res['started']}, {gpu}, torch {e['torch']}, CUDA {e['cuda']}, "
        f"python {e['python']})",
        "",
        f"Command: `{res['command']}`; wall {fmt(res.get('wall_s'))} s.",
        "",
        "| part | measure | value |",
        "|---|---|---|",
    ]

    def row(part, what, value):
        lines.append(f"| {part} | {what} | {value} |")

    for k, p in res["parts"].items():
        if "error" in p or "skipped" in p or "interrupted" in p:
            why = p.get("error") or p.get("skipped") or p["interrupted"]
            got = {n: round(v, 1) for n, v in p.items() if n.endswith("_s")}
            row(k, "not measured", why.splitlines()[0][:200].replace("|", "/") + f" {got or ''}")
            continue
        if k.startswith("extract_"):
            st = p["stages_per_segment"]
            row(k, "ours, segments/s", fmt(p["ours_segments_per_s"]))
            row(k, "naive loop, segments/s", fmt(p["naive_segments_per_s"], ".2f"))
            row(k, "ours / naive", f"{p['speedup_vs_naive']:.1f}x")
            row(
                k,
                "achieved TFLOP/s (share of spec peak; of measured matmul)",
                f"{p['achieved_tflops']:.3g} ({fmt(p.get('flop_share_of_spec'), '.1%')}; "
                f"{fmt(p.get('flop_share_of_matmul'), '.1%')})",
            )
            row(
                k,
                "GPU peak MiB ours / naive",
                f"{fmt(p['ours_gpu_peak_mib'], '.0f')} / {fmt(p['naive_gpu_peak_mib'], '.0f')}",
            )
            row(
                k,
                "ms per segment, each stage alone: decode+resample+tokenise (1 core) / forward / D2H / write",
                " / ".join(
                    f"{1e3 * st[s]:.2f}"
                    for s in (
                        "decode_resample_tokenise_s",
                        "forward_s",
                        "device_to_host_s",
                        "write_s",
                    )
                ),
            )
        elif k == "writer":
            row(
                k,
                "shard writer MiB/s (1 thread) vs raw write",
                f"{p['writer_mib_s']:.0f} "
                f"({p['writer_one_thread_mib_s']:.0f}) vs {p['raw_mib_s']:.0f} = {p['writer_vs_raw']:.2f}",
            )
        elif k == "train":
            row(
                k,
                f"epoch s (median of {p['epochs_run']}), {p['calls']} calls, d={p['width']}",
                fmt(p["epoch_s"], ".2f"),
            )
            util = p.get("gpu_util_pct_mean")
            row(
                k,
                "GPU utilisation",
                f"{util:.0f} % mean"
                if util is not None
                else fmt(p.get("gpu_kernel_time_ratio") or p.get("cpu_busy_ratio"), ".2f")
                + " (kernel/CPU busy ratio)",
            )
            row(
                k,
                "GPU peak MiB; features padded / packed GiB",
                f"{fmt(p['gpu_peak_mib'], '.0f')}; "
                f"{p['padded_feature_gib']:.2f} / {p['packed_feature_gib']:.2f}",
            )
        elif k == "train_groups":
            row(
                k,
                f"ms per training step, {p['segments']} segments: one padded batch vs length groups "
                f"(shipped: {p['shipped']})",
                "; ".join(f"{g}: {v:.1f}" for g, v in p["ms_per_step"].items()),
            )
        elif k == "sweep":
            row(
                k,
                f"{p['trials']} separate msmtfn-train vs one msmtfn-sweep, s",
                f"{p['separate_processes_s']:.1f} vs {p['sweep_s']:.1f} = {p['speedup']:.2f}x",
            )
    lines += [
        "",
        "Speed-ups found in the code: "
        + ", ".join(f"{k}={v}" for k, v in res.get("speedups", {}).items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (the test)")
    ap.add_argument(
        "--device", default=None, help="default: cuda when available (cpu for --dry-run)"
    )
    ap.add_argument("--budget", type=float, default=None, help="wall-clock seconds for all parts")
    ap.add_argument(
        "--parts", default="extract_paper-8k,extract_encoder,writer,train,train_groups,sweep"
    )
    args = ap.parse_args()
    # the trainer's per-epoch lines, timestamped: where a part's time went even if it is cut short
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sz = DRY if args.dry_run else DEVICE
    device = args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    budget = args.budget or sz.budget_s
    if args.dry_run:
        torch.set_num_threads(
            1
        )  # steady on a shared CPU; the dry run checks the script, not the speed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    res = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": args.dry_run,
        "command": "DRY_RUN=1 bash bench/gpu/run.sh" if args.dry_run else "bash bench/gpu/run.sh",
        "budget_s": budget,
        "sizes": dataclasses.asdict(sz),
        "environment": environment(device),
        "parts": {},
    }

    def save():
        res["wall_s"] = time.perf_counter() - t_start
        (out / "results.json").write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
        (out / "results.md").write_text(markdown(res), encoding="utf-8")

    print(json.dumps(res["environment"]), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="msmtfn-gpu-"))
    try:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            res["matmul_tflops"] = matmul_ceiling(device, dtype) / 1e12
        except Exception as e:
            res["matmul_tflops"] = None
            res["matmul_error"] = repr(e)
        peak = spec_peak(res["environment"].get("gpu", "")) if device.startswith("cuda") else None
        res["spec_peak_tflops"] = peak / 1e12 if peak else None
        encoders = None
        for part in args.parts.split(","):
            left = budget - (time.perf_counter() - t_start)
            if left <= 0:
                res["parts"][part] = {"skipped": f"wall-clock budget of {budget:.0f} s spent"}
                continue
            print(f"== {part} ({left:.0f} s of the budget left)", flush=True)
            t0 = time.perf_counter()
            PROGRESS.clear()
            try:
                if part.startswith("extract_"):
                    if encoders is None:
                        encoders = build_encoders(tmp / "enc", sz.encoders)
                    p = part_extract(part.split("_", 1)[1], sz, device, tmp, encoders)
                    if p.get("achieved_tflops") is not None:
                        if res.get("spec_peak_tflops"):
                            p["flop_share_of_spec"] = p["achieved_tflops"] / res["spec_peak_tflops"]
                        if res.get("matmul_tflops"):
                            p["flop_share_of_matmul"] = p["achieved_tflops"] / res["matmul_tflops"]
                elif part == "writer":
                    p = part_writer(sz, tmp)
                elif part == "train":
                    p = part_train(sz, device, tmp)
                elif part == "train_groups":
                    p = part_train_groups(sz, device)
                elif part == "sweep":
                    p = part_sweep(sz, device, tmp)
                else:
                    raise ValueError(f"unknown part {part!r}")
            except (
                KeyboardInterrupt
            ) as e:  # run.sh's hard limit: keep what the part got to, then stop
                res["parts"][part] = {
                    "interrupted": f"{e.__class__.__name__} after {time.perf_counter() - t0:.0f} s",
                    **PROGRESS,
                    "part_s": time.perf_counter() - t0,
                }
                print(f"   {part} interrupted: {res['parts'][part]}", flush=True)
                break
            except Exception as e:  # one part failing must not cost the others their device time
                p = {
                    "error": f"{e.__class__.__name__}: {e}",
                    "traceback": traceback.format_exc()[-3000:],
                }
                print(p["traceback"], file=sys.stderr, flush=True)
            p["part_s"] = time.perf_counter() - t0
            res["parts"][part] = p
            try:
                res["speedups"] = speedups(device, res["parts"])
            except Exception as e:
                res["speedups"] = {"error": repr(e)}
            save()
            print(
                json.dumps({k: v for k, v in p.items() if k != "traceback"}, default=str)[:1500],
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        save()
    print((out / "results.md").read_text(encoding="utf-8"))
    return (
        0 if all("error" not in p and "interrupted" not in p for p in res["parts"].values()) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
