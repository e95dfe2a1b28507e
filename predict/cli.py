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

from pipeline.cli import RenamedOption, device_callback
from pipeline.device import DEVICE_HELP, resolve_device

from .segmenter import CUTTERS


def _expand(patterns: tuple[str, ...]) -> list[str]:
    """Shell globs the shell did not expand (quoted, or on Windows). A plain name that does not
    exist is kept, so it is reported as missing rather than silently dropped; a pattern that matches
    nothing is bad usage (one line, exit 2), not a recording whose call id is its stem ``*``."""
    out: list[str] = []
    for p in patterns:
        # a file may have [ or ? in its name
        if not any(ch in p for ch in "*?[") or Path(p).exists():
            out.append(p)
            continue
        hits = sorted(glob.glob(p))
        if not hits:
            raise click.BadParameter(
                f"{p!r}: no files match this pattern; check the folder and the file "
                "extension (e.g. 'calls/*.wav')",
                param_hint="'--audio'",
            )
        out.extend(hits)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--run",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="msmtfn-train run folder (config.json + model.safetensors), or a msmtfn-sweep folder (or its best): "
    "the trial it selected on validation.",
)
@click.option(
    "--audio",
    multiple=True,
    help="Recordings (repeatable; globs like 'calls/*.wav' are expanded). Call id = file stem.",
)
# the shell expands `--audio calls/*.wav` into one --audio value followed by the other files: take
# those as well
@click.argument("more_audio", nargs=-1, type=click.Path())
@click.option(
    "--cache",
    default=None,
    help="Score the calls of an existing cache (the run's own, or new calls extracted with the run's "
    "encoder settings) instead of recordings.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "valid", "train", "all"]),
    default="test",
    show_default=True,
    help="With --cache: which calls (all = every call, unlabelled ones included).",
)
@click.option(
    "--transcripts",
    default=None,
    type=click.Path(dir_okay=False),
    help="CSV call_id,start,end,text (seconds into the recording).",
)
@click.option(
    "--asr",
    default=None,
    help="Speech recognition model (hub id or folder) instead of --transcripts.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="predictions.csv: one row per call (per scored segment with --cache on a segment-level run).",
)
@click.option(
    "--segments-out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Per-segment CSV: call, index, start, end, status, text (and segment-level predictions).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the results as JSON instead of the summary line."
)
@click.option(
    "--device", default="auto", show_default=True, help=DEVICE_HELP, callback=device_callback()
)
@click.option(
    "--dtype",
    default="run",
    show_default=True,
    help="Encoders' compute dtype: run (the cache's; float32 on CPU), float32, float16, bfloat16.",
)
@click.option(
    "--audio-model",
    default=None,
    help="Where to read the run's audio encoder (identity is checked).",
)
@click.option(
    "--text-model", default=None, help="Where to read the run's text encoder (identity is checked)."
)
@click.option(
    "--cut",
    type=click.Choice(["auto", "rows", "pauses"]),
    default="auto",
    show_default=True,
    help="How recordings are cut into segments: auto = as the run's training segments were made (by the "
    "transcript's rows when training used timed rows and --transcripts is given, else at pauses "
    "into pieces of the training's lengths); rows = one segment per transcript row; pauses.",
)
@click.option(
    "--cutter",
    type=click.Choice(CUTTERS),
    default="energy",
    show_default=True,
    help="Where long recordings are cut: quietest frames (energy) or Silero VAD non-speech (vad).",
)
@click.option(
    "--search-seconds",
    default=10.0,
    show_default=True,
    help="How far before the segment limit a pause is looked for.",
)
@click.option(
    "--batch-calls", default=0, show_default=True, help="Calls per model batch (0 = the run's)."
)
@click.option(
    "--loader-workers",
    "--num-workers",
    "num_workers",
    cls=RenamedOption,
    old="--num-workers",
    default=0,
    show_default=True,
    help="Decode/tokenise processes for the encoders.",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    help="CPU threads for torch (0 = the run's --threads, else torch's default).",
)
@click.option(
    "--trust-remote-code", is_flag=True, help="Allow model code from the hub (encoders, ASR)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, warnings only.")
def main(
    run_dir,
    audio,
    more_audio,
    cache,
    split,
    transcripts,
    asr,
    out,
    segments_out,
    as_json,
    device,
    dtype,
    audio_model,
    text_model,
    cut,
    cutter,
    search_seconds,
    batch_calls,
    num_workers,
    threads,
    trust_remote_code,
    quiet,
):
    """Predict purchase intent (the run's tasks) for new recordings: --audio FILE… (files may
    follow); or for the calls of a cache: --cache STORE [--split test|valid|train|all]."""
    audio = tuple(audio) + tuple(more_audio)
    if cache:
        if audio or transcripts or asr:
            raise click.UsageError(
                "--cache scores a cache's calls: give it without --audio/--transcripts/--asr"
            )
        run_dir = _run_folder(run_dir)
        _check_paths(run_dir, cache, None)
        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
        )
        _score_cache(run_dir, cache, split, out, device, batch_calls, threads)
        return
    if not audio:
        raise click.UsageError("no recordings: give --audio FILE (or a glob such as 'calls/*.wav')")
    if bool(transcripts) == bool(asr):
        raise click.UsageError("give exactly one of --transcripts CSV or --asr MODEL")
    recordings = tuple(_expand(audio))
    run_dir = _run_folder(run_dir)
    _check_paths(run_dir, None, transcripts)  # before torch is imported: a typo answers at once
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    # torch, transformers and the trained model's code: imported once the options are read (fast
    # --help)
    from .run import PredictConfig, PredictError, predict_calls, result_json, write_outputs

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        cfg = PredictConfig(
            run=run_dir,
            audio=recordings,
            transcripts=transcripts,
            asr=asr,
            device=str(resolve_device(device)),
            dtype=dtype,
            audio_model=audio_model,
            text_model=text_model,
            cut=cut,
            cutter=cutter,
            search_seconds=search_seconds,
            batch_calls=batch_calls,
            num_workers=num_workers,
            threads=threads,
            trust_remote_code=trust_remote_code,
            progress=not quiet,
        )
        result = predict_calls(cfg)
        write_outputs(result, out, segments_out)
    except (PredictError, OSError) as e:
        _fail(e)
    if as_json:
        click.echo(result_json(result))
    else:
        click.echo(f"{result.summary()} → {out}" + (f", {segments_out}" if segments_out else ""))
    sys.exit(0 if result.predicted else 1)


def _fail(message) -> None:
    """One line, exit status 1: an error that stopped the run (README, exit status)."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


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


def _check_paths(run_dir: str, cache: str | None, transcripts: str | None) -> None:
    """The paths a prediction reads, checked before the models load (one line each, exit status
    1)."""
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


def _score_cache(run_dir, cache, split, out, device, batch_calls, threads) -> None:
    """The same inference path as training's evaluation (train.predictions): one CSV row per call or
    segment."""
    from pipeline.atomic import atomic_write_text
    from train.checkpoint import CheckpointError
    from train.data import TrainError
    from train.predictions import score_cache

    try:
        text, rows = score_cache(
            run_dir, cache, split, str(resolve_device(device)), batch_calls, threads=threads
        )
        atomic_write_text(out, text)
    except (TrainError, CheckpointError, OSError) as e:
        _fail(e)
    click.echo(f"scored {rows} {'rows' if rows != 1 else 'row'} of {cache} ({split}) → {out}")


if __name__ == "__main__":
    main()
