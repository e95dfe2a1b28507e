"""Distributed extraction scaling: throughput (segments/s) of one process vs a dask LocalCluster of 1 and 2 workers,
on the same segments, with the tiny test encoders and with larger random encoders (compute dominates). Prints the
measured ratios and what the scheduler carried per block (record them in docs/scaling.md).

    OMP_NUM_THREADS=1 python bench/scaling.py                        # CPU: tiny + small encoders, 1 and 2 workers
    python bench/scaling.py --device cuda --sizes base --workers 1,2,4,8 --segments 4000 --seconds 40  # GPUs

Every run uses one compute thread per process (torch.set_num_threads(1); dask's nanny sets OMP_NUM_THREADS=1 in
its workers), so "2 workers" means 2 cores' worth of compute vs 1. Workers load their encoders before the timed run
(a worker loads once and keeps them), and the figure is the encode loop (``loop_seconds``: first batch to last
shard committed); the full ``elapsed`` (manifest, driver's encoder load, store creation) is printed beside it.
Every distributed store is checked against the single-process one (bit for bit, else to float16 rounding).
Beside the rate: the time spent inside tasks, CPU seconds per segment (workers' processes + the driver's, which
hosts the scheduler of a LocalCluster) and the 1-minute load average at the start — on a shared machine the
rate can only scale as far as idle cores allow, while CPU s/segment shows what the scale-out itself costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract.distributed import cluster_client, worker_encoders, worker_spec  # noqa: E402
from extract.plan import make_plan  # noqa: E402
from extract.run import ExtractConfig, extract  # noqa: E402
from extract.tiny import build_tiny_encoders  # noqa: E402
from pipeline.store import CacheStore  # noqa: E402

ARRAYS = ["audio/hidden", "audio/length", "text/hidden", "text/length", "done"]


def make_dataset(root: Path, n: int, seconds: float, rate: int = 8000, seed: int = 0) -> Path:
    """n segments (5 per call) in the generic CSV format, lengths uniform in [seconds/2, seconds]."""
    import csv

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        x = (0.1 * rng.standard_normal(int(rng.uniform(seconds / 2, seconds) * rate))).astype(
            np.float32
        )
        sf.write(root / "audio" / f"c{i // 5:05d}_{i % 5}.wav", x, rate)
        rows.append(
            {
                "call_id": f"c{i // 5:05d}",
                "audio": f"audio/c{i // 5:05d}_{i % 5}.wav",
                "text": "您好我们这边是做保险的请问您有兴趣了解一下吗" * int(rng.integers(1, 6)),
                "label": "ABCDE"[i // 5 % 5],
                "split": ("train", "valid", "test")[i // 5 % 3],
            }
        )
    with open(root / "calls.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def build_small(root: Path) -> tuple[Path, Path]:
    """Random encoders 8x wider than the tiny ones (HuBERT-style 256-d, 4 layers, 128-channel convs; BERT 256-d,
    4 layers): the encoders' compute dominates a segment's time, as with real models."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, HubertConfig, HubertModel

    audio, text = root / "audio-small", root / "text-small"
    if not (audio / "config.json").is_file():
        tiny_audio, tiny_text = build_tiny_encoders(
            root
        )  # the feature extractor and vocabulary are reused
        torch.manual_seed(0)
        cfg = HubertConfig(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            conv_dim=(128,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2),
            conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            num_conv_pos_embeddings=32,
            num_conv_pos_embedding_groups=8,
            feat_extract_norm="group",
            conv_bias=False,
        )
        HubertModel(cfg).eval().save_pretrained(audio)
        shutil.copy(tiny_audio / "preprocessor_config.json", audio / "preprocessor_config.json")
        tok = BertTokenizerFast.from_pretrained(tiny_text)
        BertModel(
            BertConfig(
                vocab_size=tok.vocab_size,
                hidden_size=256,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=1024,
            )
        ).eval().save_pretrained(text)
        tok.save_pretrained(text)
    return audio, text


def arrays(path) -> dict[str, np.ndarray]:
    s = CacheStore.open(path)
    return {k: np.asarray(s.array(k)[:]) for k in ARRAYS}


def compare(a: dict, b: dict) -> str:
    if all(np.array_equal(a[k], b[k]) for k in a):
        return "bit for bit"
    for k in a:
        np.testing.assert_allclose(
            a[k].astype(np.float32), b[k].astype(np.float32), rtol=2**-9, atol=1e-4, err_msg=k
        )
    return "to float16 rounding"


