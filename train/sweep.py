"""Sweeps: many training configurations × seeds on one cache, loaded once, with tables a researcher
can paste.

A grid file (TOML) names the trials::

    name = "my-sweep"           # optional (default: the file's stem)
    seeds = 3                   # or a list [0, 1, 7]; --seeds on the command line wins
    task = "2"                  # the task that sorts the table and the chart (default: the base's
    task)

    [base]                      # settings of every trial: any msmtfn-train option
    epochs = 40

    [grid]                      # a cartesian product over any options
    lr = [1e-4, 3e-4]
    bottleneck_tokens = [2, 4]

    [[trial]]                   # named configurations (rows); crossed with [grid] when both are
    given
    name = "w/o MTL"
    mtl = false
    paper = { acc2 = 71.23 }    # published figures shown beside this row (acc<k> / f1<k>, percent)

Each (configuration, seed) is a trial, trained by :func:`train.loop.fit` into
``<sweep>/trials/<slug>/s<seed>`` (the same run folder as ``msmtfn-train``) from one in-memory copy
of the cache. Every setting (grid file, ``--set``, seeds) is checked before anything is written. A
finished trial (``metrics.json``) is never run again; an interrupted one continues from its last
epoch (``--resume``); a sweep whose kept trials were run with other settings is refused; a trial
that fails is recorded in ``trials.csv`` and the sweep goes on.
``results.csv``/``results.md``/``results.png`` summarise mean ± std over seeds of every task's test
accuracy and F1 (checkpoints selected on validation). ``best.json`` (and the link ``best`` where
links can be made) names the trial selected by validation alone; :func:`resolve_run` turns a sweep
folder into that trial's run folder (``msmtfn-predict --run SWEEP``). Log lines made while a trial
runs start with ``[<configuration>/s<seed>]`` and are written around the progress bar.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import itertools
import json
import logging
import math
import os
import re
import shlex
import time
import tomllib
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pipeline.atomic import atomic_write_bytes, atomic_write_json
from pipeline.cli import option_field

from .config import ConfigError, TrainConfig, normalise_keys
from .tracking import (
    NULL,
    TrackingOptions,
    experiment_field,
    open_run,
    tracking_field,
    tracking_uri_field,
)

# torch, numpy and the trainer are imported where they are used: reading and checking a grid file,
# and finding a sweep's selected trial (msmtfn-predict --run SWEEP), answer without them

log = logging.getLogger(__name__)

# set by the sweep itself, never by a grid file
TRIAL_KEYS_SET_BY_SWEEP = ("cache", "out", "seed", "device", "progress")
PRESETS = ("paper-ablation", "bottleneck-lr", "paper-capacity", "learning-curve")


@dataclass(frozen=True)
class Configuration:
    name: str
    settings: dict  # TrainConfig fields (normalised keys) over the sweep's base
    # {"acc2": 76.6, "f1_5": ...} published figures, percent
    paper: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        s = re.sub(r"[^A-Za-z0-9.=+-]+", "-", self.name.replace("/", "-")).strip("-").lower()
        return s or "trial"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    configurations: tuple[Configuration, ...]
    seeds: tuple[int, ...]
    task: str | None = None
    source: str = ""

    def trials(self) -> list[tuple[Configuration, int]]:
        return [(c, s) for c in self.configurations for s in self.seeds]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "seeds": list(self.seeds),
            "task": self.task,
            "source": self.source,
            "configurations": [
                {"name": c.name, "settings": c.settings, "paper": c.paper}
                for c in self.configurations
            ],
        }


def _check_keys(settings: dict, where: str) -> dict:
    clean = normalise_keys(settings)
    valid = [k for k in TrainConfig.keys() if k not in TRIAL_KEYS_SET_BY_SWEEP]
    for key in clean:
        if key not in valid:
            hint = " (set by msmtfn-sweep itself)" if key in TRIAL_KEYS_SET_BY_SWEEP else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
    return clean


def _value_name(v) -> str:
    return (
        ("yes" if v else "no")
        if isinstance(v, bool)
        else f"{v:g}"
        if isinstance(v, float)
        else str(v)
    )


def resolve_grid(grid: str | Path) -> Path:
    """A path to a TOML file, or a shipped preset's name (``paper-ablation``, also
    ``sweeps/paper-ablation.toml`` when no such file exists)."""
    p = Path(grid)
    if p.is_file():
        return p
    stem = p.name.removesuffix(".toml")
    if stem in PRESETS:
        return Path(str(resources.files("train") / "sweeps" / f"{stem}.toml"))
    raise ConfigError(
        f"{grid}: no such grid file; give a TOML file or a preset ({', '.join(PRESETS)})"
    )


def _check_value(where: str, key: str, value) -> None:
    """One setting alone over the defaults, so a wrong value is named with its key and where it was
    written."""
    try:
        TrainConfig.from_dict({key: value, "cache": "-"}, source=where)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(f"{where}:") else f"{where}: {msg}") from None
    except (
        TypeError,
        ValueError,
    ) as e:  # a check that compared a value of the wrong type (e.g. "zero" < 1)
        raise ConfigError(f"{where}: {key} = {value!r}: {e}") from None


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table (key = value lines under it), not {value!r}")
    return value


def _seeds(seeds, where: str) -> tuple[int, ...]:
    """``3`` → seeds 0, 1, 2; a list → those seeds. Anything else is refused: "12" is not 12, nor
    seeds 1 and 2."""
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731 — true is an int in Python
    if whole(seeds):
        if seeds < 1:
            raise ConfigError(
                f"{where}: {seeds} seeds: give 1 or more, or a list of seeds such as [0, 1, 7]"
            )
        return tuple(range(seeds))
    if isinstance(seeds, (list, tuple)) and seeds and all(whole(s) and s >= 0 for s in seeds):
        if len(set(seeds)) != len(seeds):
            raise ConfigError(
                f"{where}: seed listed twice in {list(seeds)}; each seed is one trial folder"
            )
        return tuple(seeds)
    raise ConfigError(
        f"{where} = {seeds!r}: expected a whole number of seeds (seeds = 3 → 0, 1, 2) or a list "
        "of whole numbers ≥ 0 (seeds = [0, 1, 7])"
    )


def parse_grid(
    data: dict, name: str = "sweep", source: str = "", seeds=None, overrides: dict | None = None
) -> SweepSpec:
    """The configurations of a grid file's table, ``overrides`` (``--set``) over every one; each
    setting and each configuration is checked as a TrainConfig here, so a bad value stops the sweep
    before anything is written."""
    known = {"name", "seeds", "task", "base", "grid", "trial"}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{source or 'grid'}: unknown top-level key {key!r}; valid: "
                f"{', '.join(sorted(known))} (training settings go under [base], [grid] or "
                "[[trial]])"
            )
    source = source or "grid"
    base = _checked_settings(data.get("base", {}), f"{source}: [base]")
    overrides = _checked_settings(overrides or {}, "--set")
    grid = _grid(data.get("grid", {}), source)
    named = _named_trials(data.get("trial", []), source) or [("", {}, {})]
    configs = []
    keys = list(grid)
    for tname, tset, paper in named:
        for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            combo = dict(zip(keys, values))
            label = ", ".join(f"{k}={_value_name(v)}" for k, v in combo.items())
            full = " | ".join(x for x in (tname, label) if x) or "base"
            settings = {**base, **tset, **combo, **overrides}
            _check_configuration(settings, source, full)
            # figures of the paper's setting
            configs.append(Configuration(full, settings, paper if not combo else {}))
    if len({c.slug for c in configs}) != len(configs):
        raise ConfigError(
            f"{source}: two configurations have the same name; give each [[trial]] its own name"
        )
    seeds = (
        _seeds(seeds, "--seeds")
        if seeds is not None
        else _seeds(data.get("seeds", 1), f"{source}: seeds")
    )
    task = data.get("task")
    return SweepSpec(
        name=str(data.get("name", name)),
        configurations=tuple(configs),
        seeds=seeds,
        task=str(task) if task is not None else None,
        source=source,
    )


def _checked_settings(table, where: str) -> dict:
    """A table of training settings, every key and value checked."""
    settings = _check_keys(_table(table, where), where)
    for k, v in settings.items():
        _check_value(where, k, v)
    return settings


def _grid(table, source: str) -> dict[str, list]:
    """[grid]: each key a non-empty list of values, each value checked."""
    raw = _table(table, f"{source}: [grid]")
    for k, v in raw.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{source}: [grid] {k} must be a non-empty list of values, not {v!r}")
    grid: dict[str, list] = {}
    for k, values in raw.items():  # "no-bigru = [true, false]" negates each value, not the list
        pairs = [normalise_keys({k: x}).popitem() for x in values]
        grid[pairs[0][0]] = [v for _, v in pairs]
    _check_keys(dict.fromkeys(grid), f"{source}: [grid]")
    for k, values in grid.items():
        for v in values:
            _check_value(f"{source}: [grid]", k, v)
    return grid


def _named_trials(trials, source: str) -> list[tuple[str, dict, dict]]:
    """[[trial]] tables: (name, settings, the paper's figures) each, checked."""
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise ConfigError(
            f"{source}: trial must be [[trial]] tables (one per named configuration), not {trials!r}"
        )
    named = []
    for i, t in enumerate(trials):
        t = dict(t)
        tname = str(t.pop("name", f"trial {i + 1}"))
        where = f"{source}: trial {tname!r}"
        paper = _table(t.pop("paper", {}) or {}, f"{where}: paper")
        for k, v in paper.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(
                    f"{where}: paper {k} = {v!r}: expected the published figure as a number in "
                    "percent (e.g. acc2 = 71.23); leave out figures the paper does not give"
                )
        settings = _checked_settings(t, where)
        named.append((tname, settings, {str(k): float(v) for k, v in paper.items()}))
    return named


def _check_configuration(settings: dict, source: str, full: str) -> None:
    """Every configuration must be a valid TrainConfig before anything trains."""
    try:
        TrainConfig.from_dict({**settings, "cache": "-"}, source=f"{source}: {full!r}")
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(
            msg if msg.startswith(f"{source}:") else f"{source}: {full!r}: {msg}"
        ) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {full!r}: {e}") from None


def read_grid(grid: str | Path, seeds=None, overrides: dict | None = None) -> SweepSpec:
    path = resolve_grid(grid)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the grid ({e})") from None
    return parse_grid(data, name=path.stem, source=str(path), seeds=seeds, overrides=overrides)


# --------------------------------------------------------------------------- running
@dataclass(frozen=True)
class SweepOptions:
    """A sweep's settings; each field is a ``msmtfn-sweep`` option (train/sweep_cli.py)."""

    cache: str = option_field(help="Cache store made by msmtfn-extract.", required=True)
    grid: str | None = option_field(
        None,
        "Grid TOML file, or a preset: paper-ablation, bottleneck-lr, paper-capacity, learning-curve (or --search).",
    )
    out: str | None = option_field(None, "Sweep folder (default runs/sweeps/<grid name>).")
    # overrides the grid file
    seeds: int | list | None = option_field(
        None,
        "Seeds 0..N-1 for every configuration (default: the grid's); with --search, the seeds the "
        "best setting is trained again with, with test figures (default 3).",
    )
    device: str = option_field("auto", "auto | cpu | cuda | cuda:N")
    resume: bool = option_field(
        False, "Continue a sweep: finished trials are kept, interrupted ones continue."
    )
    parallel: int = option_field(
        1, "Trials trained at once in threads on the one loaded cache (see docs/benchmarks.md)."
    )
    overrides: dict = option_field(
        help="Override a training setting in every trial (repeatable), e.g. --set epochs=20; "
        "true/false/yes/no (any case) are booleans: --set bigru=False.",
        factory=dict,
    )
    max_cache_gb: float = option_field(0.0, "Features kept on the device (0 = auto).")
    progress: bool = option_field(True, "A progress bar and log lines.")
    # an Optuna search instead of a grid (train/search.py)
    search: str | None = option_field(
        None, "Search space TOML file ([base] and [search]): an Optuna study instead of a grid."
    )
    trials: int = option_field(20, "--search: finished (complete or pruned) trials wanted.")
    sampler: str = option_field("tpe", "--search: the sampler.", choices=("tpe", "random"))
    pruner: str = option_field(
        "median", "--search: stops bad trials early.", choices=("median", "hyperband", "none")
    )
    storage: str | None = option_field(
        None, "--search: the study's storage, an RDB URL or a journal file (default OUT/study.db)."
    )
    sampler_seed: int = option_field(0, "--search: the sampler's seed.")
    scheduler: str | None = option_field(
        None,
        "--search: run the trials on this dask cluster (tcp://HOST:PORT); each worker loads the "
        "cache once; the cache, OUT and the study's storage must be reachable from every worker.",
    )
    dask_workers: int = option_field(
        0, "--search: run the trials on a local dask cluster of N worker processes."
    )
    # a parent run for the sweep or search, a child per trial (train/tracking.py)
    tracking: str = tracking_field()
    tracking_uri: str = tracking_uri_field()
    experiment: str = experiment_field()


def trial_dir(root: Path, config: Configuration, seed: int) -> Path:
    return root / "trials" / config.slug / f"s{seed}"


def trial_name(config: Configuration, seed: int) -> str:
    return f"{config.name}/s{seed}"


# --------------------------------------------------------------------------- log lines and Ctrl-C
TRIAL: contextvars.ContextVar[str] = contextvars.ContextVar("msmtfn_sweep_trial", default="")
_factory_installed = False


def _name_trial_records() -> None:
    """Every log record made while a trial runs (in its thread) starts with
    ``[<configuration>/s<seed>] ``, whichever module logs it (the loop's epochs, early stopping, the
    data's warnings). Installed once; a record made outside a trial is left as it is."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        name = TRIAL.get()
        if name and isinstance(record.msg, str):
            record.msg = f"[{name}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; ``str()`` is the one line that says what is kept and the command that
    resumes."""

    def __init__(self, root: Path, command: str):
        self.root, self.command = root, command
        super().__init__(
            f"interrupted: finished trials are kept and the trial in flight continues from its last "
            f"saved epoch; resume with: {command}"
        )


def resume_command(opts: SweepOptions, root: Path) -> str:
    """The msmtfn-sweep command that continues this sweep (the options that change what it runs, and
    --resume)."""
    words = ["msmtfn-sweep", "--cache", opts.cache, "--grid", opts.grid, "--out", str(root)]
    if opts.seeds is not None:
        words += ["--seeds", str(opts.seeds)]
    for key, value in (opts.overrides or {}).items():
        words += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    if opts.max_cache_gb:
        words += ["--max-cache-gb", f"{opts.max_cache_gb:g}"]
    return shlex.join(words + ["--resume"])


# --------------------------------------------------------------------------- the selected trial:
# best.json, best
BEST = "best.json"
BEST_LINK = "best"


class NoFinishedTrial(FileNotFoundError):
    """A sweep folder given where a run folder is needed, but none of its trials has finished
    yet."""


def _read_spec(root: Path) -> SweepSpec:
    s = json.loads((root / "sweep.json").read_text(encoding="utf-8"))["spec"]
    return SweepSpec(
        s["name"],
        tuple(
            Configuration(c["name"], c["settings"], c.get("paper", {})) for c in s["configurations"]
        ),
        tuple(s["seeds"]),
        s.get("task"),
        s["source"],
    )


def _selection_metric(runs: list[dict], task: str) -> str:
    """The metric every trial was selected on (one cache, one scheme), as metrics.json records it;
    the task's kind decides a regression (train/metrics.py)."""
    from .metrics import METRIC_TABLE, REGRESSION, selection_key, task_kind

    kind = task_kind(runs[0], task) if runs else "class"
    if kind == REGRESSION:
        return selection_key(kind, "")
    for m in runs:
        key = m.get("selection", {}).get("key")
        if key in METRIC_TABLE and METRIC_TABLE[key].kind == kind:
            return key
        text = m.get("selection", {}).get("metric", "")  # runs made before the key was recorded
        for name, metric in METRIC_TABLE.items():
            if metric.kind == kind and text.startswith(f"validation {metric.label} "):
                return name
    return "macro_f1"


def _score(m: dict, task: str, metric: str) -> tuple:
    """Larger is better, by the rule that ranks a run's epochs (train.metrics.selection_score)."""
    from .metrics import selection_score

    return selection_score(m["val"][task], metric, m.get("val_loss"))


def select_best(root: str | Path) -> dict | None:
    """The trial a sweep selects, BY VALIDATION only, over all its finished trials: the best
    validation score of the sweep's task (the grid's ``task``, else the base's, as results.md is
    sorted), ranked as the trainer ranks epochs (the scheme's metric, then accuracy, then loss; MAE,
    then correlation, then loss for a regression); a tie left after that goes to the trial first in
    the grid (configurations in order, then seeds), as the trainer keeps its earliest epoch. None
    when no trial has finished."""
    root = Path(root)
    spec = _read_spec(root)
    finished = []
    for config, seed in spec.trials():
        p = trial_dir(root, config, seed) / "metrics.json"
        if p.is_file():
            finished.append((config, seed, json.loads(p.read_text(encoding="utf-8"))))
    if not finished:
        return None
    tasks: list[str] = []
    for _, _, m in finished:
        for t in list(m.get("test") or {}) + list(m["val"]):
            if t not in tasks:
                tasks.append(t)
    task = _primary(spec, tasks)
    runs = [m for _, _, m in finished if task in m["val"]]
    metric = _selection_metric(runs, task)
    best, best_score = None, None
    for config, seed, m in finished:
        if task not in m["val"]:
            continue
        score = _score(m, task, metric)
        # strictly better: an equal score keeps the earlier trial
        if best is None or score > best_score:
            best, best_score = (config, seed, m), score
    if best is None:
        return None
    config, seed, m = best
    from .metrics import METRIC_TABLE

    ties = "".join(f"{METRIC_TABLE[t].label}, " for t in METRIC_TABLE[metric].ties)
    return {
        "run_dir": trial_dir(Path("."), config, seed).as_posix(),  # relative to the sweep folder
        "configuration": config.name,
        "seed": seed,
        "settings": config.settings,
        "task": task,
        "metric": metric,
        "value": m["val"][task][metric],
        "split": "valid",
        "trials_finished": len(finished),
        "trials": len(spec.trials()),
        "selected_by": f"validation {metric} of task {task} (ties: {ties}then validation loss, "
        f"then grid order) over {len(finished)} finished of {len(spec.trials())} trials",
    }


def write_best(root: str | Path) -> dict | None:
    """Write ``best.json`` (the selected trial, :func:`select_best`) and, where the filesystem
    allows links, the link ``best`` -> that trial's run folder; with no finished trial, remove both.
    Returns the record."""
    root = Path(root)
    rec = select_best(root)
    link = root / BEST_LINK
    if rec is None:
        (root / BEST).unlink(missing_ok=True)
        if link.is_symlink():
            link.unlink()
        return None
    atomic_write_json(root / BEST, rec)
    _link(link, rec["run_dir"])
    return rec


def _link(link: Path, target: str) -> None:
    # a file or folder someone put there: never replaced
    if link.exists() and not link.is_symlink():
        log.warning(
            "%s exists and is not a link; the selected trial is named in %s only", link, BEST
        )
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)  # atomic: the link names the old trial or the new one
    except (
        OSError,
        NotImplementedError,
    ) as e:  # no symlinks here (some Windows setups, some mounts): file only
        log.debug("%s: no link (%s); %s names the selected trial", link, e, BEST)
        for p in (tmp, link):
            try:
                if p.is_symlink():
                    p.unlink()  # a stale link would name another trial
            except OSError:
                pass


