"""``msmtfn-extract``: a thin click layer over :func:`extract.run.extract` and
:meth:`CacheStore.info`.

Exit codes: 0 all segments encoded; 3 finished but some inputs were skipped (named in report.json
and the summary); 1 a user error (one line saying what to fix); 2 bad command-line usage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from pipeline.cache_settings import (
    BATCH_SECONDS_CPU,
    BATCH_SECONDS_CUDA,
    CacheSettings,
    cache_fields,
)
from pipeline.cli import (
    DefaultCommandGroup,
    RenamedOption,
    UsageError,
    device_callback,
    parse_key_values,
)
from pipeline.datasets import DATASETS, dataset_options
from pipeline.device import DEVICE_HELP
from pipeline.labels import SchemeFileError, resolve_scheme
from pipeline.memory import map_large_allocations
from pipeline.remote_files import is_url
from pipeline.store import CODECS, CacheStore, StoreError, resolve_storage_options

from .augment import TRANSFORMS
from .config import ExtractConfig
from .paths import check_data_dir, check_model_folders

EXIT_SKIPPED = 3


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_info(info: dict) -> str:
    s = info["settings"]
    lines = [
        f"store            {info['path']}",
        f"dataset          {info.get('dataset')}  (labels: {info.get('label_scheme')}"
        + (", custom, defined in the store" if info.get("label_scheme_def") else "")
        + ")",
        *_scheme_lines(info),
        f"schema version   {info['schema_version']}   package {info.get('package_version')}   "
        + ("chunks checksummed (CRC32C)" if info.get("checksums") else "no chunk checksums"),
        f"fingerprint      {info['fingerprint']}",
        f"created/updated  {info.get('created')} / {info.get('updated')}",
        f"audio encoder    {s['audio']['model']}  layer {s['audio']['layer']}  weights {s['audio']['weights']}",
        f"                 rate policy {s['audio']['rate_policy']} ({s['audio']['input_rate']} Hz in), "
        f"pool {s['audio']['pool']}, ≤{info['shape']['audio_frames']}×{info['shape']['audio_dim']} per segment, "
        f"channel {s['audio'].get('channel', 'mix')}",
        f"text encoder     {s['text']['model']}  layer {s['text']['layer']}  weights {s['text']['weights']}",
        f"                 ≤{info['shape']['text_tokens']}×{info['shape']['text_dim']} tokens per segment",
        f"compute dtype    {s['compute_dtype']} (stored float16); segments ≤ {s['segmentation']['max_seconds']} s",
        f"segments         {info['segments_done']}/{info['segments_total']} done, "
        f"{info['segments_skipped']} skipped, {info['segments_pending']} pending",
        f"calls            {info['calls']}  per split: "
        + ", ".join(f"{k} {v}" for k, v in sorted(info["calls_per_split"].items())),
        *(
            f"{name:<17}" + ", ".join(f"{k} {v}" for k, v in per.items())
            for name, per in info.get(
                "labels", {"calls per label": info["calls_per_label"]}
            ).items()
        ),
        "variants         "
        + ", ".join(f"{k} {v}" for k, v in sorted(info["segments_per_variant"].items()))
        + (
            f"  ({info['rows_sharing_audio']} text-variant rows use their original's audio)"
            if info.get("rows_sharing_audio")
            else ""
        ),
        f"on disk          {_fmt_bytes(info['bytes_on_disk'])} (codec {info.get('codec')}); "
        f"compression ratio {info['compression_ratio_written']:.2f}× on written rows",
    ]
    return "\n".join(lines)


def _scheme_lines(info: dict) -> list[str]:
    """The label scheme's tasks and what each class means, for ``info``."""
    tasks = info.get("label_tasks") or {}
    lines = (
        [
            "tasks            "
            + "; ".join(f"{k}: {' | '.join(v) if v else '(regression)'}" for k, v in tasks.items())
        ]
        if tasks
        else []
    )
    for i, (label, what) in enumerate((info.get("class_descriptions") or {}).items()):
        lines.append(f"{'classes' if i == 0 else '':<17}{label}: {what}")
    return lines