def warm(client, cfg: ExtractConfig) -> None:
    """Load the encoders in every worker now (as a long run's first task would), so the timed loop is the work."""
    plan = make_plan(cfg, progress=False, on_workers=True)
    client.run(lambda s: bool(worker_encoders(s)), worker_spec(plan))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument(
        "--seconds", type=float, default=8.0, help="segment lengths uniform in [s/2, s]"
    )
    ap.add_argument(
        "--sizes",
        default="tiny,small",
        help="tiny, small (8x wider, random), base (HuBERT/BERT-base)",
    )
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument(
        "--block-shards", type=int, default=2, help="shards per block = per distributed task"
    )
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    import distributed  # before the levels below: importing it sets its own

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    torch.set_num_threads(1)
    work = Path(args.keep or tempfile.mkdtemp(prefix="msmtfn-scaling-"))
    data = make_dataset(work / "data", args.segments, args.seconds)
    print(
        f"# {args.segments} segments of {args.seconds / 2:g}–{args.seconds:g} s, device {args.device}, "
        f"{os.cpu_count()} CPU cores, shard {args.shard_size} rows, block {args.shard_size * args.block_shards} "
        f"rows; torch {torch.__version__}, dask.distributed {distributed.__version__}"
    )
    print(
        "| encoders | run | segments/s (loop) | vs 1 process | loop s | elapsed s | in tasks s | "
        "CPU s/segment (workers + driver) | load avg | same store | scheduler B/block (tasks+results) | "
        "hidden B/block written by workers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        if size == "small":
            audio_dir, text_dir = build_small(work / "enc")
        else:
            audio_dir, text_dir = build_tiny_encoders(work / "enc", size=size)
        base = dict(
            dataset="csv",
            data_dir=str(data),
            audio_model=str(audio_dir),
            text_model=str(text_dir),
            device=args.device,
            num_workers=0,
            shard_size=args.shard_size,
            block_shards=args.block_shards,
            write_threads=1,
        )
        ref_out = work / f"{size}-single.zarr"
        shutil.rmtree(ref_out, ignore_errors=True)
        load = os.getloadavg()[0]
        cpu0 = time.process_time()
        ref = extract(ExtractConfig(**base, out=str(ref_out)), progress=False)
        cpu = time.process_time() - cpu0
        single = ref.computed / ref.loop_seconds
        print(
            f"| {size} | 1 process | {single:.2f} | 1.00 | {ref.loop_seconds:.1f} | {ref.elapsed:.1f} | – | "
            f"{cpu / ref.computed:.3f} | {load:.1f} | (reference) | – | – |",
            flush=True,
        )
        ref_arrays = arrays(ref_out)
        for n in [int(w) for w in args.workers.split(",")]:
            out = work / f"{size}-w{n}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            cfg = ExtractConfig(**base, out=str(out), workers=n)
            with cluster_client(
                cfg
            ) as client:  # the LocalCluster msmtfn-extract --dask-workers N starts
                warm(client, cfg)
                load = os.getloadavg()[0]
                cpu0, drv0 = client.run(time.process_time), time.process_time()
                res = extract(cfg, progress=False, client=client)
                cpu1, drv1 = client.run(time.process_time), time.process_time()
                worker_cpu = sum(cpu1[w] - cpu0[w] for w in cpu1 if w in cpu0)
            rep = json.loads(Path(res.report).read_text())["distributed"]
            rate = res.computed / res.loop_seconds
            same = compare(ref_arrays, arrays(out))
            blocks = max(1, rep["blocks"])
            print(
                f"| {size} | {n} worker{'s' if n > 1 else ''} | {rate:.2f} | {rate / single:.2f} | "
                f"{res.loop_seconds:.1f} | {res.elapsed:.1f} | {rep['task_seconds']:.1f} | "
                f"{worker_cpu / res.computed:.3f} + {(drv1 - drv0) / res.computed:.3f} | {load:.1f} | {same} | "
                f"{(rep['task_bytes'] + rep['result_bytes']) / blocks:,.0f} | "
                f"{rep['hidden_bytes_written_by_workers'] / blocks:,.0f} |",
                flush=True,
            )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"# bench wall time {time.perf_counter() - t:.0f} s")
