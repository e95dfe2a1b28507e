"""Scale-out extraction on dask.distributed: the driver plans, the workers encode and write, the
driver commits.

The unit of work is a **block**: ``block_shards`` whole shards, exactly the rows that the
single-process path sorts and batches together (``plan.plan_blocks``). So a worker computes every
row in the same batch as a single-process run would, and blocks own disjoint shards (and disjoint
``length`` chunks): zarr has no locks across processes, and none is needed when no two writers ever
share a chunk or shard object.

    driver                               worker (one task = one block)
    plan rows, create/resume the store ─► encoders loaded once per worker process (cached)
    submit blocks still to do              decode → batch → encode → write its shards to the
                                           store (path/URL)
    flip ``done`` of a finished block  ◄─  returns row flags, skip reasons, counts (≈ 100 B a row)
    write skip reasons + report.json

Hidden states never pass through the scheduler. The driver is the only writer of
``done``/``skipped``, and only after a block's data is written, so "done means whole" holds as
before. A task is idempotent (it rewrites whole shards with the same bytes; rows done before are
read back and kept), so dask may rerun it on another worker when one dies, and a later run —
distributed or not — resumes from the ``done`` flags.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from pipeline.cache_settings import CacheSettings, EncoderFacts
from pipeline.manifest import Segment
from pipeline.retries import active_counts, process_counts, worker_retries
from pipeline.store import CacheStore, StoreError

from .augment import Augmenter
from .encode import EncodeStats, SegmentSource, encode_batches, make_loader
from .encoders import Encoders, load_encoders
from .plan import ExtractConfig, ExtractPlan, ExtractResult, finish_run, open_store, plan_blocks
from .writer import ShardWriter

log = logging.getLogger(__name__)


class DistributedError(StoreError):
    """A block failed on a worker; the message names it and the fix. Blocks already done are
    kept."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs besides its block: small, pickled into every task."""

    store: str  # path or URL that every worker can reach
    storage_options: dict
    cache: CacheSettings  # the settings the driver fingerprinted (dtype resolved)
    facts: EncoderFacts  # what the driver's encoders reported: a worker that loads other
    # weights refuses to write
    device: str
    trust_remote_code: bool
    num_workers: int
    write_threads: int
    count_retries: bool = False  # object storage: the task sends its process's retry counts

    @property
    def encoder_key(self) -> tuple:
        return (self.cache, self.device, self.trust_remote_code)


# -----------------------------------------------------------------------------------------------
# worker side
_ENCODERS: dict[tuple, Encoders] = {}
_LOAD_LOCK = threading.Lock()


def worker_encoders(spec: WorkerSpec) -> Encoders:
    """The encoders of this worker process, loaded by its first task and reused by every later
    one."""
    with _LOAD_LOCK:
        if spec.encoder_key not in _ENCODERS:
            _ENCODERS.clear()  # one setting at a time: a new one frees the old models (GPU memory)
            _ENCODERS[spec.encoder_key] = load_encoders(
                spec.cache, spec.device, trust_remote_code=spec.trust_remote_code
            )
        enc = _ENCODERS[spec.encoder_key]
    # checked on every task: a model folder may differ between nodes, or change between runs under
    # the same path
    got, want = enc.facts.identity, spec.facts.identity
    if got != want:
        raise DistributedError(
            f"worker loaded other encoder weights than the driver for {spec.cache.audio_model} / "
            f"{spec.cache.text_model} (hashes {got} vs {want}); give every node the same model folders or hub "
            "revisions"
        )
    return enc


class _Window:
    """Rows [start, start + len(rows)) of the planned rows, indexed by their global row number, so a
    worker's batches, loader items and writes use the store's row numbers without shipping all N
    rows to it."""

    def __init__(self, rows: list[Segment], start: int, n: int):
        self.rows, self.start, self.n = rows, start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Segment:
        if not self.start <= i < self.start + len(self.rows):
            raise IndexError(f"row {i} is not in this block")
        return self.rows[i - self.start]


class _FlagsToDriver:
    """The store as the ShardWriter sees it on a worker: data goes to the store,
    ``done``/``skipped`` flags are collected and returned to the driver, which writes them (the only
    writer of ``done``)."""

    def __init__(self, store: CacheStore, done_before: np.ndarray):
        self._store, self._done_before = store, done_before
        self.flags: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def done(self) -> np.ndarray:
        # the driver's view when it planned the block; reading all N flags here would be N/shard
        # requests on S3
        return self._done_before.copy()

    def set_flags(self, start: int, stop: int, done: np.ndarray, skipped: np.ndarray) -> None:
        self.flags.append(
            (start, stop, np.asarray(done, bool).copy(), np.asarray(skipped, bool).copy())
        )