def with_label_scheme(options: dict, label_scheme: str | None, dataset: str, data_dir: str) -> dict:
    """``--label-scheme`` (or ``--option label_scheme=``) into the adapter's options, its file
    checked before any work: a bad file is bad usage, one line naming the file and the key (exit
    2)."""
    if label_scheme is not None:
        if "label_scheme" not in dataset_options(dataset):
            raise UsageError(
                f"--label-scheme: dataset {dataset!r} has its own labels; a custom label scheme is for "
                "--dataset csv"
            )
        if options.get("label_scheme", label_scheme) != label_scheme:
            raise UsageError(
                f"--label-scheme {label_scheme} and --option label_scheme={options['label_scheme']} "
                "disagree; give one of them"
            )
        options = {**options, "label_scheme": label_scheme}
    if "label_scheme" in options:
        try:
            resolve_scheme(str(options["label_scheme"]), Path(data_dir))
        except SchemeFileError as e:
            raise UsageError(str(e)) from None
    return options


def _run_default(name: str):
    return ExtractConfig.__dataclass_fields__[name].default


def _refuse_with(problem):
    def check(ctx, param, value):
        if value is not None and (why := problem(value)):
            raise click.BadParameter(f"{value!r}: {why}")
        return value

    return check


def cache_options(command):
    """The options of every :class:`CacheSettings` field, in field order (name, default, choices,
    help from the field): a new cache setting is a new option without touching this file."""
    for f in reversed(dataclasses.fields(CacheSettings)):
        m = f.metadata
        kw = {
            "default": m.get("cli_default", f.default),
            "help": m["help"],
            "show_default": f.default is not None,
        }
        if "choices" in m:
            kw["type"] = click.Choice(m["choices"])
        if "metavar" in m:
            kw["metavar"] = m["metavar"]
        if "problem" in m:  # a value no run can use is bad usage (exit 2), said at once
            kw["callback"] = _refuse_with(m["problem"])
        if f.name == "augment":
            kw["help"] += ": " + ", ".join(TRANSFORMS) + "."
            kw["show_default"] = False
        if f.default is None:
            kw["type"] = str
        command = click.option("--" + f.name.replace("_", "-"), f.name, **kw)(command)
    return command


