"""``msmtfn-predict``: a trained run applied to new recordings (thin layer over
:func:`predict.run.predict_calls`).

Exit status: 0 something was predicted (recordings that could not be used are rows with their
reason), 1 nothing was predicted or an error stopped the run (one line saying what to fix), 2 bad
usage.
"""

from __future__ import annotations

import glob
import logging
import sys
from pathlib import Path

import click

from pipeline.cli import RenamedOption, cli_errors, device_callback, field_options, options
from pipeline.device import DEVICE_HELP, resolve_device
from pipeline.remote_files import is_url

from .config import PredictConfig, PredictError


def _expand(patterns: tuple[str, ...]) -> list[str]:
    """Shell globs the shell did not expand (quoted, or on Windows). A plain name that does not
    exist is kept, so it is reported as missing rather than silently dropped; a pattern that matches
    nothing is bad usage (one line, exit 2), not a recording whose call id is its stem ``*``."""
    out: list[str] = []
    for p in patterns:
        if is_url(p):  # s3://bucket/calls/*.wav: the objects it names, read through fsspec
            hits = _url_glob(p)
        # a file may have [ or ? in its name
        elif not any(ch in p for ch in "*?[") or Path(p).exists():
            out.append(p)
            continue
        else:
            hits = sorted(glob.glob(p))
        if not hits:
            raise click.BadParameter(
                f"{p!r}: no files match this pattern; check the folder and the file "
                "extension (e.g. 'calls/*.wav')",
                param_hint="'--audio'",
            )
        out.extend(hits)
    return out


def _url_glob(pattern: str) -> list[str]:
    from pipeline.remote_files import glob_urls

    try:
        return glob_urls(pattern)
    except (OSError, ValueError) as e:  # no such bucket, refused credentials, an unreachable host
        raise click.BadParameter(
            f"{pattern!r}: cannot be listed ({e})", param_hint="'--audio'"
        ) from None


def _help(name: str) -> str:
    return PredictConfig.__dataclass_fields__[name].metadata["help"]