def _write_best_quietly(root: Path) -> None:
    try:
        write_best(root)
    except (
        OSError,
        ValueError,
        KeyError,
    ) as e:  # never hides the error or Ctrl-C that ended the sweep
        log.warning("%s: could not write %s: %s", root, BEST, e)


def _searched_run(root: Path) -> tuple[Path, str]:
    try:
        rec = json.loads((root / BEST).read_text(encoding="utf-8"))
        run = root / rec["run_dir"]
        if (run / "metrics.json").is_file():
            return run, (
                f"search {root}: using {rec['configuration']}, seed {rec['seed']} (validation "
                f"{rec['metric']} of {rec['task']} = {rec['value']:.3g})"
            )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise NoFinishedTrial(
        f"{root}: a search folder whose best setting has not been trained yet; finish the search "
        f"(msmtfn-sweep --search ... --out {root} --resume) or give a trial's run folder "
        f"({root / 'trials'}/<number>)"
    )


def resolve_run(path: str | Path) -> tuple[Path, str | None]:
    """The run folder ``path`` names, and a note saying how it was chosen (None when ``path`` is
    taken as it is).

    A sweep folder (it holds ``sweep.json``) or its ``best`` link (also where the link could not be
    made) stands for the trial the sweep selected by validation (``best.json``, else
    :func:`select_best` over the finished trials): that trial's run folder, and the note ``sweep
    SWEEP: using trial <configuration>/s<seed> (validation macro_f1 of 5 = 0.71)``. Any other path
    is returned as it is (a run folder, or a path the caller's own checks reject). A sweep with no
    finished trial raises :class:`NoFinishedTrial` (an OSError) with one line. Reads files only: no
    torch, nothing written."""
    p = Path(path)
    if p.name == BEST_LINK and (p.parent / "sweep.json").is_file():
        root = p.parent
    elif (p / "sweep.json").is_file():
        root = p
    elif (p / "search.json").is_file():  # a search (train/search.py): its best.json only
        return _searched_run(p)
    else:
        return p, None
    rec = None
    try:
        rec = json.loads((root / BEST).read_text(encoding="utf-8"))
        if not (root / rec["run_dir"] / "metrics.json").is_file():
            rec = None
    except (OSError, ValueError, KeyError, TypeError):
        rec = None
    rec = rec or select_best(root)
    if rec is None:
        raise NoFinishedTrial(
            f"{root}: a sweep folder with no finished trial yet (see {root / 'trials.csv'}); "
            f"finish one (msmtfn-sweep ... --out {root} --resume) or give a trial's run folder "
            f"({root / 'trials'}/<configuration>/s<seed>)"
        )
    note = (
        f"sweep {root}: using trial {rec['configuration']}/s{rec['seed']} (validation {rec['metric']} of "
        f"{rec['task']} = {rec['value']:.3g})"
    )
    return root / rec["run_dir"], note


