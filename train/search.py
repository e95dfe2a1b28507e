"""Hyperparameter search: an Optuna study over one loaded cache, selected on validation only.

A search space file (TOML)::

    name = "lr-dropout"          # optional (default: the file's stem); also the study's name
    task = "2"                   # optional: the task whose validation score is the objective

    [base]                       # fixed settings of every trial: any msmtfn-train option
    epochs = 30

    [search]                     # what the sampler chooses
    lr = { low = 1e-5, high = 1e-3, log = true }   # a float (log scale)
    dropout = { low = 0.0, high = 0.5 }            # a float
    bottleneck_tokens = { low = 2, high = 8, step = 2 }   # a whole number
    pooling = ["mean", "flatten"]                  # one of these

Every key, type and range is checked before anything runs (:class:`ConfigError`, one line naming the
file and the key). Trials are numbered by the study and trained by :class:`train.loop.TrainingRun`
into ``<out>/trials/<number>`` from one in-memory copy of the cache; each epoch's validation
selection score (the label scheme's metric of ``task``; MAE negated, so larger is better) goes to
the pruner, which may stop the trial. The test split is never scored during the search. The study
lives in ``<out>/study.db`` (SQLite) unless ``storage`` names another (an RDB URL, or a journal
file). ``--resume`` after a kill at any moment finishes the same study to exactly ``trials``
finished (complete or pruned) trials: a trial left running by the killed process is marked failed
and replaced. At the end the best setting is trained again over ``seeds`` seeds with test figures
(``<out>/best/s<seed>``), and ``results.csv``/``results.md``/``best.json`` and two plots are
written.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import json
import logging
import math
import os
import socket
import threading
import time
import tomllib
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.atomic import atomic_write_json, atomic_write_text

from .config import ConfigError, TrainConfig
from .sweep import (
    BEST,
    TRIAL,
    _check_configuration,
    _check_keys,
    _check_value,
    _checked_settings,
    _link,
    _name_trial_records,
    _table,
)
from .tracking import NULL, TrackingOptions, attach, open_run

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SPACE_KEYS = ("name", "task", "base", "search")
MANIFEST = "search.json"
OWNER = "msmtfn_owner"  # user attribute: host:pid of the process that runs the trial


@dataclass(frozen=True)
class Param:
    """One searched setting: a float or whole-number range, or a list of choices."""

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def to_dict(self) -> dict:
        if self.kind == "categorical":
            return {"name": self.name, "choices": list(self.choices)}
        d = {"name": self.name, "low": self.low, "high": self.high, "log": self.log}
        return {**d, "step": self.step} if self.step is not None else d

    def corners(self) -> list:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpec:
    name: str
    base: dict
    params: tuple[Param, ...]
    task: str | None
    source: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "base": self.base,
            "params": [p.to_dict() for p in self.params],
            "task": self.task,
            "source": self.source,
        }


def _field_types() -> dict[str, str]:
    # from __future__ annotations: the field types are their source text
    return {f.name: str(f.type) for f in fields(TrainConfig)}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param(key: str, value, where: str) -> Param:
    """One ``[search]`` entry, checked against the setting's type and valid values."""
    kind = _field_types()[key]
    at = f"{where} {key}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{at}: an empty list of choices; give at least two values")
        for v in value:
            if not isinstance(v, (bool, int, float, str)):
                raise ConfigError(
                    f"{at}: choice {v!r}: a choice is a number, a string or a boolean"
                )
            _check_value(at, key, v)
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{at}: a choice is listed twice in {value!r}")
        return Param(key, "categorical", choices=tuple(value))
    if not isinstance(value, dict):
        raise ConfigError(
            f"{at} = {value!r}: expected a range {{ low = …, high = … }} (with log = true or step = "
            "…) or a list of choices"
        )
    unknown = [k for k in value if k not in ("low", "high", "log", "step")]
    if unknown:
        raise ConfigError(
            f"{at}: unknown key {unknown[0]!r} in the range; valid: low, high, log, step"
        )
    for k in ("low", "high"):
        if k not in value:
            raise ConfigError(f"{at}: the range needs {k}")
    low, high, logscale, step = (
        value["low"],
        value["high"],
        value.get("log", False),
        value.get("step"),
    )
    if not isinstance(logscale, bool):
        raise ConfigError(f"{at}: log = {logscale!r}: expected true or false")
    if kind == "int":
        for k, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool)):
                raise ConfigError(f"{at}: {k} = {v!r}: {key} is a whole number")
    elif kind == "float":
        for k, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and not _number(v):
                raise ConfigError(f"{at}: {k} = {v!r}: expected a number")
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    else:
        raise ConfigError(
            f"{at}: {key} is a {kind} setting; search it with a list of choices, e.g. "
            f"{key} = [{_example(key)}]"
        )
    if not low < high:
        raise ConfigError(f"{at}: low ({low:g}) must be below high ({high:g})")
    if logscale and low <= 0:
        raise ConfigError(f"{at}: a log range needs low > 0 (got {low:g})")
    if step is not None:
        if step <= 0 or step > high - low:
            raise ConfigError(f"{at}: step {step:g} must be above 0 and at most high - low")
        if logscale:
            raise ConfigError(f"{at}: a range takes log = true or a step, not both")
    for v in (low, high):
        _check_value(at, key, v)
    return Param(key, kind, low=low, high=high, log=logscale, step=step)


