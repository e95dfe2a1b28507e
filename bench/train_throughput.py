"""Epoch time of msmtfn-train on a cache vs the paper's way (frozen encoders run inside every training step,
one call per step), on the same calls. Prints both and the ratio (record them in docs/benchmarks.md).

    python bench/train_throughput.py                          # CPU: tiny dims, tiny encoders
    python bench/train_throughput.py --size base --device cuda

The cache is MarketCalls-sized (877 calls, 3–6 segments each, random values in the right shapes; ``--size base``
= 999×768 audio and 199×768 text per segment, ~7 GB). The paper's way is timed on ``--paper-calls`` calls and
extrapolated to the training split (said in the output): per call, HuBERT and BERT (built from their configs
with random weights: same cost as the real ones) encode every segment (40 s of 16 kHz audio; 199 tokens),
then the fusion model does one forward/backward/step.
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
from pipeline.synthetic import write_synthetic_store  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import Batch, CallData  # noqa: E402
from train.loop import _forward, _loss, fit  # noqa: E402
from train.model import ModelDims, build_model  # noqa: E402

SIZES = {
    "tiny": dict(audio_frames=999, audio_dim=32, text_tokens=199, text_dim=32,
                 model=dict(heads=4, ffn=128, head_hidden=64, gru_hidden=32)),
    "base": dict(audio_frames=999, audio_dim=768, text_tokens=199, text_dim=768, model={}),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paper_way(store_path: Path, cfg: TrainConfig, size: str, device: torch.device, n_calls: int) -> tuple[float, int]:
    """Seconds per call with the encoders inside the step (batch of one call)."""
    from transformers import BertConfig, BertModel, HubertConfig, HubertModel

    if size == "base":
        hub, bert = HubertModel(HubertConfig()), BertModel(BertConfig(vocab_size=21128))
    else:
        hub = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                                       num_conv_pos_embedding_groups=4))
        bert = BertModel(BertConfig(vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64))
    hub, bert = hub.eval().to(device), bert.eval().to(device)
    data = CallData(CacheStore.open(store_path))
    dims = ModelDims(data.audio_dim, data.text_dim, data.text_tokens, {t.name: t.num_classes for t in data.scheme.tasks})
    model = build_model(cfg, dims).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    calls = data.indices("train")[:n_calls]
    times = []
    for k, c in enumerate([calls[0]] + calls):          # the first call warms up
        n = len(data.rows[c])
        sync(device)
        t0 = time.perf_counter()
        audio, text = [], []
        with torch.no_grad():
            for _ in range(n):
                wav = torch.randn(1, 640000, device=device)              # 40 s at 16 kHz
                h = hub(wav).last_hidden_state[0]
                audio.append(h[: h.shape[0] // 2 * 2].reshape(-1, 2, h.shape[1]).mean(1)[: data.audio_frames])
                ids = torch.randint(100, 20000, (1, data.text_tokens), device=device)
                text.append(bert(input_ids=ids).last_hidden_state[0])
        a, t = torch.stack(audio), torch.stack(text)
        alen = torch.full((n,), a.shape[1], device=device)
        tlen = torch.full((n,), t.shape[1], device=device)
        batch = Batch(a, alen, t, tlen, torch.tensor([n], device=device),
                      {k2: v[[c]].to(device) for k2, v in data.labels.items()}, [c])
        logits = _forward(model, batch, device, cfg.amp and device.type == "cuda")
        _loss(logits, batch.labels, {t2: 1.0 for t2 in logits}).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if k:
            times.append(time.perf_counter() - t0)
    return float(np.mean(times)), len(data.indices("train"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calls", type=int, default=877)
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed (median reported)")
    ap.add_argument("--paper-calls", type=int, default=3, help="calls timed the paper's way")
    ap.add_argument("--batch-calls", type=int, default=8)
    args = ap.parse_args()
    device = torch.device(args.device)
    spec = SIZES[args.size]
    tmp = Path(tempfile.mkdtemp(prefix="msmtfn-train-bench-"))
    t0 = time.perf_counter()
    write_synthetic_store(tmp / "c.zarr", n_calls=args.calls, segments=(3, 6), seed=0,
                          split_fractions=(0.8, 0.1, 0.1), audio_frames=spec["audio_frames"],
                          audio_dim=spec["audio_dim"], text_tokens=spec["text_tokens"], text_dim=spec["text_dim"])
    print(f"cache of {args.calls} calls written in {time.perf_counter() - t0:.1f} s")
    cfg = TrainConfig(cache=str(tmp / "c.zarr"), out=str(tmp / "run"), device=args.device, epochs=args.epochs,
                      patience=args.epochs, batch_calls=args.batch_calls, progress=False, **spec["model"])
    m = fit(cfg)
    ours = m["epoch_seconds"]
    per_call, n_train = paper_way(tmp / "c.zarr", cfg, args.size, device, args.paper_calls)
    paper = per_call * n_train
    print(f"device {device}, size {args.size}: {n_train} training calls, "
          f"{m['calls']['valid']} validation calls; torch threads {torch.get_num_threads()}")
    print(f"ours: epoch on the cache (train + validation pass), median of {m['epochs_run']}: {ours:8.2f} s")
    print(f"paper's way: {per_call:.3f} s per call (mean of {args.paper_calls}) x {n_train} calls = {paper:8.1f} s "
          "per epoch (extrapolated; training pass only)")
    print(f"speed-up: {paper / ours:.1f}x")
    shutil.rmtree(tmp, ignore_errors=True)