def run_sweep(opts: SweepOptions) -> dict:
    """Run every missing trial; returns the summary (also written as results.csv/.md/.png and
    best.json in the sweep folder). Ctrl-C raises :class:`SweepInterrupted` (a KeyboardInterrupt)
    naming the command that resumes."""
    spec = read_grid(opts.grid, seeds=opts.seeds, overrides=opts.overrides)
    root = Path(opts.out) if opts.out else Path("runs") / "sweeps" / spec.name
    try:
        return _run_sweep(opts, spec, root)
    except SweepInterrupted:
        raise
    except KeyboardInterrupt:
        raise SweepInterrupted(root, resume_command(opts, root)) from None


def _run_sweep(opts: SweepOptions, spec: SweepSpec, root: Path) -> dict:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .data import TrainError, load_cache
    from .loop import resolve_device

    manifest = root / "sweep.json"
    device = resolve_device(opts.device)
    if manifest.exists() and not opts.resume:
        raise TrainError(
            f"{root}: a sweep is already there; add --resume to run only its missing trials, or "
            "choose another --out"
        )
    _check_value("--max-cache-gb", "max_cache_gb", opts.max_cache_gb)
    configs = _trial_configs(opts, spec, root, device)
    loaded = load_cache(opts.cache, device, opts.max_cache_gb)
    _claim_sweep(root, spec, loaded.store, configs)
    trials = spec.trials()
    status: dict[tuple[str, int], dict] = {}
    todo = []
    for config, seed in trials:
        d = trial_dir(root, config, seed)
        if (d / "metrics.json").is_file():
            status[(config.name, seed)] = {"status": "done (earlier)", "run_dir": str(d)}
        else:
            todo.append((config, seed))
    log.info(
        "%s: %d trials (%d configurations × %d seeds); %d finished earlier, %d to run; cache "
        "loaded once on %s",
        root,
        len(trials),
        len(spec.configurations),
        len(spec.seeds),
        len(trials) - len(todo),
        len(todo),
        device,
    )

    tracked = open_run(TrackingOptions.of(opts), root, root.name)
    tracked.log_params({**spec.to_dict(), "cache_fingerprint": loaded.store.fingerprint})

    def one(config: Configuration, seed: int) -> tuple[tuple[str, int], dict]:
        return _one_trial(root, config, seed, configs[(config.name, seed)], loaded, tracked)

    _name_trial_records()
    bar = tqdm(total=len(todo), unit="trial", desc=spec.name, disable=not opts.progress)
    t_start = time.perf_counter()
    # log lines go through tqdm.write while the bar is shown, so they never run into it
    redirect = logging_redirect_tqdm() if opts.progress else contextlib.nullcontext()
    try:
        with redirect:
            _run_trials(opts, todo, one, status, bar, root, spec)
    except BaseException:
        tracked.end("KILLED")
        raise
    finally:
        bar.close()
        _write_trials(root, spec, status)
        _write_best_quietly(root)  # also after Ctrl-C: best.json follows every finished trial
    summary = report(root)
    tracked.log_artifacts(root, SWEEP_ARTIFACTS)
    tracked.end("FINISHED")
    summary["seconds"] = time.perf_counter() - t_start
    summary["trials_run"] = len(todo)
    summary["failed"] = [
        {"configuration": c, "seed": sd, "reason": st["status"]}
        for (c, sd), st in status.items()
        if st["status"].startswith("failed")
    ]
    return summary


