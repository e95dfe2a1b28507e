"""``msmtfn-sweep``: a thin click layer over :func:`train.sweep.run_sweep` and
:func:`train.sweep.report`."""

from __future__ import annotations

import json
import logging
import sys

import click

from pipeline.cli import (
    DefaultCommandGroup,
    cli_errors,
    device_callback,
    field_options,
    parse_key_values,
)

from .config import ConfigError, store_path_problem
from .sweep import SweepOptions


def _parse_set(items: tuple[str, ...]) -> dict:
    """``--set KEY=VALUE`` items (pipeline.cli.parse_value reads each VALUE)."""
    return parse_key_values(items, "--set", example="epochs=20")


@click.group(
    cls=DefaultCommandGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.pass_context
def main(ctx):
    """Train many configurations × seeds on one cache (loaded once) and tabulate them.

    \b
      msmtfn-sweep --cache cache/marketcalls.zarr --grid paper-ablation --seeds 5 --device cuda
      msmtfn-sweep --cache cache/marketcalls.zarr --grid my.toml --resume     # only the missing
      trials
      msmtfn-sweep report runs/sweeps/paper-ablation                          # tables + chart again
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _field(name: str):
    return SweepOptions.__dataclass_fields__[name]


@main.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@field_options(
    SweepOptions,
    skip=("progress",),
    custom={
        "seeds": click.option(
            "--seeds", default=None, type=int, help=_field("seeds").metadata["help"]
        ),
        "device": click.option(
            "--device",
            default=_field("device").default,
            show_default=True,
            help=_field("device").metadata["help"],
            callback=device_callback(allow_auto=True),
        ),
        "overrides": click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help=_field("overrides").metadata["help"],
        ),
    },
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON instead of the table."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
def run_cmd(overrides, as_json, quiet, **kw):
    """Run a sweep (the default command). Exit status 0; 3 when some trial failed (named in
    trials.csv); 1 when every trial failed; 2 for bad usage (a bad grid or space file, --set or
    --seeds value), before anything is written.

    `msmtfn-sweep report SWEEP_DIR` rebuilds a sweep folder's tables and chart."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    from .sweep import run_sweep  # light: reads and checks grids, no torch

    # the grid or space, --set, --seeds and the cache path: checked before torch is imported (one
    # line at once); settings that cannot work: bad usage, exit 2 as in msmtfn-train
    with cli_errors(usage=(ConfigError,)):
        opts = SweepOptions(**kw, overrides=_parse_set(overrides), progress=not quiet)
        _check_options(opts)
    cache, search = opts.cache, opts.search
    problem = store_path_problem(cache)
    if problem:
        raise click.ClickException(problem)
    # torch and the trainer: imported once the options are read (``--help`` answers at once)
    from pipeline.store import StoreError

    from .checkpoint import CheckpointError
    from .data import TrainError

    # sweep.SweepInterrupted carries what is kept and the command that resumes (exit 130)
    if search is not None:
        from .search import run_search

        with cli_errors(user=(TrainError, CheckpointError, StoreError), usage=(ConfigError,)):
            summary = run_search(opts)
        _print_search(summary, as_json)
        return
    with cli_errors(user=(TrainError, CheckpointError, StoreError), usage=(ConfigError,)):
        summary = run_sweep(opts)
    failed = summary.get("failed") or []
    # nothing to compare: an error, not 3
    if failed and not any(r.get("seeds_done") for r in summary["rows"]):
        first = failed[0]
        raise click.ClickException(
            f"every trial failed ({len(failed)}); the first, {first['configuration']} seed {first['seed']}: "
            f"{first['reason'].removeprefix('failed: ')}; each trial's traceback is in its error.txt under "
            f"{summary['sweep']}/trials; fix the cause and run the same command with --resume"
        )
    _print(summary, as_json)
    if failed:
        sys.exit(3)


@main.command("report")
@click.argument("sweep_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def report_cmd(sweep_dir, as_json):
    """Rewrite results.csv, results.md, results.png and best.json (with the link ``best``) of a
    sweep folder from its trials."""
    from .data import TrainError
    from .sweep import report

    try:
        _print(report(sweep_dir), as_json)
    except (TrainError, OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _check_options(opts: SweepOptions) -> None:
    """A grid or a search space, one of them, read and checked whole (ConfigError: one line)."""
    from .sweep import read_grid

    if (opts.grid is None) == (opts.search is None):
        raise ConfigError(
            "give --grid FILE (a grid of trials) or --search FILE (a search), one of them"
        )
    if opts.search is None:
        if opts.scheduler or opts.dask_workers:
            raise ConfigError(
                "--scheduler and --dask-workers spread a --search's trials; a grid runs in threads (--parallel)"
            )
        read_grid(opts.grid, seeds=opts.seeds, overrides=opts.overrides)
        return
    from .search import read_space

    read_space(opts.search, overrides=opts.overrides)
    if opts.trials < 1:
        raise ConfigError(f"--trials {opts.trials}: give 1 or more finished trials")
    if opts.seeds is not None and opts.seeds < 1:
        raise ConfigError(f"--seeds {opts.seeds}: give 1 or more seeds for the best setting")
    if opts.dask_workers < 0 or (opts.scheduler and opts.dask_workers):
        raise ConfigError(
            "--dask-workers N starts a local cluster of N (1 or more) workers, --scheduler joins "
            "a running one: pass one of them"
        )
    if opts.scheduler and "://" not in opts.scheduler:
        raise ConfigError(
            f"--scheduler {opts.scheduler}: give the scheduler's address, e.g. tcp://HOST:8786"
        )


def _print_search(summary: dict, as_json: bool) -> None:
    if as_json:
        _print(summary, True)
        return
    click.echo(summary["markdown"])
    best = summary["best"]
    click.echo(
        f"written: {summary['search']}/results.csv, results.md, best.json, history.png; best by "
        f"validation: {best['run_dir']} ({best['configuration']}, seed {best['seed']}: validation "
        f"{best['metric']} of {best['task']} = {best['value']:.3g}); msmtfn-predict --run "
        f"{summary['search']} uses it"
    )


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps({k: v for k, v in summary.items() if k != "markdown"}, indent=2, default=str)
        )
    else:
        click.echo(summary["markdown"])
        best = summary.get("best")
        click.echo(
            f"written: {summary['sweep']}/results.csv, results.md, results.png, trials.csv"
            + (", best.json" if best else "")
        )
        if best:
            click.echo(
                f"best by validation: {summary['sweep']}/best → {best['run_dir']} ({best['configuration']}, "
                f"seed {best['seed']}: validation {best['metric']} of {best['task']} = {best['value']:.3g}); "
                f"msmtfn-predict --run {summary['sweep']} uses it"
            )


if __name__ == "__main__":
    main()
