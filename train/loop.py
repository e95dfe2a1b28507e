"""Stage 2: fit the fusion network, Bi-GRU and heads on cached tensors; select on validation; test
once."""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.atomic import atomic_path, atomic_write_text
from pipeline.device import DeviceError
from pipeline.device import resolve_device as pipeline_device
from pipeline.labels import scheme_record
from pipeline.segment_profile import profile_rows
from pipeline.store import StoreError

from .checkpoint import (
    CONFIG,
    HISTORY,
    METRICS,
    STATE,
    WEIGHTS,
    CheckpointError,
    atomic_write_json,
    load_train_state,
    load_weights,
    read_run_config,
    restore_train_state,
    save_train_state,
    save_weights,
    write_run_config,
)
from .config import TrainConfig, effective_threads
from .data import (
    Batches,
    CallData,
    FeatureSource,
    LoadedCache,
    TrainError,
    open_cache,
    training_calls,
    training_priors,
)
from .metrics import (
    BOOTSTRAP,
    METRIC_TABLE,
    all_task_metrics,
    bootstrap_intervals,
    headline,
    reported_task,
    selection_key,
    selection_score,
    selection_text,
)
from .model import MSMTFN, ModelDims, build_model
from .normalise import feature_stats
from .plots import confusion_matrices, learning_curves
from .predictions import (
    Scored,
    head_widths,
    model_outputs,
    output_tasks,
    prediction_table,
    regression_tasks,
    run_model,
)
from .tracking import (
    NULL,
    TrackedRun,
    TrackingOptions,
    epoch_scalars,
    final_scalars,
    open_run,
)
from .variants import run_name_parts

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    try:
        return pipeline_device(name)
    except DeviceError as e:  # a device from a --config file or a resumed run's settings
        raise TrainError(str(e)) from None


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs (bit-repeatable runs on CPU; CUDA kernels may still differ run
    to run)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(cfg: TrainConfig, dataset: str) -> Path:
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(run_name_parts(cfg))}-s{cfg.seed}"
    return Path("runs") / (dataset or "cache") / name


def warmup_cosine(total_steps: int, warmup: float):
    w = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        progress = (step - w) / max(1, total_steps - w)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _forward(model: MSMTFN, batch, device: torch.device, amp: bool):
    """One training step's forward (a seam the interrupt tests use)."""
    return model_outputs(model, batch, device, amp)


def _loss(
    logits: dict,
    labels: dict,
    weights: dict,
    mask: torch.Tensor | None = None,
    regression: frozenset = frozenset(),
) -> torch.Tensor:
    """Weighted sum over tasks: cross-entropy, or L1 for a regression (the MAE the field reports).
    ``mask`` (segment-level labels) leaves out the segments without a label."""
    total = 0.0
    for t, out in logits.items():
        y = labels[t]
        out = out.float()
        if mask is not None:
            out, y = out[mask], y[mask]
        if t in regression:
            total = total + weights[t] * F.l1_loss(out.squeeze(-1), y.float())
        else:
            total = total + weights[t] * F.cross_entropy(out, y)
    return total


def evaluate(
    model: MSMTFN,
    batches: Batches,
    data: CallData,
    weights: dict,
    device,
    amp: bool,
    intervals: bool = False,
) -> tuple[float, dict, Scored]:
    """(mean loss per scored item, metrics per task, the scored items) on one split; an item is a
    call, or a labelled segment where labels belong to segments. The items come from
    train.predictions.run_model, the one inference path that msmtfn-predict uses too. ``intervals``:
    each task's metrics also get ``ci95``, bootstrap intervals over the split's calls
    (train/metrics.py)."""
    scored = run_model(model, batches, data, weights, device, amp, _loss)
    on = scored.labelled
    if not on.any():
        raise TrainError("nothing labelled to evaluate in this split")
    # probabilities / values: every task derives from them
    preds = {t: v[on] for t, v in scored.outputs.items()}
    y_true = {t: v[on] for t, v in scored.truth.items()}
    metrics = all_task_metrics(data.scheme, y_true, preds)
    if intervals:
        for t, ci in bootstrap_intervals(data.scheme, y_true, preds, scored.calls[on]).items():
            metrics[t]["ci95"] = ci
    return scored.loss, metrics, scored


HISTORY_METRICS = tuple(METRIC_TABLE)  # every task's validation figures, per epoch


