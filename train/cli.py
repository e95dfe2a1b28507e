"""``msmtfn-train``: a thin click layer over :func:`train.loop.fit`.

Every option is a :class:`TrainConfig` field; ``--config FILE`` (TOML or JSON, keys = option names)
sets any of them, and options given on the command line win over the file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from pipeline.cli import UsageError, device_callback
from pipeline.device import DeviceError, check_device
from pipeline.labels import SCHEMES

from .config import (
    MODALITIES,
    POOLINGS,
    ConfigError,
    TrainConfig,
    default_threads,
    normalise_keys,
    store_path_problem,
)

D = TrainConfig.__dataclass_fields__


def _check_task(value, cache=None):
    """A task neither a built-in label scheme nor the cache's own (a custom ``--label-scheme``) has
    is bad usage (exit 2); one that this cache's scheme lacks but another dataset's has is named by
    fit."""
    known = {t for s in SCHEMES.values() for t in s.task_names}
    if not value or str(value) in known:
        return value
    scheme = _cache_scheme(cache)
    if scheme is not None and str(value) in scheme.task_names:
        return value
    own = (
        f"{cache}'s label scheme {scheme.name}: {', '.join(scheme.task_names)}; "
        if scheme is not None
        else ""
    )
    raise click.BadParameter(
        f"{value!r} is no dataset's task; {own}"
        + "; ".join(f"{s.name}: {', '.join(s.task_names)}" for s in SCHEMES.values()),
        param_hint="'--task'",
    )


def _task_option(ctx, value):
    """``--task`` at parse time: checked against the built-in schemes and, once ``--cache`` is read,
    the cache's own; typed before ``--cache``, an unknown name waits for the check after all options
    are read."""
    known = {t for s in SCHEMES.values() for t in s.task_names}
    if value and str(value) not in known and "cache" not in ctx.params:
        return value
    return _check_task(value, ctx.params.get("cache"))


def _cache_scheme(cache):
    """The label scheme of a local cache store, or None (no cache given yet, a remote or unreadable
    one: fit names those)."""
    if not cache or "://" in str(cache) or not Path(cache).is_dir():
        return None
    from pipeline.store import CacheStore, StoreError

    try:
        return CacheStore.open(cache).scheme
    except (StoreError, KeyError, ValueError, OSError):
        return None


def _default(name):
    return D[name].default


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cache",
    default=None,
    help="Cache store made by msmtfn-extract (required here or in --config).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML/JSON file whose keys are these options' names.",
)
@click.option(
    "--out", default=None, help="Run folder (default runs/<dataset>/<time>-<flags>-s<seed>)."
)
@click.option(
    "--device",
    default=_default("device"),
    show_default=True,
    help="auto | cpu | cuda | cuda:N",
    callback=device_callback(),
)
@click.option("--seed", default=_default("seed"), show_default=True)
@click.option("--epochs", default=_default("epochs"), show_default=True)
@click.option(
    "--patience",
    default=_default("patience"),
    show_default=True,
    help="Stop after this many epochs without a better validation score.",
)
@click.option(
    "--lr", default=_default("lr"), show_default=True, help="AdamW learning rate (paper: 1e-5)."
)
@click.option("--weight-decay", default=_default("weight_decay"), show_default=True)
@click.option(
    "--warmup", default=_default("warmup"), show_default=True, help="Warm-up fraction of all steps."
)
@click.option(
    "--batch-calls", default=_default("batch_calls"), show_default=True, help="Calls per step."
)
@click.option(
    "--grad-accum", default=_default("grad_accum"), show_default=True, help="Steps accumulated."
)
@click.option("--clip-norm", default=_default("clip_norm"), show_default=True)
@click.option(
    "--amp/--no-amp", default=_default("amp"), show_default=True, help="bf16 autocast on CUDA."
)
@click.option(
    "--task",
    default=_default("task"),
    show_default=False,
    help="Task that selects the checkpoint and is reported first: 5|4|3|2 for MarketCalls, "
    "score|2|5|7 for CMU-MOSI/MOSEI, emotion|sentiment for MELD (default: the first).",
    callback=lambda ctx, param, v: _task_option(ctx, v),
)
@click.option(
    "--modality", type=click.Choice(MODALITIES), default=_default("modality"), show_default=True
)
@click.option(
    "--mtl/--no-mtl", default=True, show_default=True, help="--no-mtl: only the --task head trains."
)
@click.option(
    "--bigru/--no-bigru",
    default=True,
    show_default=True,
    help="--no-bigru: segment vectors are mean-pooled over the call.",
)
@click.option(
    "--cross-attention/--no-cross-attention",
    default=True,
    show_default=True,
    help="--no-cross-attention: the second branch is the audio itself (no text queries).",
)
@click.option(
    "--bottleneck/--no-bottleneck",
    default=True,
    show_default=True,
    help="--no-bottleneck: the pooled text and second branches are joined directly.",
)
@click.option(
    "--d-model", default=_default("d_model"), show_default=True, help="0 = text encoder width."
)
@click.option("--heads", default=_default("heads"), show_default=True)
@click.option(
    "--ffn", default=_default("ffn"), show_default=True, help="FFN width; 0 = 4 x d_model."
)
@click.option(
    "--dropout", default=_default("dropout"), show_default=True, help="Residual/FFN/head dropout."
)
@click.option(
    "--attn-dropout",
    default=_default("attn_dropout"),
    show_default=True,
    help="Dropout on attention weights (slow on CPU).",
)
@click.option(
    "--cross-layers",
    default=_default("cross_layers"),
    show_default=True,
    help="Chained layers of the cross-modal branch (cross-attention to audio, self-attention, FFN).",
)
@click.option(
    "--audio-stride",
    default=_default("audio_stride"),
    show_default=True,
    help="Audio frames stacked side by side into one row before the model reads them: 4 makes HuBERT's "
    "20 ms frames 80 ms rows and the attention over audio ~4x cheaper (1 = every frame, the paper's; "
    "docs/model.md has its measured cost).",
)
@click.option(
    "--text-branch-layers",
    default=_default("text_branch_layers"),
    show_default=True,
    help="Self-attention layers of the text branch (the backbone the heads read).",
)
@click.option(
    "--bottleneck-tokens",
    default=_default("bottleneck_tokens"),
    show_default=True,
    help="Learned tokens B through which the branches exchange.",
)
@click.option(
    "--bottleneck-layers",
    default=_default("bottleneck_layers"),
    show_default=True,
    help="Bottleneck fusion layers (each branch attends over [its tokens; B]).",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    default=_default("pooling"),
    show_default=True,
    help="Segment vector: flatten (paper), CLS or mean.",
)
@click.option("--gru-hidden", default=_default("gru_hidden"), show_default=True)
@click.option("--gru-layers", default=_default("gru_layers"), show_default=True)
@click.option("--head-hidden", default=_default("head_hidden"), show_default=True)
@click.option(
    "--loss-weight",
    "loss_weights",
    multiple=True,
    metavar="TASK=W",
    help="Weight of a task's loss (repeatable; default 1 each).",
)
@click.option(
    "--augment-variants",
    "augment_variants",
    multiple=True,
    metavar="all|NAME",
    help="Cached augmentation variants to sample for training calls (repeatable or comma-separated; "
    "default none). Validation and test always use the original recordings.",
)
@click.option(
    "--max-cache-gb",
    default=_default("max_cache_gb"),
    show_default=True,
    help="Features kept on the device at most (0 = auto); beyond it they stream from the store.",
)
@click.option(
    "--plots/--no-plots", default=True, show_default=True, help="PNG plots in <run>/plots."
)
@click.option(
    "--threads",
    default=_default("threads"),
    show_default=True,
    help=f"CPU threads for torch; 0 = by core count: 1 up to 2 cores, else half the cores, at most 8 "
    f"(here {default_threads()}; docs/benchmarks.md).",
)
@click.option(
    "--state-every",
    default=_default("state_every"),
    show_default=True,
    help="Epochs between resumable training states (model + optimizer + RNGs); 0 = none.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="RUN_DIR",
    help="Continue this run folder from its last finished epoch, with its own settings (same result "
    "as an uninterrupted run on CPU); a finished run is only reported.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Train into an --out folder that holds a run already, replacing it (without it: refused).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the metrics as JSON instead of the table."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-epoch log lines.")
@click.pass_context
def main(ctx, config_file, resume_dir, overwrite, as_json, quiet, **opts):
    """Train MSMT-FN on a cache made by msmtfn-extract.

    \b
      msmtfn-train --cache cache/marketcalls.zarr --device cuda
      msmtfn-train --cache cache/marketcalls.zarr --modality text --no-bigru --seed 3 --out
      runs/ablation-1
      msmtfn-train --config my-run.toml --seed 2
      msmtfn-train --resume runs/marketcalls/20261125-101500-both-s0     # after a crash or Ctrl-C
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    check_paths(None, resume_dir)  # the run folder, before its config.json is read
    try:
        cfg = _settings(ctx, config_file, resume_dir, overwrite, quiet, opts)
    # settings that cannot work: bad usage, exit 2 like click's own usage errors
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not resume_dir:  # with --resume, the run's own cache is checked by the trainer
        check_paths(cfg.cache, None)  # a wrong path: one line before torch is imported
    # torch and the model: imported once the options are checked (``--help`` and mistakes answer at
    # once)
    from .checkpoint import CheckpointError
    from .data import TrainError
    from .loop import fit
    from .report import format_summary

    try:
        metrics = fit(cfg, resume=bool(resume_dir), overwrite=overwrite)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except (TrainError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    # Ctrl-C: what is kept and the command that continues (loop.TrainInterrupted)
    except KeyboardInterrupt as e:
        click.echo(str(e) or "interrupted", err=True)
        sys.exit(130)  # as msmtfn-extract: 128 + SIGINT
    click.echo(json.dumps(metrics, indent=2, default=str) if as_json else format_summary(metrics))


def _settings(ctx, config_file, resume_dir, overwrite, quiet, opts) -> TrainConfig:
    """The run's settings from the command line, ``--config`` and (``--resume``) the run's own, each
    value checked where it was written; raises ConfigError naming the command line or the file."""
    weights = {}
    for item in opts.pop("loss_weights"):
        task, _, w = item.partition("=")
        try:
            weights[task.strip()] = float(w)
        except ValueError:
            raise ConfigError(f"--loss-weight {item!r}: expected TASK=NUMBER, e.g. 2=0.5") from None
    given = {
        k: v for k, v in opts.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE
    }
    if weights:
        given["loss_weights"] = weights
    if not opts["augment_variants"]:
        opts.pop("augment_variants")
    base = TrainConfig.read_file(config_file) if config_file else {}
    if resume_dir:  # the run's own settings; options given here must agree (checked by fit)
        from .checkpoint import read_run_config

        base = {**read_run_config(resume_dir).get("train", {}), "out": resume_dir}
    merged = {**{k: v for k, v in opts.items() if v is not None}, **normalise_keys(base), **given}
    if not merged.get("cache"):
        raise ConfigError("--cache is required (on the command line or in --config)")
    merged["progress"] = not quiet
    source = config_file or (f"{resume_dir}/config.json" if resume_dir else "options")
    # each value is checked where it was written, so an error names the command line or the file it
    # came from
    TrainConfig.from_dict({**given, "cache": "-"}, source="the command line")
    if base:
        TrainConfig.from_dict({**base, "cache": "-"}, source=source)
    cfg = TrainConfig.from_dict(merged, source=source)
    # a device or task from a config file gets the command line's checks (exit 2), naming the file
    try:
        check_device(cfg.device)
        _check_task(cfg.task, cfg.cache)
    except (DeviceError, click.BadParameter) as e:
        raise ConfigError(
            f"{source}: {e.message if isinstance(e, click.BadParameter) else e}"
        ) from None
    if resume_dir and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    return cfg


def check_paths(cache: str | None, resume_dir: str | None) -> None:
    """Paths the command line names, checked before torch is imported (seconds on a small machine):
    a missing store or run folder is one line, exit status 1, as the trainer itself would say."""
    if resume_dir:
        if not Path(resume_dir).is_dir():
            raise click.ClickException(f"--resume {resume_dir}: no such run folder")
        if not (Path(resume_dir) / "config.json").is_file():
            raise click.ClickException(
                f"--resume {resume_dir}: not a msmtfn-train run folder (no config.json)"
            )
    if isinstance(cache, str) and cache:
        problem = store_path_problem(cache)
        if problem:
            raise click.ClickException(problem)


if __name__ == "__main__":
    main()
