"""Sweeps: many training configurations × seeds on one cache, loaded once, with tables a researcher can paste.

A grid file (TOML) names the trials::

    name = "my-sweep"           # optional (default: the file's stem)
    seeds = 3                   # or a list [0, 1, 7]; --seeds on the command line wins
    task = "2"                  # the task that sorts the table and the chart (default: the base's task)

    [base]                      # settings of every trial: any msmtfn-train option
    epochs = 40

    [grid]                      # a cartesian product over any options
    lr = [1e-4, 3e-4]
    bottleneck_tokens = [2, 4]

    [[trial]]                   # named configurations (rows); crossed with [grid] when both are given
    name = "w/o MTL"
    mtl = false
    paper = { acc2 = 71.23 }    # published figures shown beside this row (acc<k> / f1<k>, percent)

Each (configuration, seed) is a trial, trained by :func:`train.loop.fit` into ``<sweep>/trials/<slug>/s<seed>``
(the same run folder as ``msmtfn-train``) from one in-memory copy of the cache. Every setting (grid file,
``--set``, seeds) is checked before anything is written. A finished trial (``metrics.json``) is never run again;
an interrupted one continues from its last epoch (``--resume``); a sweep whose kept trials were run with other
settings is refused; a trial that fails is recorded in ``trials.csv`` and the sweep goes on.
``results.csv``/``results.md``/``results.png`` summarise mean ± std over seeds of every task's test accuracy and F1 (checkpoints selected on validation).
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import re
import time
import tomllib
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import STATE, atomic_write_bytes, atomic_write_json
from .config import ConfigError, TrainConfig, normalise_keys
from .data import TrainError, load_cache
from .loop import fit, resolve_device, resume_problem

log = logging.getLogger(__name__)

# set by the sweep itself, never by a grid file
RESERVED = ("cache", "out", "seed", "device", "progress")
METRICS = ("accuracy", "macro_f1", "weighted_f1")
REGRESSION_METRICS = ("mae", "corr")
PRESETS = ("paper-ablation", "bottleneck-lr")


@dataclass(frozen=True)
class Configuration:
    name: str
    settings: dict                      # TrainConfig fields (normalised keys) over the sweep's base
    paper: dict = field(default_factory=dict)   # {"acc2": 76.6, "f1_5": ...} published figures, percent

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
        return {"name": self.name, "seeds": list(self.seeds), "task": self.task, "source": self.source,
                "configurations": [{"name": c.name, "settings": c.settings, "paper": c.paper}
                                   for c in self.configurations]}


def _check_keys(settings: dict, where: str) -> dict:
    clean = normalise_keys(settings)
    valid = [k for k in TrainConfig.keys() if k not in RESERVED]
    for key in clean:
        if key not in valid:
            hint = " (set by msmtfn-sweep itself)" if key in RESERVED else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
    return clean


def _value_name(v) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def resolve_grid(grid: str | Path) -> Path:
    """A path to a TOML file, or a shipped preset's name (``paper-ablation``, also ``sweeps/paper-ablation.toml``
    when no such file exists)."""
    p = Path(grid)
    if p.is_file():
        return p
    stem = p.name.removesuffix(".toml")
    if stem in PRESETS:
        return Path(str(resources.files("train") / "sweeps" / f"{stem}.toml"))
    raise ConfigError(f"{grid}: no such grid file; give a TOML file or a preset ({', '.join(PRESETS)})")


def _check_value(where: str, key: str, value) -> None:
    """One setting alone over the defaults, so a wrong value is named with its key and where it was written."""
    try:
        TrainConfig.from_dict({key: value, "cache": "-"}, source=where)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(f"{where}:") else f"{where}: {msg}") from None
    except (TypeError, ValueError) as e:   # a check that compared a value of the wrong type (e.g. "zero" < 1)
        raise ConfigError(f"{where}: {key} = {value!r}: {e}") from None


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table (key = value lines under it), not {value!r}")
    return value


def _seeds(seeds, where: str) -> tuple[int, ...]:
    """``3`` → seeds 0, 1, 2; a list → those seeds. Anything else is refused: "12" is not 12, nor seeds 1 and 2."""
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)   # noqa: E731 — true is an int in Python
    if whole(seeds):
        if seeds < 1:
            raise ConfigError(f"{where}: {seeds} seeds: give 1 or more, or a list of seeds such as [0, 1, 7]")
        return tuple(range(seeds))
    if isinstance(seeds, (list, tuple)) and seeds and all(whole(s) and s >= 0 for s in seeds):
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: seed listed twice in {list(seeds)}; each seed is one trial folder")
        return tuple(seeds)
    raise ConfigError(f"{where} = {seeds!r}: expected a whole number of seeds (seeds = 3 → 0, 1, 2) or a list "
                      "of whole numbers ≥ 0 (seeds = [0, 1, 7])")


def parse_grid(data: dict, name: str = "sweep", source: str = "", seeds=None, overrides: dict | None = None
               ) -> SweepSpec:
    """The configurations of a grid file's table, ``overrides`` (``--set``) over every one; each setting and each
    configuration is checked as a TrainConfig here, so a bad value stops the sweep before anything is written."""
    known = {"name", "seeds", "task", "base", "grid", "trial"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source or 'grid'}: unknown top-level key {key!r}; valid: {', '.join(sorted(known))} "
                              "(training settings go under [base], [grid] or [[trial]])")
    source = source or "grid"
    base = _check_keys(_table(data.get("base", {}), f"{source}: [base]"), f"{source}: [base]")
    for k, v in base.items():
        _check_value(f"{source}: [base]", k, v)
    overrides = _check_keys(overrides or {}, "--set")
    for k, v in overrides.items():
        _check_value("--set", k, v)
    raw_grid = _table(data.get("grid", {}), f"{source}: [grid]")
    for k, v in raw_grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{source}: [grid] {k} must be a non-empty list of values, not {v!r}")
    grid: dict[str, list] = {}
    for k, values in raw_grid.items():   # "no-bigru = [true, false]" negates each value, not the list
        pairs = [normalise_keys({k: x}).popitem() for x in values]
        grid[pairs[0][0]] = [v for _, v in pairs]
    _check_keys(dict.fromkeys(grid), f"{source}: [grid]")
    for k, values in grid.items():
        for v in values:
            _check_value(f"{source}: [grid]", k, v)
    trials = data.get("trial", [])
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise ConfigError(f"{source}: trial must be [[trial]] tables (one per named configuration), not {trials!r}")
    named = []
    for i, t in enumerate(trials):
        t = dict(t)
        tname = str(t.pop("name", f"trial {i + 1}"))
        where = f"{source}: trial {tname!r}"
        paper = _table(t.pop("paper", {}) or {}, f"{where}: paper")
        for k, v in paper.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: paper {k} = {v!r}: expected the published figure as a number in "
                                  "percent (e.g. acc2 = 71.23); leave out figures the paper does not give")
        settings = _check_keys(t, where)
        for k, v in settings.items():
            _check_value(where, k, v)
        named.append((tname, settings, {str(k): float(v) for k, v in paper.items()}))
    if not named:
        named = [("", {}, {})]
    configs = []
    keys = list(grid)
    for tname, tset, paper in named:
        for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            combo = dict(zip(keys, values))
            label = ", ".join(f"{k}={_value_name(v)}" for k, v in combo.items())
            full = " | ".join(x for x in (tname, label) if x) or "base"
            settings = {**base, **tset, **combo, **overrides}
            try:   # every configuration must be a valid TrainConfig before anything trains
                TrainConfig.from_dict({**settings, "cache": "-"}, source=f"{source}: {full!r}")
            except ConfigError as e:
                msg = str(e)
                raise ConfigError(msg if msg.startswith(f"{source}:") else f"{source}: {full!r}: {msg}") from None
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{source}: {full!r}: {e}") from None
            configs.append(Configuration(full, settings, paper if not combo else {}))  # figures of the paper's setting
    if len({c.slug for c in configs}) != len(configs):
        raise ConfigError(f"{source}: two configurations have the same name; give each [[trial]] its own name")
    seeds = _seeds(seeds, "--seeds") if seeds is not None else _seeds(data.get("seeds", 1), f"{source}: seeds")
    task = data.get("task")
    return SweepSpec(name=str(data.get("name", name)), configurations=tuple(configs), seeds=seeds,
                     task=str(task) if task is not None else None, source=source)


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
    cache: str
    grid: str
    out: str | None = None             # default runs/sweeps/<name>
    seeds: int | list | None = None    # overrides the grid file
    device: str = "auto"
    resume: bool = False
    parallel: int = 1                  # trials trained at once (threads sharing the loaded cache)
    overrides: dict = field(default_factory=dict)   # --set KEY=VALUE over every trial
    max_cache_gb: float = 0.0
    progress: bool = True


def trial_dir(root: Path, config: Configuration, seed: int) -> Path:
    return root / "trials" / config.slug / f"s{seed}"


def run_sweep(opts: SweepOptions) -> dict:
    """Run every missing trial; returns the summary (also written as results.csv/.md/.png in the sweep folder)."""
    spec = read_grid(opts.grid, seeds=opts.seeds, overrides=opts.overrides)
    root = Path(opts.out) if opts.out else Path("runs") / "sweeps" / spec.name
    manifest = root / "sweep.json"
    device = resolve_device(opts.device)
    if manifest.exists() and not opts.resume:
        raise TrainError(f"{root}: a sweep is already there; add --resume to run only its missing trials, or "
                         "choose another --out")
    _check_value("--max-cache-gb", "max_cache_gb", opts.max_cache_gb)
    # every trial's exact settings, made before the cache is loaded or anything is written
    configs: dict[tuple[str, int], TrainConfig] = {}
    for config, seed in spec.trials():
        try:
            configs[(config.name, seed)] = TrainConfig.from_dict(
                {**config.settings, "cache": opts.cache, "out": str(trial_dir(root, config, seed)), "seed": seed,
                 "device": str(device), "progress": False, "max_cache_gb": opts.max_cache_gb},
                source=f"{spec.source}: {config.name!r} seed {seed}")
        except (TypeError, ValueError) as e:   # checked in read_grid already; a ConfigError (exit 2) all the same
            raise ConfigError(str(e) if isinstance(e, ConfigError) else f"{spec.source}: {config.name!r}: {e}") \
                from None
    loaded = load_cache(opts.cache, device, opts.max_cache_gb)
    record = {"spec": spec.to_dict(), "cache": {"path": str(loaded.store.path),
                                                "fingerprint": loaded.store.fingerprint}}
    if manifest.exists():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        if old.get("cache", {}).get("fingerprint") != loaded.store.fingerprint:
            was = old.get("cache", {}).get("fingerprint")
            raise TrainError(f"{root}: this sweep was run on another cache (fingerprint {was}); resume it on that "
                             "cache or use another --out")
    _check_kept_trials(root, configs, loaded.store)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, record)

    trials = spec.trials()
    status: dict[tuple[str, int], dict] = {}
    todo = []
    for config, seed in trials:
        d = trial_dir(root, config, seed)
        if (d / "metrics.json").is_file():
            status[(config.name, seed)] = {"status": "done (earlier)", "run_dir": str(d)}
        else:
            todo.append((config, seed))
    log.info("%s: %d trials (%d configurations × %d seeds); %d finished earlier, %d to run; cache loaded once on %s",
             root, len(trials), len(spec.configurations), len(spec.seeds), len(trials) - len(todo), len(todo), device)

    def one(config: Configuration, seed: int) -> tuple[tuple[str, int], dict]:
        d = trial_dir(root, config, seed)
        t0 = time.perf_counter()
        try:
            m = fit(configs[(config.name, seed)], resume=True, loaded=loaded)
            st = "resumed" if m.get("resumed_after_epoch") else "done"
            return (config.name, seed), {"status": st, "run_dir": str(d), "seconds": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 — any failure of one trial (a bad combination, out of memory, a bug
            log.error("trial %s seed %d failed: %s", config.name, seed, e)   # it hits) must not stop the others
            d.mkdir(parents=True, exist_ok=True)
            (d / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            return (config.name, seed), {"status": f"failed: {str(e).splitlines()[0][:200]}", "run_dir": str(d),
                                         "seconds": time.perf_counter() - t0}

    bar = tqdm(total=len(todo), unit="trial", desc=spec.name, disable=not opts.progress)
    t_start = time.perf_counter()
    try:
        if opts.parallel <= 1:
            for config, seed in todo:
                key, st = one(config, seed)
                status[key] = st
                bar.update()
                _write_trials(root, spec, status)
        else:
            with ThreadPoolExecutor(max_workers=opts.parallel) as ex:
                for key, st in ex.map(lambda cs: one(*cs), todo):
                    status[key] = st
                    bar.update()
                    _write_trials(root, spec, status)
    finally:
        bar.close()
        _write_trials(root, spec, status)
    summary = report(root)
    summary["seconds"] = time.perf_counter() - t_start
    summary["trials_run"] = len(todo)
    summary["failed"] = [{"configuration": c, "seed": sd, "reason": st["status"]} for (c, sd), st in status.items()
                         if st["status"].startswith("failed")]
    return summary


def _check_kept_trials(root: Path, configs: dict[tuple[str, int], TrainConfig], store) -> None:
    """A trial folder the sweep would keep (finished, or resumable from its training state) must hold a run with
    the settings this sweep gives that trial: otherwise old results would be reported under new settings."""
    problems = []
    for cfg in configs.values():
        d = Path(cfg.out)
        # a folder with neither (a trial that failed before its first state) keeps nothing: it simply runs again
        if (d / "metrics.json").is_file() or (d / STATE).is_file():
            problem = resume_problem(cfg, store)   # msmtfn-train --resume's own check: same settings, same cache
            if problem:
                problems.append(problem)
    if problems:
        more = f" ({len(problems)} trials in all)" if len(problems) > 1 else ""
        raise TrainError(f"{root}: a trial there was run with other settings{more}: {problems[0]} (a sweep's own "
                         "settings are its grid file, --set and the seed)")


def _write_trials(root: Path, spec: SweepSpec, status: dict) -> None:
    rows = [{"configuration": c.name, "seed": s, **status.get((c.name, s), {"status": "pending",
                                                                           "run_dir": str(trial_dir(root, c, s))})}
            for c, s in spec.trials()]
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
    if not values:
        return float("nan"), float("nan")
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


SPLITS_REPORTED = (("test", ""), ("val", "val_"))   # metrics.json key, column prefix: never mixed


def aggregate(root: Path) -> tuple[SweepSpec, list[dict], list[str]]:
    """Per configuration: mean ± std over its finished seeds of each task's test metrics (percent; columns
    ``{metric}_{task}_mean``), the same for validation (``val_…``), the mean half-width of the test figures' 95 %
    bootstrap intervals (``ci_…``) and how the checkpoints were selected (``selected_on``). A run without a test
    split leaves the test columns empty; validation figures never stand in for test ones."""
    record = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
    s = record["spec"]
    spec = SweepSpec(s["name"], tuple(Configuration(c["name"], c["settings"], c.get("paper", {}))
                                      for c in s["configurations"]), tuple(s["seeds"]), s.get("task"), s["source"])
    rows, tasks = [], []
    for config in spec.configurations:
        runs = []
        for seed in spec.seeds:
            p = trial_dir(root, config, seed) / "metrics.json"
            if p.is_file():
                runs.append(json.loads(p.read_text(encoding="utf-8")))
        row = {"configuration": config.name, "seeds_done": len(runs), "seeds": len(spec.seeds)}
        selected = sorted({f"{m['selection']['task']}: {m['selection']['metric'].split(' (')[0]}"
                           for m in runs if "selection" in m})
        row["selected_on"] = "; ".join(selected)
        for m in runs:
            for t in list(m.get("test") or {}) + list(m["val"]):
                if t not in tasks:
                    tasks.append(t)
        for t in tasks:
            for k in METRICS + REGRESSION_METRICS + ("accuracy_nonzero",):
                scale = 1 if k in REGRESSION_METRICS else 100
                for split, prefix in SPLITS_REPORTED:
                    vals = [scale * m[split][t][k] for m in runs if k in (m.get(split) or {}).get(t, {})]
                    if vals:
                        row[f"{prefix}{k}_{t}_mean"], row[f"{prefix}{k}_{t}_std"] = _mean_std(vals)
                halves = [scale * (m["test"][t]["ci95"][k][1] - m["test"][t]["ci95"][k][0]) / 2 for m in runs
                          if k in (m.get("test") or {}).get(t, {}).get("ci95", {})]
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
    """Write results.csv, results.md and results.png from the trials' metrics; returns the summary."""
    root = Path(root)
    if not (root / "sweep.json").is_file():
        raise TrainError(f"{root}: not a sweep folder (no sweep.json)")
    spec, rows, tasks = aggregate(root)
    primary = _primary(spec, tasks)
    lower_better = _is_regression(rows, primary)   # sorted by MAE (lower first) for a regression task
    # sorted on validation, the split the checkpoints were chosen on; test is read, never optimised
    key = f"val_mae_{primary}_mean" if lower_better else f"val_accuracy_{primary}_mean"
    sign = 1 if lower_better else -1
    rows.sort(key=lambda r: sign * r[key] if not math.isnan(r.get(key, float("nan"))) else math.inf)
    papers = sorted({k for r in rows for k in r["_paper"]})
    present = [k for k in METRICS + REGRESSION_METRICS + ("accuracy_nonzero",)
               if any(f"{k}_{t}_mean" in r or f"val_{k}_{t}_mean" in r for r in rows for t in tasks)]
    fields = ["configuration", "seeds_done", "seeds", "selected_on"] + \
        [f"{prefix}{k}_{t}_{s}" for t in tasks for k in present for prefix in ("val_", "")
         for s in ("mean", "std") if any(f"{prefix}{k}_{t}_mean" in r for r in rows)] + \
        [f"ci_{k}_{t}" for t in tasks for k in present if any(f"ci_{k}_{t}" in r for r in rows)] + \
        [f"paper_{k}" for k in papers]
    _write_csv(root / "results.csv", rows, fields)
    md = _markdown(spec, rows, tasks, primary, papers)
    atomic_write_bytes(root / "results.md", md.encode("utf-8"))
    if rows and tasks:
        _bar_chart(spec, rows, primary, root / "results.png")
    return {"sweep": str(root), "task": primary, "tasks": tasks, "rows": [{k: v for k, v in r.items() if k != "_paper"}
                                                                        for r in rows], "markdown": md}