def _example(key: str) -> str:
    default = TrainConfig.__dataclass_fields__[key].default
    return "true, false" if isinstance(default, bool) else f'"{default}"'


def parse_space(
    data: dict, name: str = "search", source: str = "", overrides: dict | None = None
) -> SearchSpec:
    """A search space file's table, checked: ``overrides`` (``--set``) fix settings in every trial
    (a searched key cannot also be fixed)."""
    source = source or "search space"
    for key in data:
        if key not in SPACE_KEYS:
            raise ConfigError(
                f"{source}: unknown top-level key {key!r}; valid: {', '.join(SPACE_KEYS)} (training "
                "settings go under [base] or [search])"
            )
    base = _checked_settings(data.get("base", {}), f"{source}: [base]")
    overrides = _checked_settings(overrides or {}, "--set")
    raw = _table(data.get("search", {}), f"{source}: [search]")
    if not raw:
        raise ConfigError(f"{source}: [search] is empty; name at least one setting to search")
    where = f"{source}: [search]"
    searched = {}
    for k, v in raw.items():
        clean = _check_keys({k: None}, where)
        searched[next(iter(clean))] = v
    params = []
    for key, value in searched.items():
        if key in base or key in overrides:
            fixed = "[base]" if key in base else "--set"
            raise ConfigError(
                f"{where} {key}: also fixed in {fixed}; a setting is fixed or searched"
            )
        params.append(_param(key, value, where))
    fixed = {**base, **overrides}
    # the space's corners must each make a valid configuration (e.g. heads dividing d_model)
    for pick in (0, -1):
        trial = {p.name: p.corners()[pick] for p in params}
        _check_configuration({**fixed, **trial}, source, "lowest" if pick == 0 else "highest")
    task = data.get("task")
    return SearchSpec(
        name=str(data.get("name", name)),
        base=fixed,
        params=tuple(params),
        task=str(task) if task is not None else None,
        source=source,
    )


def read_space(path: str | Path, overrides: dict | None = None) -> SearchSpec:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the search space ({e.strerror or e})") from None
    except ValueError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    return parse_space(data, name=p.stem, source=str(p), overrides=overrides)


# --------------------------------------------------------------------------- the study
def open_storage(url: str | None, root: Path):
    """An Optuna storage: an RDB URL (sqlite:///…, postgresql://…), a journal file (any other
    path), or ``<root>/study.db``."""
    import optuna

    # SQLite: trials of several processes (dask workers) wait for the file's lock, not fail
    wait = {"connect_args": {"timeout": 60}}
    if not url:
        path = (root / "study.db").resolve()
        return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs=wait)
    if "://" in url:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=wait if url.startswith("sqlite") else None
        )
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(url).expanduser())))


def make_sampler(name: str, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int):
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    # a trial is compared from its second epoch on, once 5 trials have finished
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether the process named ``host:pid`` may still run the trial (another host: assume so)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return host != socket.gethostname()
    if int(pid) == os.getpid():
        return False  # this process has just started: the trial is a killed run's
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphans(study) -> list[int]:
    """Mark failed the trials a killed process left running (this host, process gone); their
    numbers."""
    from optuna.trial import TrialState

    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER, "")
        if not owner or not _alive(owner):
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            orphans.append(t.number)
    return orphans


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def trial_folder(root: Path, number: int) -> Path:
    return root / "trials" / f"{number:04d}"


