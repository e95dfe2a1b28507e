"""Run tracking: every training run (and every sweep or search, as a parent run with a child per
trial) recorded in MLflow or as TensorBoard event files, beside the run folder's own files.

A tracker is an extra (``pip install -e ".[tracking]"``). It never decides a run's fate: a tracker
that fails (a server down, a package missing) is one warning line, and training goes on writing
its files as always. The tracker's run id is kept in the run folder (``tracking.json``) so that
``--resume`` continues the same tracked run."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_write_json
from pipeline.cli import option_field

log = logging.getLogger(__name__)

TRACKERS = ("none", "mlflow", "tensorboard")
DEFAULT_URI = "sqlite:///runs/mlflow.db"
RECORD = "tracking.json"  # in a run, sweep or search folder: the tracked run's id
# a run folder's files worth keeping in the tracker (weights stay in the folder: msmtfn.run_dir)
ARTIFACTS = ("config.json", "metrics.json", "history.csv", "predictions_valid.csv")
ARTIFACTS += ("predictions_test.csv", "plots")
# MLflow retries a dead server 7 times with doubling waits (minutes); a tracker may only warn
_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_field():
    return option_field(
        "none",
        "Record the run(s) in a tracker: mlflow (params, per-epoch metrics, artifacts) or "
        "tensorboard (event files in the run folder).",
        choices=TRACKERS,
    )


def tracking_uri_field():
    return option_field(
        DEFAULT_URI, "--tracking mlflow: the tracking store, a sqlite:/// path or a server URL."
    )


def experiment_field():
    return option_field("msmtfn", "--tracking mlflow: the experiment the runs go into.")


@dataclass(frozen=True)
class TrackingOptions:
    """How runs are tracked; ``msmtfn-train`` options (``msmtfn-sweep`` has the same three)."""

    tracking: str = tracking_field()
    tracking_uri: str = tracking_uri_field()
    experiment: str = experiment_field()

    @classmethod
    def of(cls, opts) -> TrackingOptions:
        """The three tracking settings of any options object that has them (SweepOptions)."""
        return cls(opts.tracking, opts.tracking_uri, opts.experiment)


# ------------------------------------------------------------------------------------- values
def flat_params(cfg: dict, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: one string per setting, tables as ``key.sub``."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
    return out


def epoch_scalars(row: dict) -> dict[str, float]:
    """A history row's numbers (train loss, validation loss and figures, lr), without the epoch."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def final_scalars(metrics: dict) -> dict[str, float]:
    """A finished run's figures: ``valid/<task>/<figure>`` and ``test/<task>/<figure>`` (with the
    95 % interval as ``…_ci_low``/``…_ci_high``), the selected epoch and the time."""
    out = {k: float(metrics[k]) for k in ("best_epoch", "epochs_run", "seconds") if k in metrics}
    for split, key in (("valid", "val"), ("test", "test")):
        for task, figures in (metrics.get(key) or {}).items():
            for name, v in figures.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[f"{split}/{task}/{name}"] = float(v)
            for name, (low, high) in (figures.get("ci95") or {}).items():
                out[f"{split}/{task}/{name}_ci_low"] = float(low)
                out[f"{split}/{task}/{name}_ci_high"] = float(high)
    return out