def resolve_task(cfg: TrainConfig, store) -> TrainConfig:
    """``task=""`` means the dataset's main task: the first of its label scheme (MarketCalls 5, MOSI
    score)."""
    try:
        scheme = store.scheme
    except StoreError as e:
        raise TrainError(str(e)) from None
    if not cfg.task:
        return cfg.with_(task=scheme.tasks[0].name)
    if cfg.task not in scheme.task_names:
        raise TrainError(
            f"--task {cfg.task}: {store.path} has label scheme {scheme.name!r}, whose tasks are "
            f"{', '.join(scheme.task_names)}"
        )
    return cfg


# settings that may differ between a run and its resumption: they do not change the numbers
RESUME_KEYS_MAY_DIFFER = (
    "device",
    "threads",
    "progress",
    "plots",
    "max_cache_gb",
    "out",
    "cache",  # cache: by fingerprint
    "state_every",
)


def _check_resumable(run_dir: Path, cfg: TrainConfig, fingerprint: str) -> None:
    meta = read_run_config(run_dir)
    old = {k: v for k, v in meta.get("train", {}).items() if k not in RESUME_KEYS_MAY_DIFFER}
    new = {
        k: v
        for k, v in json.loads(json.dumps(cfg.to_dict(), default=list)).items()
        if k not in RESUME_KEYS_MAY_DIFFER
    }
    changed = [
        f"{k}: {old.get(k)!r} → {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if changed:
        raise TrainError(
            f"{run_dir}: cannot resume with different settings ({'; '.join(changed[:5])}); resume with "
            "the run's own settings, or train into a new --out"
        )
    if meta.get("cache", {}).get("fingerprint") != fingerprint:
        was = meta.get("cache", {}).get("fingerprint")
        raise TrainError(
            f"{run_dir}: was trained on a cache with fingerprint {was}, not {fingerprint}; resume on the "
            "same cache or train into a new --out"
        )


class TrainingRun:
    """One training run, in three rooms: :meth:`start` (cache, model, run folder, optimizer; or a
    resumed state), :meth:`epoch` (one training pass, validation, selection, states) and
    :meth:`finish` (the selected checkpoint on validation and test, prediction files, metrics,
    plots). :func:`fit` runs them in order."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        loaded: LoadedCache | None = None,
        score_test: bool = True,
        tracking: TrackingOptions | None = None,
        parent: TrackedRun | None = None,
    ):
        self.cfg, self.resume, self.overwrite, self.loaded = cfg, resume, overwrite, loaded
        # the tracker: its own run (tracking), or a child of a sweep's or search's run (parent)
        self.tracking, self.parent, self.tracked = tracking, parent, NULL
        # False: a search trial, whose test split must stay unseen until the search has chosen
        self.score_test = score_test
        self.t_start = time.perf_counter()
        # an already finished run's metrics (resume): nothing to do
        self.finished: dict | None = None
        self.run_dir: Path | None = None
        # the last epoch in train_state.pt; finished epochs (Ctrl-C note)
        self.saved_epoch, self.history = 0, []
        # (epoch, the state file before) while it is written
        self.saving: tuple[int, tuple | None] | None = None

    # ------------------------------------------------------------------------------------------
    # start
    def _claim(self, run_dir: Path) -> list[Path]:
        """A fresh run may not write over another run's files unless told to (``overwrite``): a
        finished run's weights and metrics, or a killed run's resumable state, would be lost.
        Returns the old run's files to remove (``overwrite``), once every start check has passed."""
        found = [n for n in (METRICS, CONFIG, WEIGHTS, STATE) if (run_dir / n).is_file()]
        if not found:
            return []
        if not self.overwrite:
            raise TrainError(
                f"{run_dir}: holds a training run already ({', '.join(found)}); pass another --out, "
                f"--resume {run_dir} to continue or report it, or --overwrite to replace it"
            )
        # everything of the old run a reader could take for this one's if this one stops early
        return [run_dir / n for n in (METRICS, STATE, WEIGHTS, CONFIG, HISTORY)] + sorted(
            run_dir.glob("predictions_*.csv")
        )

    def start(self) -> TrainingRun:
        """Open the cache, build the model and the run folder, or find the run finished."""
        cfg = self._open()
        if self.finished is not None:
            return self
        seed_everything(cfg.seed)
        data = self.loaded.data if self.loaded is not None else CallData(self.store)
        self.data, self.scheme = data, data.scheme
        self.regression = regression_tasks(self.scheme)
        self.selection = selection_key(self.scheme.task(cfg.task).kind, self.scheme.selection)
        dims = ModelDims(
            audio_dim=data.audio_dim,
            text_dim=data.text_dim,
            text_tokens=data.text_tokens,
            tasks={t.name: t.num_classes for t in self.scheme.tasks},
            level=self.scheme.level,
        )
        self.splits = {
            "train": training_calls(data, cfg.train_fraction, cfg.seed),
            "valid": data.indices("valid"),
            "test": data.indices("test"),
        }
        self.model = self._build_model(dims)
        state = self._claim_run_dir()
        choices = data.variant_choices(self.splits["train"], cfg.augment_variants)
        for path in self.stale:  # --overwrite: only once the run cannot be refused
            path.unlink(missing_ok=True)
        self._write_config(dims)
        self._make_batches(choices)
        self._make_optimizer()
        self._restore(state)
        self._track_start()
        return self

    def _track_start(self) -> None:
        run_dir, first = self.run_dir, self.first_epoch
        if self.parent is not None:
            self.tracked = self.parent.child(run_dir.name, run_dir, first_step=first)
        else:
            self.tracked = open_run(self.tracking, run_dir, run_dir.name, first_step=first)
        store = self.store
        self.tracked.log_params(
            {
                **self.cfg.to_dict(),
                "cache_path": str(store.path),
                "cache_fingerprint": store.fingerprint,
            }
        )
        self.tracked.set_tags(
            {"msmtfn.dataset": store.dataset, "msmtfn.label_scheme": self.scheme.name}
        )

    def _open(self) -> TrainConfig:
        """Device, threads, the cache and the task; ``finished`` set when there is nothing to do."""
        cfg, loaded = self.cfg, self.loaded
        self.device = loaded.device if loaded is not None else resolve_device(cfg.device)
        # 0 on CPU: by core count (config.default_threads); GPU: as it was
        if cfg.threads or self.device.type == "cpu":
            torch.set_num_threads(effective_threads(cfg.threads))
        if self.resume and not cfg.out:
            raise TrainError("--resume needs the run folder (--out or --resume RUN_DIR)")
        self.run_dir = run_dir = Path(cfg.out) if cfg.out else None
        self.store = loaded.store if loaded is not None else open_cache(cfg.cache)
        self.cfg = cfg = resolve_task(cfg, self.store)
        if self.resume and run_dir is not None and (run_dir / METRICS).is_file():
            _check_resumable(run_dir, cfg, self.store.fingerprint)
            log.info("%s: already finished; nothing to resume", run_dir)
            self.finished = {
                **json.loads((run_dir / METRICS).read_text(encoding="utf-8")),
                "resumed": "finished",
            }
        return cfg

    def _build_model(self, dims: ModelDims) -> MSMTFN:
        model = build_model(self.cfg, dims)
        train_rows = self.data.used_rows(self.splits["train"])
        # from the training split only; a resumed state restores the same buffers
        for m in model.modalities:
            model.set_feature_stats(m, *feature_stats(self.store, train_rows, m))
        self.amp = self.cfg.amp and self.device.type == "cuda"
        return model.to(self.device)

    def _claim_run_dir(self) -> dict | None:
        """The run folder named (and recorded in the config, so that predict finds relative
        encoder folders from elsewhere); the resumed state, or the old files to replace."""
        cfg = self.cfg
        self.run_dir = run_dir = self.run_dir or default_run_dir(cfg, self.store.dataset)
        if not cfg.out:
            self.cfg = cfg = cfg.with_(out=str(run_dir))
        self.state_path, self.weights_path = run_dir / STATE, run_dir / WEIGHTS
        state = None
        if self.resume and self.state_path.is_file():
            _check_resumable(run_dir, cfg, self.store.fingerprint)
            state = load_train_state(self.state_path)
        elif self.resume:
            log.debug("%s: no %s yet; starting the run from its first epoch", run_dir, STATE)
        self.stale = [] if self.resume else self._claim(run_dir)
        return state

    def _write_config(self, dims: ModelDims) -> None:
        """The run folder and its config.json, once the settings and the cache passed every
        check."""
        run_dir, store, scheme, splits = self.run_dir, self.store, self.scheme, self.splits
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.plots:
            (run_dir / "plots").mkdir(exist_ok=True)
        n_params = sum(p.numel() for p in self.model.parameters())
        cache = {
            "path": str(store.path),
            "fingerprint": store.fingerprint,
            "settings": store.settings,
            "label_scheme": scheme.name,
            **scheme_record(scheme),
            "segmentation": segmentation_record(store, self.data, splits),
        }
        extra = {
            "cache": cache,
            "parameters": n_params,
            "priors": training_priors(self.data, self.splits["train"]),
        }
        write_run_config(run_dir, self.cfg, dims, extra)
        log.info(
            "%d train / %d valid / %d test calls; %.2fM parameters; device %s",
            len(splits["train"]),
            len(splits["valid"]),
            len(splits["test"]),
            n_params / 1e6,
            self.device,
        )

    def _make_batches(self, choices: list[list[int]] | None) -> None:
        cfg, data, splits, model = self.cfg, self.data, self.splits, self.model
        if choices:
            log.info(
                "training samples each call's original or one of %d cached variants per epoch",
                sum(len(c) - 1 for c in choices),
            )
        if self.loaded is not None:
            source = self.loaded.source.view(model.modalities)
        else:
            needed = sorted(
                {c for ch in (choices or []) for c in ch} | {c for v in splits.values() for c in v}
            )
            source = FeatureSource(
                data, self.device, cfg.max_cache_gb, modalities=model.modalities, calls=needed
            )
        self.gen = gen = torch.Generator().manual_seed(cfg.seed)

        def make(calls, shuffle, ch=None):
            return Batches(
                data,
                source,
                calls,
                cfg.batch_calls,
                shuffle,
                gen if shuffle else None,
                full_text=model.needs_every_text_row,
                choices=ch,
            )

        self.train_b = make(splits["train"], True, choices)
        self.val_b, self.test_b = make(splits["valid"], False), make(splits["test"], False)

    def _make_optimizer(self) -> None:
        cfg, model = self.cfg, self.model
        self.weights = {t: float(cfg.loss_weights.get(t, 1.0)) for t in model.heads}
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(self.train_b) / cfg.grad_accum)
        self.sched = torch.optim.lr_scheduler.LambdaLR(  # one scheduler for the whole run
            self.opt, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup)
        )

    def _restore(self, state: dict | None) -> None:
        """A fresh run's counters, or those of the resumed state (model, optimizer and RNGs
        too)."""
        self.history: list[dict] = []
        self.best_score, self.best_epoch, self.epochs_without_gain = None, 0, 0
        self.first_epoch = 1
        self.resumed_state = state is not None
        # killed after an early stop was decided
        self.stopped = state is not None and state.get("stopped", False)
        if state is None:
            return
        done = restore_train_state(
            state, self.model, self.opt, self.sched, self.gen, self.state_path
        )
        self.first_epoch = done + 1
        self.history, self.best_epoch = state["history"], state["best_epoch"]
        self.epochs_without_gain = state["bad"]
        self.best_score = tuple(state["best_score"]) if state["best_score"] is not None else None
        self.saved_epoch = done
        log.info(
            "%s: resuming after epoch %d (best so far: epoch %d)",
            self.run_dir,
            done,
            self.best_epoch,
        )

    # ------------------------------------------------------------------------------------------
    # epochs
    def epochs(self) -> range:
        return range(self.first_epoch, self.cfg.epochs + 1) if not self.stopped else range(0)

    def epoch(self, epoch: int) -> bool:
        """Train one epoch, score validation, keep the best checkpoint; True when early stopping
        ends the run."""
        cfg, model, opt, data = self.cfg, self.model, self.opt, self.data
        t0 = time.perf_counter()
        model.train()
        running, seen = 0.0, 0
        opt.zero_grad(set_to_none=True)
        bar = tqdm(
            self.train_b, desc=f"epoch {epoch}", leave=False, disable=not cfg.progress, unit="batch"
        )
        for i, batch in enumerate(bar):
            logits = _forward(model, batch, self.device, self.amp)
            loss = _loss(logits, batch.labels, self.weights, batch.mask, self.regression)
            (loss / cfg.grad_accum).backward()
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == len(self.train_b):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                opt.step()
                self.sched.step()
                opt.zero_grad(set_to_none=True)
            running += float(loss.detach()) * len(batch.calls)
            seen += len(batch.calls)
            bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
        val_loss, val, _ = evaluate(model, self.val_b, data, self.weights, self.device, self.amp)
        sel = val[cfg.task]
        self.last_score = score = selection_score(sel, self.selection, val_loss)  # also: pruning
        row = {
            "epoch": epoch,
            "train_loss": running / max(1, seen),
            "val_loss": val_loss,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        for t, m in val.items():
            row.update({f"val_{t}_{k}": m[k] for k in HISTORY_METRICS if k in m})
        self.history.append(row)
        self.tracked.log_metrics(epoch_scalars(row), step=epoch)
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.epochs_without_gain = score, epoch, 0
            save_weights(model, self.weights_path)
        else:
            self.epochs_without_gain += 1
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val task %s %s%s",
            epoch,
            row["train_loss"],
            val_loss,
            cfg.task,
            headline(sel, self.scheme.task(cfg.task).kind),
            " *" if improved else "",
        )
        _write_history(self.run_dir / HISTORY, self.history)
        self.stopped = self.epochs_without_gain >= cfg.patience
        # also on every improvement, so the state never trails the best-weights file it describes;
        # written after that file: a kill between the two re-runs this epoch, which rewrites the
        # same weights
        if cfg.state_every and (
            improved or self.stopped or epoch % cfg.state_every == 0 or epoch == cfg.epochs
        ):
            # a Ctrl-C note tells a finished write by the file
            self.saving = (epoch, _file_id(self.state_path))
            save_train_state(
                self.state_path,
                epoch=epoch,
                model=model,
                opt=opt,
                sched=self.sched,
                gen=self.gen,
                history=self.history,
                best_score=self.best_score,
                best_epoch=self.best_epoch,
                bad=self.epochs_without_gain,
                stopped=self.stopped,
            )
            self.saved_epoch, self.saving = epoch, None
        if self.stopped:
            log.info("early stop: no better validation score for %d epochs", cfg.patience)
        return self.stopped

    def interrupt_note(self) -> str:
        """The one line a Ctrl-C prints: what is kept and the command that continues the run."""
        saved = self.saved_epoch
        if self.saving is not None and _file_id(self.state_path) not in (None, self.saving[1]):
            # interrupted just after the new state replaced the old one (atomic rename)
            saved = self.saving[0]
        return _interrupt_note(self.run_dir, saved, len(self.history), self.cfg.state_every)

    # ------------------------------------------------------------------------------------------
    # finish
    def finish(self) -> dict:
        cfg, model, data, scheme, run_dir = (
            self.cfg,
            self.model,
            self.data,
            self.scheme,
            self.run_dir,
        )
        device, amp, weights = self.device, self.amp, self.weights
        load_weights(model, self.weights_path, device)  # the validation-selected checkpoint
        val_loss, val, val_scored = evaluate(
            model, self.val_b, data, weights, device, amp, intervals=True
        )
        tasks = output_tasks(scheme, head_widths(model))
        atomic_write_text(
            run_dir / "predictions_valid.csv", prediction_table(val_scored, data, tasks)
        )
        test, test_loss = {}, None
        if self.splits["test"] and not self.score_test:
            log.info("test split not scored (a search trial)")
        elif self.splits["test"]:
            test_loss, test, test_scored = evaluate(
                model, self.test_b, data, weights, device, amp, intervals=True
            )  # once, at the end
            atomic_write_text(
                run_dir / "predictions_test.csv", prediction_table(test_scored, data, tasks)
            )
        else:
            log.warning("no test calls in %s; reporting validation only", self.store.path)
        history = self.history
        metrics = {
            "run_dir": str(run_dir),
            "best_epoch": self.best_epoch,
            "epochs_run": len(history),
            "selection": {
                "task": cfg.task,
                "key": self.selection,
                "metric": selection_text(self.selection),
            },
            "val_loss": val_loss,
            "test_loss": test_loss,
            "val": val,
            "test": test,
            "classes": {t.name: list(t.classes) for t in scheme.tasks if not t.is_regression},
            "kinds": {name: reported_task(scheme, name).kind for name in val},
            "level": scheme.level,
            "intervals": f"ci95: 95 % percentile bootstrap over the split's calls, {BOOTSTRAP} resamples, seed 0",
            "calls": {s: len(v) for s, v in self.splits.items()},
            "config": cfg.to_dict(),
            "cache_fingerprint": self.store.fingerprint,
            "device": str(device),
            "seconds": time.perf_counter() - self.t_start,
            "epoch_seconds": float(np.median([h["seconds"] for h in history]))
            if history
            else float("nan"),
        }
        if self.resumed_state:
            metrics["resumed_after_epoch"] = self.first_epoch - 1
        if cfg.plots:
            classes = {t.name: t.classes for t in scheme.tasks}
            classes.update({f"{t}:head": c for t, c in classes.items()})
            plots = run_dir / "plots"
            learning_curves(
                history, cfg.task, scheme.task(cfg.task).kind, plots / "learning_curves.png"
            )
            confusion_matrices(
                val, classes, "validation (best checkpoint)", plots / "confusion_valid.png"
            )
            if test:
                confusion_matrices(
                    test, classes, "test (best checkpoint)", plots / "confusion_test.png"
                )
        atomic_write_json(run_dir / METRICS, metrics)  # last: its presence marks the run finished
        self.state_path.unlink(missing_ok=True)  # optimizer state is 3x the model; not needed now
        self.tracked.log_metrics(final_scalars(metrics))
        self.tracked.log_artifacts(run_dir)
        self.tracked.end("FINISHED")
        return metrics