def encode_block(
    spec: WorkerSpec,
    start: int,
    rows: list[Segment],
    batches: list[list[int]],
    done_before: np.ndarray,
    n: int,
) -> dict:
    """A dask task: encode rows [start, start + len(rows)) in ``batches`` and write their shards.
    Returns small metadata only."""
    t0 = time.perf_counter()
    retries_before = process_counts() if spec.count_retries else None
    enc = worker_encoders(spec)
    t_loaded = time.perf_counter()
    stop = start + len(rows)
    store = CacheStore.open(spec.store, mode="r+", storage_options=spec.storage_options)
    done_all = np.zeros(n, bool)
    done_all[start:stop] = done_before
    todo = np.zeros(n, bool)
    todo[start:stop] = ~done_before
    proxy = _FlagsToDriver(store, done_all)
    window = _Window(rows, start, n)
    settings = spec.cache
    source = SegmentSource.for_encoders(
        window, enc, Augmenter(settings.augment, settings.seed) if settings.augment else None
    )
    # dask worker processes are daemons unless configured otherwise, and daemons cannot start loader
    # processes
    num_workers = 0 if multiprocessing.current_process().daemon else spec.num_workers
    loader = make_loader(source, batches, num_workers)
    # whole shards only (no checkpoint_seconds, no keep_partial): the driver flips done per finished
    # block, so a partial write would be rewritten for nothing
    writer = ShardWriter(proxy, todo, write_threads=spec.write_threads)
    try:
        stats = encode_batches(
            loader, window, todo, enc.audio, enc.text, writer, enc.policy.input_rate
        )
        writer.close()
    finally:
        writer.close(raise_errors=False)
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = "local"
    retries = None
    if retries_before is not None:  # keyed by process: a restarted worker counts from 0 again
        retries = (f"{worker}/{os.getpid()}", retries_before, process_counts())
    return {
        "retries": retries,
        "start": start,
        "stop": stop,
        "flags": sorted(proxy.flags, key=lambda f: f[0]),
        "skipped": dict(writer.skipped),
        "stats": stats,
        "worker": worker,
        "load_s": t_loaded - t0,
        "encode_s": time.perf_counter() - t_loaded,
    }


# -----------------------------------------------------------------------------------------------
# driver side
@contextlib.contextmanager
def cluster_client(cfg: ExtractConfig, client=None):
    """The client to use: the one given (left open), one to ``cfg.scheduler``, or a LocalCluster of
    ``cfg.workers`` workers (a LocalCUDACluster, one worker per GPU, when device is cuda and
    dask-cuda is installed); the last two are closed on exit."""
    if client is not None:
        yield client
        return
    import dask
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        with Client(cfg.scheduler) as c:
            yield c
        return
    # non-daemon workers may start the decode/tokenise loader processes (--num-workers). And no
    # MALLOC_TRIM_THRESHOLD_ (dask sets 64 KiB for its workers): glibc then stops adapting its mmap
    # threshold, so every large tensor is a fresh mmap and its page faults — 15 % more CPU per
    # segment (docs/scaling.md)
    environ = {
        k: v
        for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
        if k != "MALLOC_TRIM_THRESHOLD_"
    }
    with dask.config.set(
        {"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": environ}
    ):
        cluster = None
        if cfg.device.startswith("cuda"):
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                log.warning(
                    "dask-cuda is not installed: a plain LocalCluster; every worker uses %s",
                    cfg.device,
                )
            else:
                cluster = LocalCUDACluster(n_workers=cfg.workers, threads_per_worker=1)
        if cluster is None:
            # a random dashboard port: two local clusters on one machine never collide
            cluster = LocalCluster(
                n_workers=cfg.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.WARNING,
            )
    with cluster, Client(cluster) as c:
        yield c


def worker_spec(plan: ExtractPlan) -> WorkerSpec:
    cfg = plan.cfg
    device = cfg.device
    if device.startswith("cuda") and cfg.workers and not cfg.scheduler:
        device = "cuda"  # LocalCUDACluster gives each worker one GPU as its cuda:0
    return WorkerSpec(
        store=str(plan.out),
        storage_options=dict(cfg.storage_options),
        cache=replace(cfg.cache, dtype=plan.enc.facts.compute_dtype),
        facts=plan.enc.facts,
        device=device,
        trust_remote_code=cfg.trust_remote_code,
        num_workers=cfg.num_workers,
        write_threads=cfg.write_threads,
        # the driver counts its own retries only where it counts at all (object storage)
        count_retries=active_counts() is not None,
    )


@dataclass
class _Totals:
    stats: EncodeStats = field(default_factory=EncodeStats)
    skipped: dict[int, str] = field(default_factory=dict)
    per_worker: dict[str, int] = field(default_factory=dict)
    task_bytes: int = 0  # pickled task arguments sent through the scheduler
    result_bytes: int = 0  # pickled results sent back
    hidden_bytes: int = 0  # float16 hidden states the workers wrote themselves (uncompressed)
    blocks: int = 0
    retry_windows: list = field(default_factory=list)  # (worker process, counts before, after)
    task_seconds: float = 0.0  # summed time inside the tasks (encoder load + encode + write)