def _trial_configs(opts: SweepOptions, spec: SweepSpec, root: Path, device) -> dict:
    """Every trial's exact settings, made before the cache is loaded or anything is written."""
    configs: dict[tuple[str, int], TrainConfig] = {}
    for config, seed in spec.trials():
        try:
            configs[(config.name, seed)] = TrainConfig.from_dict(
                {
                    **config.settings,
                    "cache": opts.cache,
                    "out": str(trial_dir(root, config, seed)),
                    "seed": seed,
                    "device": str(device),
                    "progress": False,
                    "max_cache_gb": opts.max_cache_gb,
                },
                source=f"{spec.source}: {config.name!r} seed {seed}",
            )
        # checked in read_grid already; a ConfigError (exit 2) all the same
        except (TypeError, ValueError) as e:
            raise ConfigError(
                str(e) if isinstance(e, ConfigError) else f"{spec.source}: {config.name!r}: {e}"
            ) from None
    return configs


def _claim_sweep(root: Path, spec: SweepSpec, store, configs: dict) -> None:
    """sweep.json written, once the folder is this sweep's (the same cache) and its kept trials
    agree with the grid."""
    from .data import TrainError

    manifest = root / "sweep.json"
    record = {
        "spec": spec.to_dict(),
        "cache": {"path": str(store.path), "fingerprint": store.fingerprint},
    }
    if manifest.exists():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        if old.get("cache", {}).get("fingerprint") != store.fingerprint:
            was = old.get("cache", {}).get("fingerprint")
            raise TrainError(
                f"{root}: this sweep was run on another cache (fingerprint {was}); resume it on "
                "that cache or use another --out"
            )
    _check_kept_trials(root, configs, store)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, record)