# options beyond a field, or placed beside one (the order of --help stays the one users know)
_CUSTOM = {
    "run": click.option(
        "--run", "run_dir", required=True, type=click.Path(file_okay=False), help=_help("run")
    ),
    "audio": options(
        click.option("--audio", multiple=True, help=_help("audio")),
        # the shell expands `--audio calls/*.wav` into one --audio value followed by the other
        # files: take those as well
        click.argument("more_audio", nargs=-1, type=click.Path()),
        click.option(
            "--cache",
            default=None,
            help="Score the calls of an existing cache (the run's own, or new calls extracted with "
            "the run's encoder settings) instead of recordings.",
        ),
        click.option(
            "--split",
            type=click.Choice(["test", "valid", "train", "all"]),
            default="test",
            show_default=True,
            help="With --cache: which calls (all = every call, unlabelled ones included).",
        ),
    ),
    "transcripts": click.option(
        "--transcripts", default=None, type=click.Path(dir_okay=False), help=_help("transcripts")
    ),
    "asr": options(
        click.option("--asr", default=None, help=_help("asr")),
        click.option(
            "--out",
            required=True,
            type=click.Path(dir_okay=False),
            help="predictions.csv: one row per call (per scored segment with --cache on a "
            "segment-level run).",
        ),
        click.option(
            "--segments-out",
            default=None,
            type=click.Path(dir_okay=False),
            help="Per-segment CSV: call, index, start, end, status, text (and segment-level "
            "predictions).",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the results as JSON instead of the summary line.",
        ),
    ),
    "device": click.option(
        "--device", default="auto", show_default=True, help=DEVICE_HELP, callback=device_callback()
    ),
    "num_workers": click.option(
        "--loader-workers",
        "--num-workers",
        "num_workers",
        cls=RenamedOption,
        old="--num-workers",
        default=0,
        show_default=True,
        help=_help("num_workers"),
    ),
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@field_options(PredictConfig, skip=("group_calls", "batch_seconds", "progress"), custom=_CUSTOM)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, warnings only.")
def main(run_dir, audio, more_audio, cache, split, out, segments_out, as_json, quiet, **kw):
    """Predict purchase intent (the run's tasks) for new recordings: --audio FILE… (files may
    follow); or for the calls of a cache: --cache STORE [--split test|valid|train|all]."""
    audio = tuple(audio) + tuple(more_audio)
    if cache:
        if audio or kw["transcripts"] or kw["asr"]:
            raise click.UsageError(
                "--cache scores a cache's calls: give it without --audio/--transcripts/--asr"
            )
        run_dir = _run_folder(run_dir)
        _check_paths(run_dir, cache, None, kw["explain"])
        _log(quiet)
        _score_cache(run_dir, cache, split, out, kw)
        return
    if not audio:
        raise click.UsageError("no recordings: give --audio FILE (or a glob such as 'calls/*.wav')")
    if bool(kw["transcripts"]) == bool(kw["asr"]):
        raise click.UsageError("give exactly one of --transcripts CSV or --asr MODEL")
    recordings = tuple(_expand(audio))
    run_dir = _run_folder(run_dir)
    # before torch is imported: a typo answers fast
    _check_paths(run_dir, None, kw["transcripts"], kw["explain"])
    _log(quiet)
    # torch, transformers and the trained model's code: imported once the options are read
    from pipeline.memory import map_large_allocations

    from .run import predict_calls, result_json, write_outputs

    map_large_allocations()  # a long call's batches come and go: flat peak memory

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with cli_errors(user=(PredictError, OSError)):
        cfg = PredictConfig(
            run=run_dir,
            audio=recordings,
            **{**kw, "device": str(resolve_device(kw["device"]))},
            progress=not quiet,
        )
        result = predict_calls(cfg)
        write_outputs(result, out, segments_out)
    if as_json:
        click.echo(result_json(result))
    else:
        more = (f", {segments_out}" if segments_out else "") + (
            f"; report {result.report}" if result.report else ""
        )
        click.echo(f"{result.summary()} → {out}{more}")
    sys.exit(0 if result.predicted else 1)


def _log(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )


def _fail(message) -> None:
    """One line, exit status 1: an error that stopped the run (README, exit status)."""
    raise click.ClickException(str(message))


def _run_folder(run_dir: str) -> str:
    """``--run``: a run folder, or a sweep folder (or its ``best``) meaning the trial it selected on
    validation; the choice is named on stderr."""
    from train.sweep import NoFinishedTrial, resolve_run  # reads files only: no torch

    try:
        run, note = resolve_run(run_dir)
    except NoFinishedTrial as e:
        _fail(e)
    if note:
        click.echo(note, err=True)
    return str(run)


def _check_paths(
    run_dir: str, cache: str | None, transcripts: str | None, explain: str | None = None
) -> None:
    """The paths a prediction reads (and the --explain folder it writes), checked before the models
    load (one line each, exit status 1)."""
    run = Path(run_dir)
    if not run.is_dir():
        _fail(
            f"{run_dir}: no such run folder; give --run a folder made by msmtfn-train (or msmtfn-sweep)"
        )
    if not (run / "config.json").is_file():
        _fail(
            f"{run_dir}: no config.json here, so not a msmtfn-train run folder; give --run the folder a "
            "training run wrote"
        )
    if cache and "://" not in cache and not Path(cache).exists():
        _fail(f"{cache}: no such cache store; give --cache a store made by msmtfn-extract")
    if transcripts and not Path(transcripts).is_file():
        _fail(
            f"{transcripts}: no such transcripts CSV (call_id,start,end,text); check --transcripts"
        )
    if explain:
        from .explain import check_report_dir

        try:
            check_report_dir(explain)
        except PredictError as e:
            _fail(e)


def _score_cache(run_dir, cache, split, out, kw) -> None:
    """The same inference path as training's evaluation (train.predictions): one CSV row per call or
    segment; with --explain, the report of the same pass."""
    from pipeline.atomic import atomic_write_text
    from pipeline.store import StoreError
    from train.checkpoint import CheckpointError
    from train.data import TrainError

    from .explain import explain_cache

    try:
        text, rows, report = explain_cache(
            run_dir,
            cache,
            split,
            str(resolve_device(kw["device"])),
            kw["batch_calls"],
            kw["threads"],
            kw["explain"],
            kw["explain_segments"],
            kw["explain_steps"],
            kw["text_model"],
            kw["explain_method"],
        )
        atomic_write_text(out, text)
    except (TrainError, CheckpointError, PredictError, StoreError, OSError) as e:
        _fail(e)
    more = f"; report {report.index_path}" if report else ""
    click.echo(f"scored {rows} {'rows' if rows != 1 else 'row'} of {cache} ({split}) → {out}{more}")


if __name__ == "__main__":
    main()