def extract_distributed(plan: ExtractPlan, client=None) -> ExtractResult:
    """Called by ``run.extract`` with the store's lock held; same result as
    ``run._extract_into``."""
    from distributed import as_completed

    cfg, out, rows, shape = plan.cfg, plan.out, plan.rows, plan.shape
    store = open_store(plan)
    done = store.done()
    todo = ~done
    log.info(
        "%s: %d of %d segments already done; %d to encode",
        out,
        int(done.sum()),
        len(rows),
        int(todo.sum()),
    )
    pending = [
        (blk, [b for b in bs if todo[b].any()])
        for blk, bs in plan_blocks(plan, store)
        if todo[blk.start : blk.stop].any()
    ]
    spec = worker_spec(plan)
    totals = _Totals()
    row_bytes = 2 * (shape.audio_frames * shape.audio_dim + shape.text_tokens * shape.text_dim)
    n_workers = 0
    bar = tqdm(
        total=int(todo.sum()), unit="seg", desc="extract", disable=not plan.progress, smoothing=0.1
    )
    t_loop = time.perf_counter()
    try:
        # nothing to do (a finished store): no cluster to start
        with cluster_client(cfg, client) if pending else contextlib.nullcontext() as cl:
            if pending:
                log.info(
                    "%s: %d blocks of ≤ %d rows on %d dask workers (%s)",
                    out,
                    len(pending),
                    cfg.block_shards * shape.shard_size,
                    len(cl.scheduler_info().get("workers", {})),
                    cl.scheduler.address,
                )
            futures = _submit_blocks(cl, spec, pending, rows, done, totals)
            n_workers = len(cl.scheduler_info().get("workers", {})) if pending else 0
            for fut in as_completed(list(futures)) if futures else ():
                blk = futures[fut]
                res = _block_result(fut, blk, futures, out)
                _commit(store, res, totals)
                totals.result_bytes += len(pickle.dumps(res))
                totals.hidden_bytes += res["stats"].computed * row_bytes
                totals.blocks += 1
                totals.task_seconds += res["load_s"] + res["encode_s"]
                bar.update(int(todo[blk.start : blk.stop].sum()))
                bar.set_postfix(skipped=len(totals.skipped), refresh=False)
        loop_seconds = time.perf_counter() - t_loop
    finally:
        bar.close()
    log.info(
        "%s: rows encoded per worker: %s; the scheduler carried %d B of tasks and %d B of results "
        "for %d B of hidden states",
        out,
        totals.per_worker,
        totals.task_bytes,
        totals.result_bytes,
        totals.hidden_bytes,
    )
    totals.stats.warnings.sort(key=lambda w: w["row"])
    extra = {
        "distributed": {
            "workers": n_workers,
            "blocks": totals.blocks,
            "rows_per_worker": totals.per_worker,
            "task_bytes": totals.task_bytes,
            "result_bytes": totals.result_bytes,
            "hidden_bytes_written_by_workers": totals.hidden_bytes,
            "task_seconds": round(totals.task_seconds, 3),
        }
    }
    if spec.count_retries:
        extra["distributed"]["storage_retries_on_workers"] = worker_retries(totals.retry_windows)
    return finish_run(plan, store, totals.skipped, totals.stats, loop_seconds, extra)


def _submit_blocks(cl, spec, pending, rows, done, totals: _Totals) -> dict:
    """One task per block still to do; {future: block}."""
    futures = {}
    # keys unique per run: a resumed run never gets an older run's result
    run = uuid.uuid4().hex[:8]
    for blk, batches in pending:
        args = (
            spec,
            blk.start,
            rows[blk.start : blk.stop],
            batches,
            done[blk.start : blk.stop].copy(),
            len(rows),
        )
        # ms per block; says what the scheduler carries
        totals.task_bytes += len(pickle.dumps(args))
        f = cl.submit(encode_block, *args, pure=False, key=f"msmtfn-block-{run}-{blk.start}")
        futures[f] = blk
    return futures


def _block_result(fut, blk, futures: dict, out) -> dict:
    """A finished block's result; a failed one cancels the rest and stops the run, naming it."""
    try:
        return fut.result()
    except Exception as e:
        for other in futures:
            other.cancel()
        raise DistributedError(
            f"{out}: rows {blk.start}–{blk.stop - 1} failed on a dask worker: "
            f"{type(e).__name__}: {e}; every block marked done is intact — fix the cause and run "
            "the same command to resume"
        ) from e


def _commit(store: CacheStore, res: dict, totals: _Totals) -> None:
    """A block's data is in the store: flip its flags (after the data, as the single-process writer
    does)."""
    for start, stop, d, sk in res["flags"]:
        store.set_flags(start, stop, d, sk)
    st: EncodeStats = res["stats"]
    totals.stats.warnings += st.warnings
    totals.stats.truncated += st.truncated
    totals.stats.audio_seconds += st.audio_seconds
    totals.stats.computed += st.computed
    totals.skipped.update(res["skipped"])
    if res["retries"] is not None:
        totals.retry_windows.append(res["retries"])
    totals.per_worker[res["worker"]] = totals.per_worker.get(res["worker"], 0) + st.computed