# --------------------------------------------------------------------------- running
class _Pruned(Exception):
    def __init__(self, epoch: int, value: float):
        self.epoch, self.value = epoch, value


def _train_trial(trial, cfg: TrainConfig, loaded, parent=NULL) -> tuple[float, int]:
    """Train one trial, reporting each epoch's validation score; (the selected epoch's score, epochs
    run). Raises :class:`_Pruned` when the pruner stops it."""
    from .loop import TrainingRun

    run = TrainingRun(cfg, loaded=loaded, score_test=False, parent=parent)
    try:
        run.start()
        run.tracked.set_tags({"optuna.trial": trial.number})
        for epoch in run.epochs():
            stop = run.epoch(epoch)
            value = run.last_score[0]
            if math.isfinite(value):
                trial.report(value, epoch)
                if trial.should_prune():
                    raise _Pruned(epoch, value)
            if stop:
                break
        run.finish()
    except _Pruned:
        run.tracked.set_tags({"optuna.state": "PRUNED"})
        run.tracked.end("KILLED")
        raise
    except BaseException:
        run.tracked.end("FAILED")
        raise
    return run.best_score[0], len(run.history)


def _trial_config(
    opts, spec: SearchSpec, out: Path, params: dict, seed: int, device
) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            **spec.base,
            **params,
            **({"task": spec.task} if spec.task is not None else {}),
            "cache": opts.cache,
            "out": str(out),
            "seed": seed,
            "device": str(device),
            "progress": False,
            "max_cache_gb": opts.max_cache_gb,
        },
        source=f"{spec.source}: {out.name}",
    )


def _claim_search(root: Path, spec: SearchSpec, opts, store) -> None:
    """search.json written, once the folder is this search's: the same cache and the same space."""
    from .data import TrainError

    manifest = root / MANIFEST
    record = {
        "spec": spec.to_dict(),
        "study": spec.name,
        "storage": opts.storage or "study.db (SQLite, in this folder)",
        "sampler": opts.sampler,
        "pruner": opts.pruner,
        "cache": {"path": str(store.path), "fingerprint": store.fingerprint},
    }
    if manifest.exists():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        if old.get("cache", {}).get("fingerprint") != store.fingerprint:
            raise TrainError(
                f"{root}: this search was run on another cache (fingerprint "
                f"{old.get('cache', {}).get('fingerprint')}); resume it on that cache or use another --out"
            )
        if (
            old.get("spec", {}).get("params") != record["spec"]["params"]
            or old["spec"].get("base") != record["spec"]["base"]
        ):
            raise TrainError(
                f"{root}: this search has another space ({old['spec'].get('source')}); resume it with "
                "that file and the same --set, or use another --out"
            )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, record)


def run_search(opts) -> dict:
    """Run the study to ``opts.trials`` finished trials, then the best setting over ``opts.seeds``
    seeds with test figures; returns the summary (also written as results.csv/.md, best.json)."""
    import optuna

    from .data import TrainError, load_cache
    from .loop import resolve_device

    spec = read_space(opts.search, overrides=opts.overrides)
    root = Path(opts.out) if opts.out else Path("runs") / "searches" / spec.name
    if not isinstance(opts.trials, int) or opts.trials < 1:
        raise ConfigError(
            f"--trials {opts.trials!r}: give the number of finished trials wanted (1 or more)"
        )
    manifest = root / MANIFEST
    if manifest.exists() and not opts.resume:
        raise TrainError(
            f"{root}: a search is already there; add --resume to finish its study, or choose another --out"
        )
    device = resolve_device(opts.device)
    loaded = load_cache(opts.cache, device, opts.max_cache_gb)
    _claim_search(root, spec, opts, loaded.store)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = _trial_config(
        opts, spec, root, {p.name: p.corners()[0] for p in spec.params}, 0, device
    )
    study = optuna.create_study(
        study_name=spec.name,
        storage=open_storage(opts.storage, root),
        sampler=make_sampler(opts.sampler, opts.sampler_seed),
        pruner=make_pruner(opts.pruner, probe.epochs),
        direction="maximize",
        load_if_exists=True,
    )
    orphans = fail_orphans(study) if opts.resume else []
    if orphans:
        log.info(
            "%s: trial(s) %s were left running by a killed run: marked failed, replaced",
            root,
            orphans,
        )
    t0 = time.perf_counter()
    _name_trial_records()
    tracked = open_run(TrackingOptions.of(opts), root, root.name)
    tracked.log_params({"sampler": opts.sampler, "pruner": opts.pruner, **spec.to_dict()})
    try:
        summary = _search(opts, spec, root, study, loaded, device, tracked)
    except BaseException:
        tracked.end("KILLED")
        raise
    summary["seconds"] = time.perf_counter() - t0
    tracked.log_metrics({"best_validation": summary["best"]["value"]})
    tracked.log_artifacts(root, SEARCH_ARTIFACTS)
    tracked.end("FINISHED")
    return summary


