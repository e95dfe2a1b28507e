"""``msmtfn-sweep``: a thin click layer over :func:`train.sweep.run_sweep` and
:func:`train.sweep.report`."""

from __future__ import annotations

import json
import logging
import sys

import click

from pipeline.cli import DefaultCommandGroup, UsageError, device_callback

from .config import ConfigError, store_path_problem

# a command line's words are strings: these are booleans there (json.loads knows only lower-case
# true/false)
BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}


def _number(raw: str):
    """A number as the command line's own options read it (``--lr .001``), else the text itself."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _parse_set(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. epochs=20")
        if raw.strip().lower() in BOOLEANS:
            out[key.strip()] = BOOLEANS[raw.strip().lower()]
            continue
        try:
            # numbers and lists: lr=1e-4, augment_variants=["noise"]
            out[key.strip()] = json.loads(raw)
        except ValueError:
            # .001, 020 (not JSON), or a plain string such as modality=text
            out[key.strip()] = _number(raw)
    return out


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


@main.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache", required=True, help="Cache store made by msmtfn-extract.")
@click.option(
    "--grid", required=True, help="Grid TOML file, or a preset: paper-ablation, bottleneck-lr."
)
@click.option(
    "--seeds",
    default=None,
    type=int,
    help="Seeds 0..N-1 for every configuration (default: the grid's).",
)
@click.option("--out", default=None, help="Sweep folder (default runs/sweeps/<grid name>).")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto | cpu | cuda | cuda:N",
    callback=device_callback(allow_auto=True),
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a sweep: finished trials are kept, interrupted ones continue.",
)
@click.option(
    "--parallel",
    default=1,
    show_default=True,
    help="Trials trained at once in threads on the one loaded cache (see docs/benchmarks.md).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a training setting in every trial (repeatable), e.g. --set epochs=20; "
    "true/false/yes/no (any case) are booleans: --set bigru=False.",
)
@click.option(
    "--max-cache-gb", default=0.0, show_default=True, help="Features kept on the device (0 = auto)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON instead of the table."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
def run_cmd(
    cache, grid, seeds, out, device, resume, parallel, overrides, max_cache_gb, as_json, quiet
):
    """Run a sweep (the default command). Exit status 0; 3 when some trial failed (named in
    trials.csv); 1 when every trial failed; 2 for bad usage (a bad grid file, --set or --seeds
    value), before anything is written.

    `msmtfn-sweep report SWEEP_DIR` rebuilds a sweep folder's tables and chart."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    from .sweep import SweepOptions, read_grid, run_sweep  # light: reads and checks grids, no torch

    # the grid, --set, --seeds and the cache path: checked before torch is imported (one line at
    # once)
    try:
        opts = SweepOptions(
            cache=cache,
            grid=grid,
            out=out,
            seeds=seeds,
            device=device,
            resume=resume,
            parallel=parallel,
            overrides=_parse_set(overrides),
            max_cache_gb=max_cache_gb,
            progress=not quiet,
        )
        read_grid(opts.grid, seeds=opts.seeds, overrides=opts.overrides)
    except ConfigError as e:  # settings that cannot work: bad usage, exit 2 as in msmtfn-train
        raise UsageError(str(e)) from None
    problem = store_path_problem(cache)
    if problem:
        raise click.ClickException(problem)
    # torch and the trainer: imported once the options are read (``--help`` answers at once)
    from .checkpoint import CheckpointError
    from .data import TrainError

    try:
        summary = run_sweep(opts)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except (TrainError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    # sweep.SweepInterrupted: what is kept and the command that resumes
    except KeyboardInterrupt as e:
        click.echo(
            str(e) or "interrupted: finished trials are kept; --resume continues the rest", err=True
        )
        sys.exit(130)
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
