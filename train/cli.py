"""``msmtfn-train``: a thin click layer over :func:`train.loop.fit`.

Every option is a :class:`TrainConfig` field; ``--config FILE`` (TOML or JSON, keys = option names)
sets any of them, and options given on the command line win over the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from click.core import ParameterSource

from pipeline.cli import (
    cli_errors,
    device_callback,
    field_options,
    options,
    parse_key_values,
)
from pipeline.device import DeviceError, check_device
from pipeline.labels import SCHEMES

from .config import (
    ConfigError,
    TrainConfig,
    default_threads,
    normalise_keys,
    store_path_problem,
)
from .tracking import TrackingOptions


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


# the options that are more than their field: a callback, a second option beside it, repeatable
_CUSTOM = {
    "cache": options(
        click.option("--cache", default=None, help=TrainConfig.help("cache")),
        click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False),
            help="TOML/JSON file whose keys are these options' names.",
        ),
    ),
    "device": click.option(
        "--device",
        default=TrainConfig.default("device"),
        show_default=True,
        help=TrainConfig.help("device"),
        callback=device_callback(),
    ),
    "task": click.option(
        "--task",
        default=TrainConfig.default("task"),
        help=TrainConfig.help("task"),
        callback=lambda ctx, param, v: _task_option(ctx, v),
    ),
    "loss_weights": click.option(
        "--loss-weight",
        "loss_weights",
        multiple=True,
        metavar="TASK=W",
        help=TrainConfig.help("loss_weights"),
    ),
    "augment_variants": click.option(
        "--augment-variants",
        "augment_variants",
        multiple=True,
        metavar="all|NAME",
        help=TrainConfig.help("augment_variants"),
    ),
    "threads": click.option(
        "--threads",
        default=TrainConfig.default("threads"),
        show_default=True,
        help=TrainConfig.help("threads").replace(" (docs", f" (here {default_threads()}; docs"),
    ),
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@field_options(TrainConfig, skip=("progress",), custom=_CUSTOM)
@field_options(TrackingOptions)
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
      msmtfn-train --cache cache/marketcalls.zarr --tracking mlflow      # runs/mlflow.db
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    check_paths(None, resume_dir)  # the run folder, before its config.json is read
    # settings that cannot work: bad usage, exit 2 like click's own usage errors
    tracking = TrackingOptions(
        **{k: opts.pop(k) for k in ("tracking", "tracking_uri", "experiment")}
    )
    with cli_errors(usage=(ConfigError,)):
        cfg = _settings(ctx, config_file, resume_dir, overwrite, quiet, opts)
    if not resume_dir:  # with --resume, the run's own cache is checked by the trainer
        check_paths(cfg.cache, None)  # a wrong path: one line before torch is imported
    # torch and the model: imported once the options are checked (--help and mistakes answer fast)
    from pipeline.store import StoreError

    from .checkpoint import CheckpointError
    from .data import TrainError
    from .loop import fit
    from .report import format_summary

    # Ctrl-C: what is kept and the command that continues (loop.TrainInterrupted), exit 130
    with cli_errors(user=(TrainError, CheckpointError, StoreError), usage=(ConfigError,)):
        metrics = fit(cfg, resume=bool(resume_dir), overwrite=overwrite, tracking=tracking)
    click.echo(json.dumps(metrics, indent=2, default=str) if as_json else format_summary(metrics))


def _settings(ctx, config_file, resume_dir, overwrite, quiet, opts) -> TrainConfig:
    """The run's settings from the command line, ``--config`` and (``--resume``) the run's own, each
    value checked where it was written; raises ConfigError naming the command line or the file."""
    weights = parse_key_values(
        opts.pop("loss_weights"), "--loss-weight", example="2=0.5", number=True
    )
    weights = {task: float(w) for task, w in weights.items()}
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