# a search folder's files kept in the tracker's parent run
SEARCH_ARTIFACTS = (MANIFEST, "results.csv", "results.md", "best.json", "history.png")
SEARCH_ARTIFACTS += ("importances.png",)


def _search(opts, spec: SearchSpec, root: Path, study, loaded, device, tracked) -> dict:
    """The study to its trials, then the best setting's seeds and the results."""
    from .data import TrainError

    failures = _optimise(opts, spec, root, study, loaded, device, tracked)
    done = finished_trials(study)
    complete = [t for t in done if t.state.name == "COMPLETE"]
    if not complete:
        raise TrainError(
            f"{root}: no trial completed ({len(done)} pruned, {failures} failed; tracebacks in "
            f"{root / 'trials'}/<number>/error.txt); fix the cause and run the same command with --resume"
        )
    best = study.best_trial
    finals = _final_runs(opts, spec, root, best, loaded, device, tracked)
    summary = write_results(root, study, spec, finals, best)
    summary["failed"] = failures
    return summary


def _run_trial(trial, opts, spec: SearchSpec, root: Path, loaded, device, tracked) -> tuple:
    """Train one asked trial: (state, value); a failure is recorded in its folder, never raised."""
    from optuna.trial import TrialState

    token = TRIAL.set(f"trial {trial.number}")
    folder = trial_folder(root, trial.number)
    try:
        cfg = _trial_config(opts, spec, folder, trial.params, 0, device)
        value, epochs = _train_trial(trial, cfg, loaded, tracked)
        trial.set_user_attr("epochs", epochs)
        return TrialState.COMPLETE, value
    except _Pruned as p:
        trial.set_user_attr("epochs", p.epoch)
        log.info("pruned after epoch %d (validation score %.4g)", p.epoch, p.value)
        return TrialState.PRUNED, p.value
    # any failure of one trial (a bad combination, out of memory) must not stop the study
    except Exception as e:  # noqa: BLE001
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        log.error("trial failed: %s (traceback: %s)", e, folder / "error.txt")
        trial.set_user_attr("error", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return TrialState.FAIL, None
    finally:
        TRIAL.reset(token)


# a dask worker's caches, loaded once per process and kept for every trial it runs
_WORKER_CACHES: dict[tuple, object] = {}
_WORKER_LOADS: dict[tuple, int] = {}  # loads per cache in this process (1: reused by every trial)
_WORKER_LOCK = threading.Lock()


def _worker_cache(opts):
    """The cache in this worker process: loaded by its first trial, reused by the others."""
    from .data import load_cache
    from .loop import resolve_device

    key = (opts.cache, opts.device, opts.max_cache_gb)
    with _WORKER_LOCK:
        if key not in _WORKER_CACHES:
            device = resolve_device(opts.device)
            _WORKER_CACHES[key] = load_cache(opts.cache, device, opts.max_cache_gb)
            _WORKER_LOADS[key] = _WORKER_LOADS.get(key, 0) + 1
        return _WORKER_CACHES[key], _WORKER_LOADS[key]


def _dask_trial(opts, spec: SearchSpec, root: Path, trial_id: int, epochs: int) -> tuple:
    """One trial on a dask worker: the study reopened from its shared storage (the trial's reports
    and the pruner's decisions go through it), the worker's own copy of the cache."""
    import optuna

    loaded, loads = _worker_cache(opts)
    study = optuna.load_study(
        study_name=spec.name,
        storage=open_storage(opts.storage, root),
        pruner=make_pruner(opts.pruner, epochs),
    )
    trial = optuna.trial.Trial(study, trial_id)
    trial.set_user_attr("worker", _owner())
    trial.set_user_attr("worker_cache_loads", loads)
    tracked = attach(TrackingOptions.of(opts), root)
    state, value = _run_trial(trial, opts, spec, root, loaded, loaded.device, tracked)
    return state.name, value


@contextlib.contextmanager
def _executor(opts):
    """Where trials run: threads of this process, or a dask cluster (``--scheduler`` or a local
    one of ``--dask-workers`` processes); and how many at once."""
    if not (opts.scheduler or opts.dask_workers):
        with ThreadPoolExecutor(max_workers=max(1, opts.parallel)) as ex:
            yield ex, max(1, opts.parallel)
        return
    from distributed import Client, LocalCluster

    if opts.scheduler:
        cluster, client = None, Client(opts.scheduler)
    else:  # one thread each: a worker trains one trial at a time, torch uses the cores
        cluster = LocalCluster(
            n_workers=opts.dask_workers, threads_per_worker=1, dashboard_address=None
        )
        client = Client(cluster)
    try:
        slots = max(1, sum(client.nthreads().values()))
        log.info("dask: %d worker thread(s) at %s", slots, client.scheduler.address)
        yield client.get_executor(pure=False), slots
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _optimise(opts, spec: SearchSpec, root: Path, study, loaded, device, tracked=NULL) -> int:
    """Ask, train and tell until ``opts.trials`` trials have finished; at most ``opts.parallel``
    (or the dask cluster's threads) at once. Returns the number of failed trials of this run (a
    failure is replaced, never counted)."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    lock = threading.Lock()
    failures = 0
    bar = tqdm(
        total=opts.trials,
        initial=min(opts.trials, len(finished_trials(study))),
        unit="trial",
        desc=spec.name,
        disable=not opts.progress,
    )
    epochs = _trial_config(opts, spec, root, {}, 0, device).epochs
    with _executor(opts) as (ex, slots):
        running: dict = {}
        while True:
            with lock:
                n_done = len(finished_trials(study))
            if n_done + len(running) < opts.trials and failures < max(3, opts.trials):
                with lock:
                    trial = study.ask()
                    for p in spec.params:
                        p.suggest(trial)
                    trial.set_user_attr(OWNER, _owner())
                if opts.scheduler or opts.dask_workers:
                    future = ex.submit(_dask_trial, opts, spec, root, trial._trial_id, epochs)
                else:
                    ctx = contextvars.copy_context()
                    args = (trial, opts, spec, root, loaded, device, tracked)
                    future = ex.submit(ctx.run, _run_trial, *args)
                running[future] = trial
                if len(running) < slots:
                    continue
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                trial = running.pop(f)
                try:
                    state, value = f.result()
                # a dask worker that died with its trial (killed, out of memory): that trial fails
                except Exception as e:  # noqa: BLE001
                    log.error("trial %d lost: %s", trial.number, e)
                    trial.set_user_attr("error", f"lost: {str(e)[:180] or type(e).__name__}")
                    state, value = TrialState.FAIL, None
                state = TrialState[state] if isinstance(state, str) else state
                with lock:
                    if state == TrialState.COMPLETE and not math.isfinite(value):
                        state, value = TrialState.FAIL, None
                    failures += state == TrialState.FAIL
                    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
                bar.update(0 if state == TrialState.FAIL else 1)
    bar.close()
    return failures


def _final_runs(
    opts, spec: SearchSpec, root: Path, best, loaded, device, tracked=NULL
) -> list[dict]:
    """The best trial's setting trained again over ``opts.seeds`` seeds, now with test figures
    (resumable: a finished seed is kept)."""
    from .loop import fit

    seeds = opts.seeds if opts.seeds is not None else 3
    out = []
    for seed in range(seeds):
        folder = root / "best" / f"s{seed}"
        token = TRIAL.set(f"best/s{seed}")
        try:
            cfg = _trial_config(opts, spec, folder, best.params, seed, device)
            out.append(
                {
                    "seed": seed,
                    "run_dir": folder,
                    "metrics": fit(cfg, resume=True, loaded=loaded, parent=tracked),
                }
            )
        finally:
            TRIAL.reset(token)
    return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _trial_rows(study, spec: SearchSpec) -> tuple[list[dict], list[str]]:
    """Every trial as a results.csv row, complete ones first by validation (a pruned trial shows
    its last reported score)."""
    trials = sorted(
        study.get_trials(deepcopy=False),
        key=lambda t: (
            t.state.name != "COMPLETE",
            -(t.value if t.value is not None else -math.inf),
            t.number,
        ),
    )
    names = [p.name for p in spec.params]
    rows = []
    for t in trials:
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "validation": t.value if t.value is not None else last,
                "epochs": t.user_attrs.get("epochs", ""),
                **{n: t.params.get(n, "") for n in names},
                "run_dir": trial_folder(Path("."), t.number).as_posix(),
                "error": t.user_attrs.get("error", ""),
            }
        )
    return rows, ["trial", "state", "validation", "epochs", *names, "run_dir", "error"]


def _best_record(root: Path, spec: SearchSpec, finals: list[dict], best) -> dict:
    """best.json: of the best trial's seeds, the one with the best validation score."""
    m0 = finals[0]["metrics"]
    task, key = m0["selection"]["task"], m0["selection"]["key"]
    sign = -1 if key == "mae" else 1
    val = [f["metrics"]["val"][task][key] for f in finals]
    pick = max(
        range(len(finals)), key=lambda i: sign * val[i] if math.isfinite(val[i]) else -math.inf
    )
    return {
        "run_dir": finals[pick]["run_dir"].relative_to(root).as_posix(),
        "configuration": f"trial {best.number} (best of the search)",
        "seed": finals[pick]["seed"],
        "settings": {**spec.base, **best.params},
        "task": task,
        "metric": key,
        "value": val[pick],
        "split": "valid",
        "selected_by": f"validation {key} of task {task}: the study's best trial, then the best of "
        f"its {len(finals)} seeds",
    }


def _markdown(spec: SearchSpec, rows, header, finals, best, task: str, key: str) -> str:
    import numpy as np

    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    val = [f["metrics"]["val"][task][key] for f in finals]
    test = [f["metrics"]["test"].get(task, {}).get(key, math.nan) for f in finals]
    lines = [
        f"# Search {spec.name}",
        "",
        f"{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed. Objective: validation {key} of task {task}"
        + (" (negated: larger is better)" if key == "mae" else "")
        + "; the test split was not scored during the search.",
        "",
        f"Best trial {best.number}: "
        + ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
        + f" (validation {_fmt(best.value)}).",
        "",
        f"## The best setting over {len(finals)} seeds (checkpoints selected on validation)",
        "",
        f"| seed | validation {key} | test {key} | test 95 % interval |",
        "|---|---|---|---|",
    ]
    for f, v, t in zip(finals, val, test):
        ci = (f["metrics"]["test"].get(task, {}).get("ci95") or {}).get(key)
        shown = "[" + ", ".join(_fmt(x) for x in ci) + "]" if ci else ""
        lines.append(f"| {f['seed']} | {_fmt(v)} | {_fmt(t)} | {shown} |")
    finite = [t for t in test if math.isfinite(t)]
    if finite:
        lines.append(
            f"| mean ± std | {np.mean(val):.4g} ± {np.std(val):.2g} | "
            f"{np.mean(finite):.4g} ± {np.std(finite):.2g} | |"
        )
    shown = header[:-2]
    lines += ["", "## Every trial, best validation first", ""]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        lines.append("| " + " | ".join("" if r[h] is None else _fmt(r[h]) for h in shown) + " |")
    return "\n".join(lines) + "\n"


def write_results(root: Path, study, spec: SearchSpec, finals: list[dict], best) -> dict:
    """results.csv (every trial, best validation first), results.md, best.json (and the link
    ``best-run``: the final run with the best validation score) and the study's plots."""
    rows, header = _trial_rows(study, spec)
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    rec = _best_record(root, spec, finals, best)
    atomic_write_json(root / BEST, rec)
    _link(root / "best-run", rec["run_dir"])
    task, key = rec["task"], rec["metric"]
    markdown = _markdown(spec, rows, header, finals, best, task, key)
    atomic_write_text(root / "results.md", markdown)
    _plots(root, study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    final = [
        {
            "seed": f["seed"],
            "validation": f["metrics"]["val"][task][key],
            "test": f["metrics"]["test"].get(task, {}).get(key, math.nan),
        }
        for f in finals
    ]
    return {
        "search": str(root),
        "markdown": markdown,
        "best": rec,
        "trials": counts,
        "final": final,
    }


def _plots(root: Path, study) -> None:
    """Optimisation history and parameter importances (offline PNG); skipped with a log line where
    the study is too small for one."""
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name, draw in (
        ("history.png", ov.plot_optimization_history),
        ("importances.png", ov.plot_param_importances),
    ):
        try:
            ax = draw(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            fig.savefig(root / name, dpi=110)
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 — e.g. importances of a study with one complete trial
            log.info("%s: no %s (%s)", root, name, e)