def version_tags() -> dict[str, str]:
    """The msmtfn version and, in a git checkout, its commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tags = {"msmtfn.version": version("msmtfn")}
    except PackageNotFoundError:
        tags = {"msmtfn.version": "unknown"}
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            tags["mlflow.source.git.commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


# ------------------------------------------------------------------------------------- runs
class TrackedRun:
    """One run in a tracker. Every call is guarded: the first failure is one warning line, after
    which the run records nothing more (the run folder keeps everything)."""

    kind = "none"

    def __init__(self, where: str = ""):
        self.where, self.broken = where, False

    def _guard(self, what: str, fn, *args):
        if self.broken:
            return None
        try:
            return fn(*args)
        # a tracker must never stop training: any failure of its package or server is a warning
        except Exception as e:  # noqa: BLE001
            self.broken = True
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            log.warning(
                "tracking: %s %s failed to %s (%s); training goes on, the run folder has "
                "everything",
                self.kind,
                self.where,
                what,
                first,
            )
            return None

    def log_params(self, params: dict) -> None:
        self._guard("record the settings", self._params, params)

    def log_metrics(self, values: dict, step: int | None = None) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            self._guard("record metrics", self._metrics, values, step)

    def set_tags(self, tags: dict) -> None:
        self._guard("set tags", self._tags, tags)

    def log_artifacts(self, folder: Path, names=ARTIFACTS) -> None:
        self._guard("upload files", self._artifacts, Path(folder), tuple(names))

    def end(self, status: str = "FINISHED") -> None:
        self._guard("close the run", self._end, status)

    def child(self, name: str, folder: Path, first_step: int = 0) -> TrackedRun:
        """A run of one trial of this sweep or search, recorded in ``folder``."""
        return NULL

    # a tracker's own work; the base records nothing
    def _params(self, params):
        pass

    def _metrics(self, values, step):
        pass

    def _tags(self, tags):
        pass

    def _artifacts(self, folder, names):
        pass

    def _end(self, status):
        pass


NULL = TrackedRun()


class MLflowRun(TrackedRun):
    kind = "mlflow"

    def __init__(self, options: TrackingOptions, run_id: str | None, client=None):
        super().__init__(f"at {options.tracking_uri}")
        self.options, self.run_id, self.client = options, run_id, client

    def _params(self, params):
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _metrics(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def _tags(self, tags):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _artifacts(self, folder, names):
        for name in names:
            path = folder / name
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def _end(self, status):
        self.client.set_terminated(self.run_id, status)

    def child(self, name, folder, first_step=0):
        if self.broken:  # warned once already: the trials go untracked
            return NULL
        return open_run(self.options, Path(folder), name, parent=self)


class TensorBoardRun(TrackedRun):
    kind = "tensorboard"

    def __init__(self, folder: Path, first_step: int = 0):
        super().__init__(f"in {folder / 'tensorboard'}")
        self.folder, self.first_step, self._open_writer = folder, first_step, None

    @property
    def writer(self):
        """The event file, opened by the first record (a sweep's own run writes none)."""
        if self._open_writer is None:
            _need("tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the epochs it trains again from the event file
            path = str(self.folder / "tensorboard")
            self._open_writer = SummaryWriter(path, purge_step=self.first_step or None)
        return self._open_writer

    def _params(self, params):
        text = "\n".join(f"    {k} = {v}" for k, v in flat_params(params).items())
        self.writer.add_text("config", text)

    def _metrics(self, values, step):
        for k, v in values.items():
            if math.isfinite(v):
                self.writer.add_scalar(k, v, step or 0)
        self.writer.flush()

    def _tags(self, tags):
        self.writer.add_text("tags", "\n".join(f"    {k} = {v}" for k, v in tags.items()))

    def _end(self, status):
        if self._open_writer is not None:
            self.writer.add_text("status", status)
            self.writer.close()

    def child(self, name, folder, first_step=0):
        return TensorBoardRun(Path(folder), first_step)


def _need(module: str):
    """The tracker's package, or an error saying which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(
            f'{module.split(".")[0]} is not installed: pip install -e ".[tracking]"'
        ) from None


def _mlflow_client(options: TrackingOptions):
    for k, v in _QUICK_HTTP.items():
        os.environ.setdefault(k, v)
    MlflowClient = _need("mlflow.tracking").MlflowClient

    uri = options.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, options: TrackingOptions) -> str:
    exp = client.get_experiment_by_name(options.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if options.tracking_uri.startswith("sqlite:///"):  # files beside the database, not in ./mlruns
        db = Path(options.tracking_uri[len("sqlite:///") :]).expanduser().resolve()
        location = (db.parent / "mlflow-artifacts").as_uri()
    return client.create_experiment(options.experiment, artifact_location=location)


def _recorded_id(folder: Path, options: TrackingOptions) -> str | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mine = record.get("mlflow", {})
    if mine.get("uri") == options.tracking_uri and mine.get("experiment") == options.experiment:
        return mine.get("run_id")
    return None


def _start_mlflow(run: MLflowRun, folder: Path, name: str, parent: MLflowRun | None) -> None:
    options = run.options
    run.client = client = _mlflow_client(options)
    old = _recorded_id(folder, options)
    if old is not None:  # --resume: the same tracked run goes on
        client.update_run(old, status="RUNNING")
        run.run_id = old
        return
    tags = {**version_tags(), "msmtfn.run_dir": str(folder.resolve())}
    if parent is not None and parent.run_id:
        tags["mlflow.parentRunId"] = parent.run_id
    made = client.create_run(_experiment_id(client, options), run_name=name, tags=tags)
    run.run_id = made.info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        folder / RECORD,
        {
            "mlflow": {
                "uri": options.tracking_uri,
                "experiment": options.experiment,
                "run_id": run.run_id,
            }
        },
    )


def open_run(
    options: TrackingOptions | None,
    folder: Path,
    name: str,
    *,
    parent: TrackedRun | None = None,
    first_step: int = 0,
) -> TrackedRun:
    """The tracked run of the run (or sweep) in ``folder``: a new one, or on resume the one its
    ``tracking.json`` names; ``NULL`` without tracking. Never raises for the tracker's sake."""
    if options is None or options.tracking == "none":
        return NULL
    if options.tracking == "tensorboard":
        return TensorBoardRun(Path(folder), first_step)
    run = MLflowRun(options, None)
    run._guard("start a run", _start_mlflow, run, Path(folder), name, parent)
    return run if not run.broken else NULL


def attach(options: TrackingOptions | None, folder: Path) -> TrackedRun:
    """The tracked run another process opened for the sweep or search in ``folder`` (a dask
    worker's view of it: only for its trials' child runs), or ``NULL``."""
    if options is None or options.tracking == "none":
        return NULL
    if options.tracking == "tensorboard":
        return TensorBoardRun(Path(folder))
    run_id = _recorded_id(Path(folder), options)
    return MLflowRun(options, run_id) if run_id else NULL
