"""``msmtfn-demo``: the whole pipeline on a generated dataset, offline, on 2 CPU cores in about a
minute.

generate a MarketCalls-format dataset whose labels need both a text cue and a voice cue → build tiny
random encoders (unless real ones are given) → ``msmtfn-extract`` into ``cache/demo.zarr`` → train
three models on that one cache: fused (``--modality both``), text only and audio only → a three-row
table. Fusion must win: text alone can tell positive words from refusals but not A from B, the voice
alone the reverse (pipeline/datasets/demo.py).

A second run reuses the generated data, the encoders, the cache and finished runs; ``--fresh``
rebuilds them. With tiny random encoders the numbers say nothing about the paper's models on real
calls.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import click

from pipeline.cli import UsageError, device_option
from pipeline.device import DEVICE_HELP

log = logging.getLogger(__name__)
SMOKE_NOTE = (
    "NOTE: tiny encoders with random weights — the method working on a generated task, not the paper's "
    "models on real calls; pass --audio-model/--text-model (hub ids or folders) for real features."
)
MODALITIES = ("both", "text", "audio")
MODEL_NAMES = {"both": "fused", "text": "text only", "audio": "audio only"}
DEMO_CALLS, DEMO_EPOCHS = 200, 20
# the tiny encoders are 32 wide: the fusion network sized to them (real encoders get the paper's
# sizes)
TINY_SIZES = dict(
    heads=4, ffn=128, head_hidden=64, gru_hidden=32, cross_layers=2, dropout=0.1, lr=3e-3
)
# the demo's tiny models warm up over 20 % of the steps, not the default 5 % (9 of ~300 steps at lr
# 3e-3): the exchange through the bottleneck suffers from large early steps. 10 seeds of the demo:
# fused test accuracy +6.5 points [+0.5, +12.5], fused ≥ 20 points over each modality in 9 of 10
# seeds instead of 6 (docs/model.md)
DEMO_WARMUP = 0.2


class DemoError(ValueError):
    """Settings the demo cannot run with, or a path it will not touch (not the demo's own): one
    line; the CLI exits 2. Raised before anything is written or deleted."""


def _has_files(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))


def _store_dataset(cache: Path) -> str | None:
    """The dataset a local store was extracted from (the attribute ``msmtfn-extract info`` shows);
    "" for a store whose creation was cut short (no data in it yet); None when ``cache`` is no store
    we can read."""
    from pipeline.store import CacheStore, StoreError, creation_cut_short

    if not (cache / "zarr.json").is_file():
        return None
    if creation_cut_short(cache):
        return ""
    try:
        store = CacheStore.open(cache)
    except StoreError:
        return None
    return store.dataset or store.settings.get("dataset") or "unknown"


def _demo_data_files(data_dir: Path) -> list[Path] | None:
    """The files the demo generator wrote into ``data_dir`` (its demo.json lists them), or None when
    demo.json is missing or not the generator's: then the folder is someone else's data."""
    meta_path = data_dir / "demo.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != "msmtfn demo":
        return None
    audio = [data_dir / "audio" / Path(str(name)).name for name in meta.get("audio", [])]
    return [*(data_dir / f"{split}.csv" for split in ("train", "valid", "test")), *audio, meta_path]


def _is_demo_run(run_dir: Path) -> bool:
    """A run folder the demo may delete: nothing in it yet, or a run trained on a demo store."""
    if not _has_files(run_dir):
        return True
    try:
        meta = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        return meta["cache"]["settings"].get("dataset") == "demo"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def check_demo(
    data_dir: Path,
    cache: Path,
    runs: Path,
    *,
    calls: int = DEMO_CALLS,
    epochs: int = DEMO_EPOCHS,
    fresh: bool = False,
) -> None:
    """Everything the demo can refuse, checked before any work: --calls, --epochs, and that the
    cache, the run folders it may rebuild and (with ``fresh``) the data it deletes are the demo's
    own. :class:`DemoError`."""
    from pipeline.datasets.demo import MIN_CALLS

    if calls < MIN_CALLS:
        raise DemoError(
            f"--calls {calls}: the demo needs at least {MIN_CALLS} calls (three rounds of the five "
            f"labels, so that train, valid and test each hold every label); pass --calls {MIN_CALLS} "
            "or more"
        )
    if epochs < 1:
        raise DemoError(f"--epochs {epochs}: train for at least 1 epoch (default {DEMO_EPOCHS})")
    # a rebuild (other --calls/--seed, --fresh) deletes the store: only ever the demo's own
    if cache.exists():
        dataset = _store_dataset(cache)
        if dataset is None and _has_files(cache):
            raise DemoError(
                f"--cache {cache}: exists and is not a cache store the demo can read; the demo will not "
                "write over it: pass another --cache (default cache/demo.zarr)"
            )
        if dataset not in (None, "", "demo"):
            raise DemoError(
                f"--cache {cache}: holds a {dataset!r} store, not the demo's; the demo rebuilds its "
                "cache when settings change and would replace it: pass another --cache (default "
                "cache/demo.zarr)"
            )
    for modality in MODALITIES:  # the only folders under --out the demo writes, retrains or deletes
        if not _is_demo_run(runs / modality):
            raise DemoError(
                f"--out {runs}: {runs / modality} holds files that are not a demo run; the demo "
                "would retrain over it: pass another --out (default runs/demo)"
            )
    from .config import PredictError
    from .explain import check_report_dir

    try:
        check_report_dir(runs / "report")
    except PredictError as e:
        raise DemoError(f"--out {runs}: {e}") from None
    if fresh and data_dir.exists() and _demo_data_files(data_dir) is None and _has_files(data_dir):
        raise DemoError(
            f"--data-dir {data_dir}: holds files that are not the demo's generated data (no demo.json "
            "of the generator); --fresh would delete them: pass another --data-dir (default data/demo)"
        )


def _remove_demo_runs(runs: Path) -> None:
    """OUT/both, OUT/text, OUT/audio only: other folders under --out are the user's (check_demo
    vetted these)."""
    for modality in MODALITIES:
        shutil.rmtree(runs / modality, ignore_errors=True)


def _remove_demo_data(data_dir: Path) -> None:
    """The generated files only (check_demo vetted the folder); the folders too once nothing else is
    in them."""
    for path in _demo_data_files(data_dir) or []:
        path.unlink(missing_ok=True)
    for folder in (data_dir / "audio", data_dir):
        try:
            folder.rmdir()
        except OSError:  # absent, or holds files that are not the demo's: they stay
            pass


def _train_configs(
    cache: Path, runs: Path, *, device: str, epochs: int, seed: int, tiny: bool, progress: bool
) -> dict:
    from train.config import ConfigError, TrainConfig

    sizes = {**TINY_SIZES, "warmup": DEMO_WARMUP} if tiny else {}
    try:
        return {
            m: TrainConfig(
                cache=str(cache),
                out=str(runs / m),
                device=device,
                epochs=epochs,
                seed=seed,
                patience=epochs,
                batch_calls=8,
                modality=m,
                progress=progress,
                threads=1,
                **sizes,
            )
            for m in MODALITIES
        }
    except ConfigError as e:
        raise DemoError(str(e)) from None


def run_demo(
    data_dir: Path,
    cache: Path,
    runs: Path,
    *,
    audio_model: str | None = None,
    text_model: str | None = None,
    device: str = "auto",
    epochs: int = DEMO_EPOCHS,
    calls: int = DEMO_CALLS,
    seed: int = 0,
    fresh: bool = False,
    progress: bool = True,
    say=log.info,
) -> dict:
    """{"both": metrics, "text": metrics, "audio": metrics, ...}: each as in its run's metrics.json.
    :class:`DemoError` (before anything is written or deleted) for bad settings or paths that are
    not the demo's. ``say`` gets one line before each model: ``training 2/3: text only →
    runs/demo/text``."""
    data_dir, cache, runs = Path(data_dir), Path(cache), Path(runs)
    check_demo(data_dir, cache, runs, calls=calls, epochs=epochs, fresh=fresh)
    tiny = audio_model is None or text_model is None
    configs = _train_configs(
        cache, runs, device=device, epochs=epochs, seed=seed, tiny=tiny, progress=progress
    )
    # torch, transformers and both stages are imported in the steps, not at import
    # (``msmtfn-demo --help`` stays fast)
    t0 = time.perf_counter()
    if fresh:  # only what the demo made (check_demo refused anything else)
        _remove_demo_data(data_dir)
        shutil.rmtree(cache, ignore_errors=True)
        _remove_demo_runs(runs)
    if tiny:
        from extract import build_tiny_encoders

        a, t = build_tiny_encoders(cache.parent / "tiny-encoders")
        audio_model, text_model = audio_model or str(a), text_model or str(t)
    _extract_demo(data_dir, cache, runs, audio_model, text_model, device, calls, seed, progress)
    out = _train_demo_models(cache, configs, say)
    out["report"], out["report_call"] = _demo_report(cache, runs, out, device, say)
    out["demo_seconds"] = time.perf_counter() - t0
    out["cache"] = str(cache)
    return out


def _demo_report(cache: Path, runs: Path, result: dict, device: str, say) -> tuple[str, str]:
    """The fused model's test calls explained (msmtfn-predict --explain): (index.html, the page of
    the call whose top segment moves it most)."""
    from pipeline.device import resolve_device

    from .explain import explain_cache

    device = str(resolve_device(device))
    say(f"explaining the fused model's test calls → {runs / 'report'}")
    # the demo's calls are short: the words and audio stretches of each call's top segment too
    _, _, report = explain_cache(
        result["both"]["run_dir"], str(cache), "test", device, explain=str(runs / "report"),
        segments=1,
    )  # fmt: skip
    return str(report.index_path), str(report.most_telling_page() or "")


def _extract_demo(data_dir, cache, runs, audio_model, text_model, device, calls, seed, progress):
    """The demo's cache; an unchanged second run finds every segment done (the store's resume)."""
    from extract import ExtractConfig, extract
    from pipeline.store import FingerprintMismatch

    ecfg = ExtractConfig(
        dataset="demo",
        data_dir=str(data_dir),
        out=str(cache),
        audio_model=audio_model,
        text_model=text_model,
        device=device,
        num_workers=0,
        seed=seed,
        dataset_options={"n_calls": calls},
        # demo transcripts are ~20 tokens: 48 rows instead of 199 keeps the run fast
        max_text_tokens=48,
    )
    try:
        res = extract(ecfg, progress=progress)
    except FingerprintMismatch:
        # the demo's own cache (check_demo), built for other --calls/--seed/encoders: rebuild it
        # and the runs
        log.warning("%s was built with other demo settings: rebuilding it and retraining", cache)
        _remove_demo_runs(runs)
        res = extract(replace(ecfg, overwrite=True), progress=progress)
    log.info("extracted %d segments in %.1f s", res.done, res.elapsed)


def _train_demo_models(cache: Path, configs: dict, say) -> dict:
    """Each demo model trained, or reported where a finished run has these settings."""
    from train.data import open_cache
    from train.loop import fit, resume_problem

    store = open_cache(str(cache))
    out: dict = {}
    for k, (modality, cfg) in enumerate(configs.items(), 1):
        problem = resume_problem(cfg, store)
        done = not problem and (Path(cfg.out) / "metrics.json").is_file()
        say(
            f"{'model' if done else 'training'} {k}/{len(configs)}: {MODEL_NAMES[modality]} → "
            f"{cfg.out}" + (" (finished earlier: reported)" if done else "")
        )
        if problem:
            # a run of the demo's own with other settings (--epochs, ...): replaced only once the
            # new run passed its start checks (a model that cannot be built keeps the old run)
            log.warning("%s: retraining (%s)", cfg.out, problem.split(": ", 1)[-1])
            out[modality] = fit(cfg, overwrite=True)
        else:  # a finished run with these settings is reported, not retrained
            out[modality] = fit(cfg, resume=True)
    return out


def format_demo_table(result: dict) -> str:
    def pct(m, task, key="accuracy"):
        return f"{100 * m[task][key]:.1f}" if task in m else "–"

    def ci(m, task):
        c = m.get(task, {}).get("ci95", {}).get("accuracy")
        return f"[{100 * c[0]:.0f}, {100 * c[1]:.0f}]" if c else ""

    head = f"{'model':<12}{'test acc5':>11}{'95% CI':>12}{'test mF1-5':>12}{'test acc2':>11}{'val acc5':>10}  run folder"
    lines = [head, "-" * len(head)]
    for modality in MODALITIES:
        m = result[modality]
        name = MODEL_NAMES[modality]
        lines.append(
            f"{name:<12}{pct(m['test'], '5'):>11}{ci(m['test'], '5'):>12}"
            f"{pct(m['test'], '5', 'macro_f1'):>12}{pct(m['test'], '2'):>11}{pct(m['val'], '5'):>10}  "
            f"{m['run_dir']}"
        )
    both, text, audio = (100 * result[k]["test"]["5"]["accuracy"] for k in MODALITIES)
    lines.append(
        f"fused − best single modality: {both - max(text, audio):+.1f} points of test 5-class accuracy "
        f"({result['both']['calls']['test']} test calls)"
    )
    lines.append(
        "acc5 = 5-class accuracy (A–E), mF1-5 = 5-class macro-F1 (every class weighs alike), acc2 = "
        "A+B+C vs D+E; 95% CI = bootstrap interval over test calls"
    )
    lines.append(
        "each run folder holds metrics.json (every task, validation and test), history.csv and plots/ "
        "(learning curves, confusion matrices)"
    )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    default="data/demo",
    show_default=True,
    help="Where the demo dataset is generated.",
)
@click.option(
    "--cache",
    default="cache/demo.zarr",
    show_default=True,
    help="The cache; tiny encoders are saved beside it in tiny-encoders/.",
)
@click.option(
    "--out",
    default="runs/demo",
    show_default=True,
    help="Run folders: OUT/both, OUT/text, OUT/audio.",
)
@click.option(
    "--audio-model",
    default=None,
    help="Real audio encoder (hub id or folder) instead of the tiny one.",
)
@click.option("--text-model", default=None, help="Real text encoder instead of the tiny one.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--epochs", default=DEMO_EPOCHS, show_default=True)
@click.option("--calls", default=DEMO_CALLS, show_default=True, help="Calls to generate.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--fresh",
    is_flag=True,
    help="Regenerate the data and rebuild the cache and OUT/both|text|audio (only what the demo made).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"both": metrics, "text": ..., "audio": ...} as JSON.',
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def main(
    data_dir,
    cache,
    out,
    audio_model,
    text_model,
    device,
    epochs,
    calls,
    seed,
    fresh,
    as_json,
    quiet,
):
    """Run the whole pipeline on a generated demo dataset (no downloads): fused vs text-only vs
    audio-only."""
    device = device_option(device)  # no CUDA here, or --device gpu: one line, exit 2
    try:  # before the note and any import: a refusal is the only line printed
        check_demo(Path(data_dir), Path(cache), Path(out), calls=calls, epochs=epochs, fresh=fresh)
    except DemoError as e:
        raise UsageError(str(e)) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from transformers.utils import logging as hf_logging

    # "Loading weights" / "Writing model shards" say nothing to a newcomer
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tiny = audio_model is None or text_model is None
    if tiny and not as_json:
        click.echo(SMOKE_NOTE)
    from train.checkpoint import CheckpointError
    from train.config import ConfigError
    from train.data import TrainError

    try:
        result = run_demo(
            Path(data_dir),
            Path(cache),
            Path(out),
            audio_model=audio_model,
            text_model=text_model,
            device=device,
            epochs=epochs,
            calls=calls,
            seed=seed,
            fresh=fresh,
            progress=not (quiet or as_json),
            say=log.info if as_json else click.echo,
        )
    except DemoError as e:
        raise UsageError(str(e)) from None
    except ConfigError as e:  # e.g. encoders 32 wide given as real ones, with the paper's 12 heads
        raise UsageError(
            f"{e} (with --audio-model/--text-model the demo trains the paper's sizes, for 768-wide "
            "encoders)"
        ) from None
    except (TrainError, CheckpointError) as e:
        raise click.ClickException(f"{e} (msmtfn-demo --fresh rebuilds the demo)") from None
    if as_json:
        click.echo(json.dumps({k: result[k] for k in MODALITIES}, indent=2, default=str))
        return
    click.echo(format_demo_table(result))
    click.echo(
        f"why each test call scored so: {result['report']} (e.g. {result['report_call']}; "
        "open it in a browser, it works offline)"
    )
    click.echo(f"cache: {cache}   total {result['demo_seconds']:.1f} s")


if __name__ == "__main__":
    main()
