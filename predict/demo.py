"""``msmtfn-demo``: the whole pipeline on a generated dataset, offline, in well under a minute on 2 CPU cores.

generate a small MarketCalls-format dataset → build tiny random encoders (unless real ones are given) →
``msmtfn-extract`` into ``cache/demo.zarr`` → ``msmtfn-train`` → the per-task table.

With tiny random encoders this is a smoke run of the machinery, not the paper's models: the numbers say
nothing about MSMT-FN's accuracy.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from extract.run import ExtractConfig, extract
from extract.tiny import build_tiny_encoders
from pipeline.cli import device_option
from train.config import TrainConfig
from train.loop import fit
from train.report import format_summary

SMOKE_NOTE = ("NOTE: tiny encoders with random weights — a smoke run of the pipeline, not the paper's models; "
              "pass --audio-model/--text-model (hub ids or folders) for real features.")


def run_demo(data_dir: Path, cache: Path, runs: Path, *, audio_model: str | None = None,
             text_model: str | None = None, device: str = "cpu", epochs: int = 12, calls: int = 48,
             seed: int = 0, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    tiny = audio_model is None or text_model is None
    if tiny:
        a, t = build_tiny_encoders(cache.parent / "tiny-encoders")
        audio_model, text_model = audio_model or str(a), text_model or str(t)
    res = extract(ExtractConfig(dataset="demo", data_dir=str(data_dir), out=str(cache), audio_model=audio_model,
                                text_model=text_model, device=device, num_workers=0, overwrite=True,
                                seed=seed, dataset_options={"n_calls": calls},
                                # demo transcripts are ~20 tokens: 48 rows instead of 199 keeps the smoke run fast
                                max_text_tokens=48), progress=progress)
    logging.getLogger(__name__).info("extracted %d segments in %.1f s", res.done, res.elapsed)
    # the tiny encoders are 32 wide: size the fusion network to them (real encoders get the paper's sizes)
    sizes = dict(heads=4, ffn=128, head_hidden=64, gru_hidden=32) if tiny else {}
    metrics = fit(TrainConfig(cache=str(cache), out=str(runs), device=device, epochs=epochs, seed=seed,
                              lr=1e-3, batch_calls=8, patience=epochs, progress=progress, **sizes))
    metrics["demo_seconds"] = time.perf_counter() - t0
    return metrics


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", default="data/demo", show_default=True, help="Where the demo dataset is generated.")
@click.option("--cache", default="cache/demo.zarr", show_default=True)
@click.option("--out", default="runs/demo", show_default=True, help="Run folder for the trained model.")
@click.option("--audio-model", default=None, help="Real audio encoder (hub id or folder) instead of the tiny one.")
@click.option("--text-model", default=None, help="Real text encoder instead of the tiny one.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--epochs", default=12, show_default=True)
@click.option("--calls", default=48, show_default=True, help="Calls to generate.")
@click.option("--seed", default=0, show_default=True)
def main(data_dir, cache, out, audio_model, text_model, device, epochs, calls, seed):
    """Run the whole pipeline on a generated demo dataset (no downloads)."""
    device = device_option(device)    # no CUDA here, or --device gpu: one line, exit 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    tiny = audio_model is None or text_model is None
    if tiny:
        click.echo(SMOKE_NOTE)
    metrics = run_demo(Path(data_dir), Path(cache), Path(out), audio_model=audio_model, text_model=text_model,
                       device=device, epochs=epochs, calls=calls, seed=seed)
    click.echo(format_summary(metrics))
    click.echo(f"run folder: {metrics['run_dir']}   cache: {cache}   total {metrics['demo_seconds']:.1f} s")
    if tiny:
        click.echo(SMOKE_NOTE)


if __name__ == "__main__":
    main()