def _is_regression(rows: list[dict], task: str) -> bool:
    return any(f"mae_{task}_mean" in r for r in rows)


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(spec: SweepSpec, rows: list[dict], tasks: list[str], primary: str, papers: list[str]) -> str:
    order = [primary] + [t for t in tasks if t != primary]
    reg = [t for t in order if _is_regression(rows, t)]
    cls = [t for t in order if t not in reg and ":" not in t]   # class heads beside a regression: CSV only
    nz = [t for t in cls if any(f"accuracy_nonzero_{t}_mean" in r for r in rows)]
    main_metric = "mae" if primary in reg else "accuracy"
    main_name = f"MAE {primary}" if primary in reg else f"acc{primary}"
    head = ["configuration", "seeds", "selected on", f"val {main_name}", f"test {main_name}", "95% CI ±"] + \
        [h for t in reg if t != primary for h in (f"MAE {t}",)] + [h for t in reg for h in (f"Corr {t}",)] + \
        [f"acc{t}" for t in cls if t != primary] + [f"acc{t} non-zero" for t in nz] + \
        [f"F1{t} (weighted)" for t in cls] + [f"paper {k}" for k in papers]
    title = (f"### {spec.name}: validation and test, mean ± std over seeds (checkpoints selected on validation; "
             f"sorted by val {main_name})")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    digits = 3 if primary in reg else 2
    for r in rows:
        get = lambda key: (r.get(f"{key}_mean", math.nan), r.get(f"{key}_std", math.nan))  # noqa: E731
        ci = r.get(f"ci_{main_metric}_{primary}", math.nan)
        cells = [r["configuration"], f"{r['seeds_done']}/{r['seeds']}", r.get("selected_on", ""),
                 _fmt(*get(f"val_{main_metric}_{primary}"), digits), _fmt(*get(f"{main_metric}_{primary}"), digits),
                 "–" if math.isnan(ci) else f"{ci:.{digits}f}"]
        cells += [_fmt(*get(f"mae_{t}"), 3) for t in reg if t != primary]
        cells += [_fmt(*get(f"corr_{t}"), 3) for t in reg]
        cells += [_fmt(*get(f"accuracy_{t}")) for t in cls if t != primary]
        cells += [_fmt(*get(f"accuracy_nonzero_{t}")) for t in nz]
        cells += [_fmt(*get(f"weighted_f1_{t}")) for t in cls]
        cells += [f"{r['_paper'][k]:.2f}" if k in r["_paper"] else "" for k in papers]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Columns after the first test one are test figures. '95% CI ±': mean half-width of one run's "
                 "bootstrap interval over test calls (differences smaller than it are noise). Every validation "
                 "figure, macro-F1 and std is in results.csv. Paper figures are the published ones (single runs).")
    if len({r.get("selected_on") for r in rows if r.get("selected_on")}) > 1:
        lines.append("NOTE: rows were selected on different validation criteria ('selected on'): compare them "
                     "with care.")
    return "\n".join(lines) + "\n"


def _bar_chart(spec: SweepSpec, rows: list[dict], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["configuration"] for r in rows]
    metric = "mae" if _is_regression(rows, task) else "accuracy"
    means = [r.get(f"{metric}_{task}_mean", math.nan) for r in rows]
    stds = [r.get(f"{metric}_{task}_std", math.nan) for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ax.bar(x, means, yerr=stds, capsize=4, color="#4c72b0", label="this sweep (mean ± std over seeds)")
    paper = [r["_paper"].get(f"{'mae' if metric == 'mae' else 'acc'}{task}", math.nan) for r in rows]
    if not all(math.isnan(p) for p in paper):
        ax.scatter(x, paper, marker="D", color="#dd8452", zorder=3, label="paper")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"test MAE, task {task}" if metric == "mae" else f"test accuracy, {task}-class task (%)")
    ax.set_title(spec.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