def resume_problem(cfg: TrainConfig, store) -> str | None:
    """Why ``fit(cfg, resume=True)`` could not continue or report ``cfg.out`` (other settings,
    another cache), or None when it can (or there is nothing there yet)."""
    run_dir = Path(cfg.out) if cfg.out else None
    if run_dir is None or not (run_dir / "config.json").is_file():
        return None
    try:
        _check_resumable(run_dir, resolve_task(cfg, store), store.fingerprint)
    except (TrainError, CheckpointError) as e:
        return str(e)
    return None


def fit(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    loaded: LoadedCache | None = None,
    tracking: TrackingOptions | None = None,
    parent: TrackedRun | None = None,
) -> dict:
    """Train one configuration; writes the run folder and returns its metrics
    (``metrics['run_dir']``).

    ``resume=True`` continues the run in ``cfg.out`` from its last finished epoch
    (``train_state.pt``) and gives the same result as an uninterrupted run on CPU; a finished run is
    returned as it is. Without it a folder that holds a run already is refused, unless
    ``overwrite=True``. ``loaded`` is a cache already in memory (:func:`train.data.load_cache`),
    shared by the trials of a sweep. ``tracking`` records the run in MLflow or TensorBoard
    (train/tracking.py), ``parent`` as a child of a sweep's tracked run."""
    run = TrainingRun(
        cfg, resume=resume, overwrite=overwrite, loaded=loaded, tracking=tracking, parent=parent
    )
    try:
        run.start()
        if run.finished is not None:
            return run.finished
        for epoch in run.epochs():
            if run.epoch(epoch):
                break
        return run.finish()
    except KeyboardInterrupt:  # Ctrl-C: say what is kept and how to go on (TrainInterrupted is one)
        run.tracked.end("KILLED")
        raise TrainInterrupted(run.interrupt_note()) from None
    except Exception:
        run.tracked.end("FAILED")
        raise