@click.group(
    cls=DefaultCommandGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.pass_context
def main(ctx):
    """Encode a dataset's calls with frozen audio and text encoders into a resumable Zarr cache.

    \b
      msmtfn-extract --dataset marketcalls --data-dir data/marketcalls --device cuda
      msmtfn-extract info cache/marketcalls.zarr
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def parse_options(items: tuple[str, ...], dataset: str) -> dict:
    """``KEY=VALUE`` pairs for the dataset adapter (pipeline.cli.parse_value reads each VALUE);
    a key the dataset does not have is bad usage, naming its options."""
    out = {}
    for key, value in parse_key_values(items, "--option", example="n_calls=48").items():
        key = key.replace("-", "_")
        if dataset in DATASETS and key not in dataset_options(dataset):
            raise click.BadParameter(
                f"dataset {dataset!r} has no option {key!r}; its options: "
                f"{', '.join(dataset_options(dataset)) or 'none'}",
                param_hint="--option",
            )
        out[key] = value
    return out


def _kept(kw: dict) -> str:
    """' (N of M segments done in STORE)' after an interrupt, or '' when the store cannot be
    read."""
    try:
        out = kw["out"] or f"cache/{kw['dataset']}.zarr"
        if "://" in out:
            return ""  # a remote store: no network round trip after a Ctrl-C
        done = CacheStore.open(out).done()
        return f" ({int(done.sum())} of {len(done)} segments done in {out})"
    except Exception:  # interrupted before the store existed, or a second Ctrl-C: the plain message
        return ""


def _storage_options(raw: str | None) -> dict:
    if not raw:
        return resolve_storage_options()
    try:
        opts = json.loads(raw)
    except ValueError as e:
        raise click.BadParameter(f"not JSON ({e})", param_hint="--storage-options") from None
    if not isinstance(opts, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--storage-options")
    return opts


@main.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dataset", required=True, type=click.Choice(list(DATASETS)), help="The adapter (see README)."
)
@click.option(
    "--data-dir", required=True, type=click.Path(file_okay=False), help="The dataset's folder."
)
@click.option("--out", default=None, help="Store path (default cache/<dataset>.zarr).")
# one option per CacheSettings field: --audio-model … --seed (pipeline/cache_settings.py)
@cache_options
@click.option(
    "--device",
    default=_run_default("device"),
    show_default=True,
    help=DEVICE_HELP,
    callback=device_callback(),
)
@click.option(
    "--batch-seconds",
    default=_run_default("batch_seconds"),
    show_default=True,
    help=f"Padded audio seconds per batch (0: {BATCH_SECONDS_CUDA:g} on CUDA, {BATCH_SECONDS_CPU:g} on CPU).",
)
@click.option(
    "--batch-size",
    "max_batch",
    default=_run_default("max_batch"),
    show_default=True,
    help="Segments per batch at most.",
)
@click.option(
    "--loader-workers",
    "--num-workers",
    "num_workers",
    cls=RenamedOption,
    old="--num-workers",
    default=_run_default("num_workers"),
    show_default=True,
    help="Decode/resample/tokenise processes feeding the encoders (in each dask worker too).",
)
@click.option(
    "--shard-size",
    default=_run_default("shard_size"),
    show_default=True,
    help="Segments per shard file.",
)
@click.option(
    "--block-shards",
    default=_run_default("block_shards"),
    show_default=True,
    help="Shards sorted by length and batched together; one such block is one distributed task.",
)
@click.option(
    "--codec", default=_run_default("codec"), show_default=True, type=click.Choice(CODECS)
)
@click.option(
    "--write-threads",
    default=_run_default("write_threads"),
    show_default=True,
    help="Threads compressing and writing shards (0 = cores, at most 8).",
)
@click.option(
    "--overwrite", is_flag=True, help="Rebuild the store if it was made with other settings."
)
@click.option(
    "--allow-outside-paths",
    is_flag=True,
    help="Let CSVs name audio outside --data-dir (absolute paths, ../).",
)
@click.option(
    "--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default)."
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Encode on the workers of this dask scheduler (they must reach --data-dir, the models and --out).",
)
@click.option(
    "--dask-workers",
    "--workers",
    "workers",
    cls=RenamedOption,
    old="--workers",
    default=_run_default("workers"),
    show_default=True,
    help="Encode on a local dask cluster of N worker processes (one per GPU with dask-cuda on cuda).",
)
@click.option(
    "--storage-options",
    default=None,
    metavar="JSON",
    help='fsspec options of a URL --out, e.g. \'{"endpoint_url": "http://host:9000"}\' '
    "(default: $MSMTFN_STORAGE_OPTIONS; S3 also reads AWS_ENDPOINT_URL and the AWS_* credentials).",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A dataset adapter option (repeatable), e.g. split_file=folds.py, label_scheme=sentiment, "
    "no_text=true.",
)
@click.option(
    "--label-scheme",
    default=None,
    metavar="NAME|FILE.toml",
    help="The generic CSV's labels: a built-in scheme or your own TOML file (README, Label schemes); "
    "copied into the store. Same as --option label_scheme=…",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def run_cmd(
    as_json: bool,
    quiet: bool,
    storage_options: str | None,
    options: tuple[str, ...],
    label_scheme: str | None,
    **kw,
):
    """Encode a dataset into a resumable Zarr cache (the default command).

    \b
      msmtfn-extract --dataset marketcalls --data-dir data/marketcalls --device cuda
      msmtfn-extract info cache/marketcalls.zarr      # describe a store

    Exit status: 0 all encoded; 3 some inputs skipped (see report.json); 1 error; 2 bad usage.
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        cfg = _config(kw, storage_options, options, label_scheme)
        if quiet:  # transformers' own "Loading weights" bars too
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            # dask's cluster start/stop lines
            logging.getLogger("distributed").setLevel(logging.WARNING)
        from .run import extract  # torch and transformers: imported once the options are read

        map_large_allocations()  # batch after batch of changing shapes: a heap that does not grow
        res = extract(cfg, progress=not quiet)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    # e.g. the disk filled up, or object storage answered errors past its retries
    except OSError as e:
        remote = any(is_url(kw.get(k) or "") for k in ("out", "data_dir"))
        cause = (
            "object storage, after the retries: its endpoint, credentials, request rate"
            if remote
            else "disk space, permissions"
        )
        raise click.ClickException(
            f"{e}; fix the cause ({cause}) and run the same command again: "
            "every segment marked done is kept"
        ) from None
    except KeyboardInterrupt:
        # one process writes partial shards on the way out; with dask the driver commits whole
        # blocks only
        kept = (
            "every block the dask workers finished is kept"
            if kw.get("workers") or kw.get("scheduler")
            else "every encoded segment but the batch in flight is kept"
        )
        click.echo(
            f"interrupted: {kept}{_kept(kw)}; run the same command again to resume", err=True
        )
        sys.exit(130)
    _print_result(res, as_json)
    if res.skipped or res.done < res.total or res.manifest_skipped:
        sys.exit(EXIT_SKIPPED)


def _config(kw: dict, storage_options, options, label_scheme) -> ExtractConfig:
    """The run's settings from the options; missing or unusable folders are answered here, before
    torch and transformers are imported."""
    cache = CacheSettings(**{k: kw.pop(k) for k in cache_fields()})
    dataset_opts = with_label_scheme(
        parse_options(options, kw["dataset"]), label_scheme, kw["dataset"], kw["data_dir"]
    )
    cfg = ExtractConfig(
        cache=cache,
        **kw,
        storage_options=_storage_options(storage_options),
        dataset_options=dataset_opts,
    )
    check_model_folders(cfg.cache)
    check_data_dir(cfg.data_dir, DATASETS[cfg.dataset].makes_data_dir)
    return cfg


def _print_result(res, as_json: bool) -> None:
    summary = {
        "store": str(res.store),
        "segments_total": res.total,
        "segments_done": res.done,
        "segments_skipped": res.skipped,
        "encoded_this_run": res.computed,
        "audio_seconds": round(res.audio_seconds, 1),
        "elapsed_s": round(res.elapsed, 2),
        "segments_per_s": round(res.segments_per_second, 2),
        "report": str(res.report),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    left_out = (
        f", {res.manifest_skipped} dataset rows left out before encoding"
        if res.manifest_skipped
        else ""
    )
    click.echo(
        f"{res.store}: {res.done}/{res.total} segments done, {res.skipped} skipped{left_out}; "
        f"encoded {res.computed} ({res.audio_seconds:.1f} s of audio) in {res.elapsed:.1f} s "
        f"= {res.segments_per_second:.1f} segments/s; report {res.report}"
    )
    for it in res.issues[:20]:
        click.echo(f"  skipped {it.get('source')}: {it['reason']}", err=True)
    if len(res.issues) > 20:
        click.echo(f"  … and {len(res.issues) - 20} more in {res.report}", err=True)


@main.command("info")
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def info_cmd(store: str, as_json: bool):
    """Describe a cache store: settings, fingerprint, progress, counts, size."""
    try:
        info = CacheStore.open(store).info()
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(info, indent=2, ensure_ascii=False) if as_json else format_info(info))


@main.command("verify")
@click.argument("store", type=click.Path())
@click.option(
    "--repair",
    is_flag=True,
    help="Mark the damaged rows not done (under the store's lock), so that the msmtfn-extract "
    "command that made the store re-encodes exactly them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--threads", default=4, show_default=True, help="Shards read at once.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def verify_cmd(store: str, repair: bool, as_json: bool, threads: int, quiet: bool):
    """Read every chunk of a cache store back: checksums (schema 2 on), lengths within bounds,
    zero padding, no NaN/inf in done rows. Exit 0 clean, 1 damaged (listed by segment id)."""
    from pipeline.verify import verify_store

    try:
        report = verify_store(store, repair=repair, threads=threads, progress=not quiet)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo(format_verify(report))
    sys.exit(1 if report["damaged"] else 0)


def format_verify(report: dict) -> str:
    damaged = report["damaged"]
    lines = [
        f"{report['store']}: {report['rows']} rows ({report['done']} done) in {report['shards']} "
        f"shards read back; "
        + (
            "every chunk checksummed (CRC32C)"
            if report["checksums"]
            else "no checksums in this store (made before schema 2): only chunks that no longer "
            "decode and broken row invariants can be found; re-extract it to add them"
        )
    ]
    if not damaged:
        lines.append("clean: no damaged rows")
        return "\n".join(lines)
    lines.append(f"damaged: {len(damaged)} rows")
    for d in damaged[:20]:
        lines.append(f"  {d['segment_id']} (row {d['row']}): {d['array']}: {d['reason']}")
    if len(damaged) > 20:
        lines.append(f"  … and {len(damaged) - 20} more (--json lists them all)")
    if report["repaired"]:
        lines.append(
            f"repaired: {report['repaired']} rows marked not done; run the msmtfn-extract command "
            "that made the store again: it re-encodes exactly those rows"
        )
    else:
        lines.append(
            f"fix: msmtfn-extract verify {report['store']} --repair, then the extract command"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