# a sweep folder's files kept in the tracker's parent run
SWEEP_ARTIFACTS = ("sweep.json", "trials.csv", "results.csv", "results.md", "results.png", BEST)


def _one_trial(root: Path, config, seed: int, cfg: TrainConfig, loaded, tracked=NULL) -> tuple:
    """Train one trial on the loaded cache; a failure is recorded, never raised."""
    from .loop import fit

    d = trial_dir(root, config, seed)
    t0 = time.perf_counter()
    # every log line of this trial (this thread) is named by it
    token = TRIAL.set(trial_name(config, seed))
    try:
        m = fit(cfg, resume=True, loaded=loaded, parent=tracked)
        state = "resumed" if m.get("resumed_after_epoch") else "done"
        return (config.name, seed), {
            "status": state,
            "run_dir": str(d),
            "seconds": time.perf_counter() - t0,
        }
    # any failure of one trial (a bad combination, out of memory, a bug it hits) must not stop
    # the others
    except Exception as e:  # noqa: BLE001
        log.error("trial failed: %s (traceback: %s)", e, d / "error.txt")
        d.mkdir(parents=True, exist_ok=True)
        (d / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        return (config.name, seed), {
            "status": f"failed: {str(e).splitlines()[0][:200]}",
            "run_dir": str(d),
            "seconds": time.perf_counter() - t0,
        }
    finally:
        TRIAL.reset(token)


def _run_trials(
    opts: SweepOptions, todo: list, one, status: dict, bar, root: Path, spec: SweepSpec
) -> None:
    if opts.parallel <= 1:
        for config, seed in todo:
            key, st = one(config, seed)
            status[key] = st
            bar.update()
            _write_trials(root, spec, status)
    else:
        with ThreadPoolExecutor(max_workers=opts.parallel) as ex:
            # each worker thread runs in a copy of this context: TRIAL set there stays its own
            for key, st in ex.map(lambda cs: contextvars.copy_context().run(one, *cs), todo):
                status[key] = st
                bar.update()
                _write_trials(root, spec, status)


def _check_kept_trials(root: Path, configs: dict[tuple[str, int], TrainConfig], store) -> None:
    """A trial folder the sweep would keep (finished, or resumable from its training state) must
    hold a run with the settings this sweep gives that trial: otherwise old results would be
    reported under new settings."""
    from .checkpoint import STATE
    from .data import TrainError
    from .loop import resume_problem

    problems = []
    for cfg in configs.values():
        d = Path(cfg.out)
        # a folder with neither (a trial that failed before its first state) keeps nothing: it
        # simply runs again
        if (d / "metrics.json").is_file() or (d / STATE).is_file():
            # msmtfn-train --resume's own check: same settings, same cache
            problem = resume_problem(cfg, store)
            if problem:
                problems.append(problem)
    if problems:
        more = f" ({len(problems)} trials in all)" if len(problems) > 1 else ""
        raise TrainError(
            f"{root}: a trial there was run with other settings{more}: {problems[0]} (a sweep's own "
            "settings are its grid file, --set and the seed)"
        )


def _write_trials(root: Path, spec: SweepSpec, status: dict) -> None:
    rows = [
        {
            "configuration": c.name,
            "seed": s,
            **status.get((c.name, s), {"status": "pending", "run_dir": str(trial_dir(root, c, s))}),
        }
        for c, s in spec.trials()
    ]
    _write_csv(root / "trials.csv", rows, ["configuration", "seed", "status", "seconds", "run_dir"])


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------- results
def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    if not values:
        return float("nan"), float("nan")
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


SPLITS_REPORTED = (("test", ""), ("val", "val_"))  # metrics.json key, column prefix: never mixed


def aggregate(root: Path) -> tuple[SweepSpec, list[dict], list[str]]:
    """Per configuration: mean ± std over its finished seeds of each task's test metrics (percent;
    columns ``{metric}_{task}_mean``), the same for validation (``val_…``), the mean half-width of
    the test figures' 95 % bootstrap intervals (``ci_…``) and how the checkpoints were selected
    (``selected_on``). A run without a test split leaves the test columns empty; validation figures
    never stand in for test ones."""
    import numpy as np

    from .metrics import METRIC_TABLE, task_kind

    figures = _figures()
    record = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
    s = record["spec"]
    spec = SweepSpec(
        s["name"],
        tuple(
            Configuration(c["name"], c["settings"], c.get("paper", {})) for c in s["configurations"]
        ),
        tuple(s["seeds"]),
        s.get("task"),
        s["source"],
    )
    rows, tasks = [], []
    for config in spec.configurations:
        runs = []
        for seed in spec.seeds:
            p = trial_dir(root, config, seed) / "metrics.json"
            if p.is_file():
                runs.append(json.loads(p.read_text(encoding="utf-8")))
        row = {"configuration": config.name, "seeds_done": len(runs), "seeds": len(spec.seeds)}
        selected = sorted(
            {
                f"{m['selection']['task']}: {m['selection']['metric'].split(' (')[0]}"
                for m in runs
                if "selection" in m
            }
        )
        row["selected_on"] = "; ".join(selected)
        for m in runs:
            for t in list(m.get("test") or {}) + list(m["val"]):
                if t not in tasks:
                    tasks.append(t)
        row["_kinds"] = {t: task_kind(m, t) for m in runs for t in m["val"]}
        for t in tasks:
            for k in figures:
                scale = 100 if k not in METRIC_TABLE or METRIC_TABLE[k].percent else 1
                for split, prefix in SPLITS_REPORTED:
                    vals = [
                        scale * m[split][t][k] for m in runs if k in (m.get(split) or {}).get(t, {})
                    ]
                    if vals:
                        row[f"{prefix}{k}_{t}_mean"], row[f"{prefix}{k}_{t}_std"] = _mean_std(vals)
                halves = [
                    scale * (m["test"][t]["ci95"][k][1] - m["test"][t]["ci95"][k][0]) / 2
                    for m in runs
                    if k in (m.get("test") or {}).get(t, {}).get("ci95", {})
                ]
                if halves:
                    row[f"ci_{k}_{t}"] = float(np.mean(halves))
        for key, val in config.paper.items():
            row[f"paper_{key}"] = val
        row["_paper"] = config.paper
        rows.append(row)
    return spec, rows, tasks


def _primary(spec: SweepSpec, tasks: list[str]) -> str:
    if spec.task and spec.task in tasks:
        return spec.task
    base = spec.configurations[0].settings.get("task") if spec.configurations else None
    return str(base) if base is not None and str(base) in tasks else (tasks[0] if tasks else "")


def report(root: str | Path) -> dict:
    """Write results.csv, results.md, results.png and best.json (+ the ``best`` link) from the
    trials' metrics; returns the summary (``best``: the selected trial's record, or None)."""
    from .data import TrainError

    root = Path(root)
    if not (root / "sweep.json").is_file():
        raise TrainError(f"{root}: not a sweep folder (no sweep.json)")
    spec, rows, tasks = aggregate(root)
    primary = _primary(spec, tasks)
    # sorted by MAE (lower first) for a regression task
    lower_better = _is_regression(rows, primary)
    # sorted on validation, the split the checkpoints were chosen on; test is read, never optimised
    key = f"val_mae_{primary}_mean" if lower_better else f"val_accuracy_{primary}_mean"
    sign = 1 if lower_better else -1
    rows.sort(key=lambda r: sign * r[key] if not math.isnan(r.get(key, float("nan"))) else math.inf)
    papers = sorted({k for r in rows for k in r["_paper"]})
    present = [
        k
        for k in _figures()
        if any(f"{k}_{t}_mean" in r or f"val_{k}_{t}_mean" in r for r in rows for t in tasks)
    ]
    fields = (
        ["configuration", "seeds_done", "seeds", "selected_on"]
        + [
            f"{prefix}{k}_{t}_{s}"
            for t in tasks
            for k in present
            for prefix in ("val_", "")
            for s in ("mean", "std")
            if any(f"{prefix}{k}_{t}_mean" in r for r in rows)
        ]
        + [f"ci_{k}_{t}" for t in tasks for k in present if any(f"ci_{k}_{t}" in r for r in rows)]
        + [f"paper_{k}" for k in papers]
    )
    _write_csv(root / "results.csv", rows, fields)
    md = _markdown(spec, rows, tasks, primary, papers)
    atomic_write_bytes(root / "results.md", md.encode("utf-8"))
    if rows and tasks:
        _bar_chart(spec, rows, primary, root / "results.png")
    best = write_best(root)
    return {
        "sweep": str(root),
        "task": primary,
        "tasks": tasks,
        "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "markdown": md,
        "best": best,
    }


def _figures() -> tuple[str, ...]:
    """The figures a results table reports: the metric table's, and CMU-MOSI's zero-free Acc2."""
    from .metrics import METRIC_TABLE

    return (*METRIC_TABLE, "accuracy_nonzero")


def _is_regression(rows: list[dict], task: str) -> bool:
    from .metrics import REGRESSION

    return any(r.get("_kinds", {}).get(task) == REGRESSION for r in rows)


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(
    spec: SweepSpec, rows: list[dict], tasks: list[str], primary: str, papers: list[str]
) -> str:
    order = [primary] + [t for t in tasks if t != primary]
    reg = [t for t in order if _is_regression(rows, t)]
    # class heads beside a regression: CSV only
    cls = [t for t in order if t not in reg and ":" not in t]
    nz = [t for t in cls if any(f"accuracy_nonzero_{t}_mean" in r for r in rows)]
    main_metric = "mae" if primary in reg else "accuracy"
    main_name = f"MAE {primary}" if primary in reg else f"acc{primary}"
    head = (
        [
            "configuration",
            "seeds",
            "selected on",
            f"val {main_name}",
            f"test {main_name}",
            "95% CI ±",
        ]
        + [h for t in reg if t != primary for h in (f"MAE {t}",)]
        + [h for t in reg for h in (f"Corr {t}",)]
        + [f"acc{t}" for t in cls if t != primary]
        + [f"acc{t} non-zero" for t in nz]
        + [f"F1{t} (weighted)" for t in cls]
        + [f"paper {k}" for k in papers]
    )
    title = (
        f"### {spec.name}: validation and test, mean ± std over seeds (checkpoints selected on validation; "
        f"sorted by val {main_name})"
    )
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    digits = 3 if primary in reg else 2
    for r in rows:

        def get(key, r=r):
            return r.get(f"{key}_mean", math.nan), r.get(f"{key}_std", math.nan)

        ci = r.get(f"ci_{main_metric}_{primary}", math.nan)
        cells = [
            r["configuration"],
            f"{r['seeds_done']}/{r['seeds']}",
            r.get("selected_on", ""),
            _fmt(*get(f"val_{main_metric}_{primary}"), digits),
            _fmt(*get(f"{main_metric}_{primary}"), digits),
            "–" if math.isnan(ci) else f"{ci:.{digits}f}",
        ]
        cells += [_fmt(*get(f"mae_{t}"), 3) for t in reg if t != primary]
        cells += [_fmt(*get(f"corr_{t}"), 3) for t in reg]
        cells += [_fmt(*get(f"accuracy_{t}")) for t in cls if t != primary]
        cells += [_fmt(*get(f"accuracy_nonzero_{t}")) for t in nz]
        cells += [_fmt(*get(f"weighted_f1_{t}")) for t in cls]
        cells += [f"{r['_paper'][k]:.2f}" if k in r["_paper"] else "" for k in papers]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Columns after the first test one are test figures. '95% CI ±': mean half-width of one run's "
        "bootstrap interval over test calls (differences smaller than it are noise). Every validation "
        "figure, macro-F1 and std is in results.csv. Paper figures are the published ones (single runs)."
    )
    if len({r.get("selected_on") for r in rows if r.get("selected_on")}) > 1:
        lines.append(
            "NOTE: rows were selected on different validation criteria ('selected on'): compare them "
            "with care."
        )
    return "\n".join(lines) + "\n"


def _bar_chart(spec: SweepSpec, rows: list[dict], task: str, path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["configuration"] for r in rows]
    metric = "mae" if _is_regression(rows, task) else "accuracy"
    means = [r.get(f"{metric}_{task}_mean", math.nan) for r in rows]
    stds = [r.get(f"{metric}_{task}_std", math.nan) for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ax.bar(
        x, means, yerr=stds, capsize=4, color="#4c72b0", label="this sweep (mean ± std over seeds)"
    )
    paper = [
        r["_paper"].get(f"{'mae' if metric == 'mae' else 'acc'}{task}", math.nan) for r in rows
    ]
    if not all(math.isnan(p) for p in paper):
        ax.scatter(x, paper, marker="D", color="#dd8452", zorder=3, label="paper")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(
        f"test MAE, task {task}" if metric == "mae" else f"test accuracy, {task}-class task (%)"
    )
    ax.set_title(spec.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
