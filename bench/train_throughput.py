"""Epoch time of msmtfn-train on a cache vs the paper's way (frozen encoders run inside every training step,
one call per step), on the same calls. Prints both and the ratio (record them in docs/benchmarks.md).

    python bench/train_throughput.py                            # CPU: tiny fusion dims (minutes)
    python bench/train_throughput.py --size base --device cuda  # the paper's dims (999x768 audio, 199x768 text)

The cache is MarketCalls-sized (877 calls, 3-6 segments each, 80/10/10 split, random values in the right shapes;
``--size base`` is ~7 GB of float16, written shard by shard). Ours: median epoch (training pass + validation pass)
of ``fit`` on that cache. The paper's way: per call, frozen HuBERT-base and BERT-base (built from their
transformers configs with random weights, no downloads: the same cost as the real ones) encode every segment
(40 s of 16 kHz audio; 199 tokens), then the fusion model does one forward/backward/step on that one call. It is
timed on ``--paper-calls`` calls and extrapolated to the training split (the output says so). With
``--size tiny`` the base encoders' outputs are cut to the tiny fusion width, so the fusion part costs the same
in both ways and the comparison is of where the features come from.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import CacheStore  # noqa: E402
from tests.synthetic import write_synthetic_store  # noqa: E402 (a test fixture)
from train.config import TrainConfig  # noqa: E402
from train.data import Batch, CallData  # noqa: E402
from train.loop import _forward, _loss, fit  # noqa: E402
from train.model import ModelDims, build_model  # noqa: E402

SIZES = {
    "tiny": dict(
        audio_frames=999,
        audio_dim=32,
        text_tokens=199,
        text_dim=32,
        model=dict(heads=4, ffn=128, head_hidden=64, gru_hidden=32),
    ),
    "base": dict(audio_frames=999, audio_dim=768, text_tokens=199, text_dim=768, model={}),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_encoders(kind: str, device: torch.device):
    from transformers import BertConfig, BertModel, HubertConfig, HubertModel

    if kind == "base":
        hub, bert = HubertModel(HubertConfig()), BertModel(BertConfig(vocab_size=21128))
    else:
        hub = HubertModel(
            HubertConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                conv_dim=(16,) * 7,
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4,
            )
        )
        bert = BertModel(
            BertConfig(
                vocab_size=21128,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
            )
        )
    for m in (hub, bert):
        m.eval().requires_grad_(False)
    return hub.to(device), bert.to(device)


def paper_way(
    store_path: Path, cfg: TrainConfig, encoders: str, device: torch.device, n_calls: int
) -> tuple[float, float, int]:
    """(seconds per call, of which encoding, training calls): encoders inside the step, batch of one call."""
    hub, bert = build_encoders(encoders, device)
    data = CallData(CacheStore.open(store_path))
    dims = ModelDims(
        data.audio_dim,
        data.text_dim,
        data.text_tokens,
        {t.name: t.num_classes for t in data.scheme.tasks},
    )
    model = build_model(cfg, dims).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    amp = cfg.amp and device.type == "cuda"
    calls = data.indices("train")[:n_calls]
    times, enc_times = [], []
    for k, c in enumerate([calls[0]] + calls):  # the first call warms up
        n = len(data.rows[c])
        sync(device)
        t0 = time.perf_counter()
        audio, text = [], []
        with (
            torch.no_grad(),
            torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp),
        ):
            for _ in range(n):
                wav = torch.randn(1, 640000, device=device)  # 40 s at 16 kHz
                h = hub(wav).last_hidden_state[0]
                h = h[: h.shape[0] // 2 * 2].reshape(-1, 2, h.shape[1]).mean(1)[: data.audio_frames]
                audio.append(h[:, : data.audio_dim].float())
                ids = torch.randint(100, 20000, (1, data.text_tokens), device=device)
                text.append(bert(input_ids=ids).last_hidden_state[0][:, : data.text_dim].float())
        a, t = torch.stack(audio), torch.stack(text)
        sync(device)
        t_enc = time.perf_counter() - t0
        alen = torch.full((n,), a.shape[1], device=device)
        tlen = torch.full((n,), t.shape[1], device=device)
        batch = Batch(
            a,
            alen,
            t,
            tlen,
            torch.tensor([n], device=device),
            {k2: v[[c]].to(device) for k2, v in data.labels.items()},
            [c],
        )
        logits = _forward(model, batch, device, amp)
        _loss(logits, batch.labels, {t2: 1.0 for t2 in logits}).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if k:
            times.append(time.perf_counter() - t0)
            enc_times.append(t_enc)
        print(
            f"  paper's way, call {k}{' (warm-up)' if not k else ''}: {n} segments, "
            f"{time.perf_counter() - t0:.2f} s (encoding {t_enc:.2f} s)",
            flush=True,
        )
    return float(np.mean(times)), float(np.mean(enc_times)), len(data.indices("train"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="tiny", choices=list(SIZES), help="fusion-net / cache dims")
    ap.add_argument(
        "--encoders",
        default="base",
        choices=["base", "tiny"],
        help="encoders of the paper's way (base = HuBERT-base + BERT-base)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calls", type=int, default=877)
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed (median reported)")
    ap.add_argument("--paper-calls", type=int, default=3, help="calls timed the paper's way")
    ap.add_argument("--batch-calls", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument(
        "--keep", default=None, help="write the cache here and keep it (default: a temp dir)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = SIZES[args.size]
    tmp = Path(tempfile.mkdtemp(prefix="msmtfn-train-bench-"))
    cache = Path(args.keep) if args.keep else tmp / "c.zarr"
    t0 = time.perf_counter()
    if not (cache / "zarr.json").is_file():
        write_synthetic_store(
            cache,
            calls=args.calls,
            segments_per_call=(3, 6),
            seed=0,
            split_fractions=(0.8, 0.1, 0.1),
            audio_frames=spec["audio_frames"],
            audio_dim=spec["audio_dim"],
            text_tokens=spec["text_tokens"],
            text_dim=spec["text_dim"],
        )
        print(f"cache of {args.calls} calls written in {time.perf_counter() - t0:.1f} s")
    cfg = TrainConfig(
        cache=str(cache),
        out=str(tmp / "run"),
        device=args.device,
        epochs=args.epochs,
        patience=args.epochs,
        batch_calls=args.batch_calls,
        progress=False,
        **spec["model"],
    )
    m = fit(cfg)
    ours = m["epoch_seconds"]
    per_call, enc, n_train = paper_way(cache, cfg, args.encoders, device, args.paper_calls)
    paper = per_call * n_train
    segs = CacheStore.open(cache).n
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} torch threads'}), "
        f"size {args.size}, paper-way encoders {args.encoders}: {args.calls} calls / {segs} segments; "
        f"{n_train} training calls, {m['calls']['valid']} validation calls"
    )
    print(
        f"ours: epoch on the cache (training + validation pass), median of {m['epochs_run']}: {ours:9.2f} s"
    )
    print(
        f"paper's way: {per_call:.3f} s per call (encoding {enc:.3f} s; mean of {args.paper_calls} calls) "
        f"x {n_train} training calls = {paper:9.1f} s per epoch (extrapolated; training pass only)"
    )
    print(f"speed-up: {paper / ours:.1f}x")
    if device.type == "cpu":
        print("GPU: python bench/train_throughput.py --size base --device cuda")
    shutil.rmtree(tmp, ignore_errors=True)