def _file_id(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; ``str()`` is one line: what was kept and the command that
    continues the run."""


def _interrupt_note(
    run_dir: Path | None, saved_epoch: int, finished_epochs: int, state_every: int
) -> str:
    # stopped while the cache or the model was loading
    if run_dir is None or not (run_dir / CONFIG).is_file():
        return "interrupted before the first epoch started; nothing was written: run the same command again"
    resume = f"resume with: msmtfn-train --resume {run_dir}"
    if saved_epoch and saved_epoch >= finished_epochs:
        return f"interrupted: the last finished epoch is saved; {resume}"
    if saved_epoch:
        return (
            f"interrupted: epoch {saved_epoch} of {finished_epochs} finished is saved (states every "
            f"{state_every} epochs); {resume}"
        )
    if (run_dir / STATE).is_file():  # a resumed run stopped before its saved state was read back
        return f"interrupted: the saved epochs are kept; {resume}"
    if not state_every:
        return f"interrupted: no epoch is saved (--state-every 0); {resume} trains it again from epoch 1"
    return f"interrupted in the first epoch: nothing to keep yet; {resume} starts it again"


def _write_history(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for h in history for k in h))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def segmentation_record(store, data, splits) -> dict | None:
    """How the run's training segments were made (pipeline/segment_profile.py), for msmtfn-predict
    to cut new recordings alike."""
    rows = [int(r) for c in splits["train"] for r in data.rows[c]]
    max_seconds = float(store.settings.get("segmentation", {}).get("max_seconds", 40.0))
    profile = profile_rows(store.table(), store.segment_seconds(), rows, max_seconds)
    return profile.to_record() if profile else None
