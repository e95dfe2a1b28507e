"""Stage 1: dataset → manifest → planned rows → frozen encoders in length-bucketed batches → cache
store.

Resume is built in: rows whose ``done`` flag is set are never recomputed, and an interrupt (Ctrl-C,
an error) keeps every encoded row but the batch in flight; a SIGKILL loses at most the last
``CHECKPOINT_SECONDS`` of work (extract/writer.py). Batches are a fixed function of the planned rows
(not of what is left), so a resumed run computes every row in the same batch as an uninterrupted run
would, and the store comes out bit for bit the same.

The plan (extract/plan.py) and the encode loop (extract/encode.py) are shared with the dask path
(extract/distributed.py), which this module imports only when asked for (dask is heavy; no import
circle).
"""

from __future__ import annotations

import contextlib
import logging
import time

from tqdm.auto import tqdm

from pipeline.lock import StoreLock
from pipeline.remote_files import is_url
from pipeline.retries import RetryCounter

from .augment import Augmenter
from .config import ExtractConfig, ExtractResult
from .encode import SegmentSource, encode_batches, make_loader
from .plan import ExtractPlan, finish_run, make_plan, open_store, plan_blocks
from .writer import CHECKPOINT_SECONDS, ShardWriter

log = logging.getLogger(__name__)


def extract(cfg: ExtractConfig, progress: bool = True, client=None) -> ExtractResult:
    """Encode ``cfg.dataset`` into ``cfg.out``. With ``cfg.scheduler``/``cfg.workers`` (or a dask
    ``client``) the encoding fans out to dask workers (extract/distributed.py); the store comes out
    the same."""
    remote = is_url(cfg.data_dir) or is_url(cfg.out or "")
    # object storage: the SDKs' retries counted for report.json (pipeline/retries.py)
    with RetryCounter() if remote else contextlib.nullcontext():
        plan = make_plan(cfg, progress, on_workers=client is not None)
        with StoreLock(plan.out, storage_options=cfg.storage_options):
            if client is not None or cfg.distributed:
                from .distributed import extract_distributed  # dask only when asked for

                return extract_distributed(plan, client=client)
            return _extract_into(plan)


def _extract_into(plan: ExtractPlan) -> ExtractResult:
    cfg, out, enc = plan.cfg, plan.out, plan.enc
    store = open_store(plan)
    done = store.done()
    todo = ~done
    log.info(
        "%s: %d of %d segments already done; %d to encode",
        out,
        int(done.sum()),
        len(plan.rows),
        int(todo.sum()),
    )
    batches = [b for _, bs in plan_blocks(plan, store) for b in bs if todo[b].any()]

    settings = cfg.cache
    source = SegmentSource.for_encoders(
        plan.rows, enc, Augmenter(settings.augment, settings.seed) if settings.augment else None
    )
    loader = make_loader(source, batches, cfg.num_workers)

    # partial shards are written every CHECKPOINT_SECONDS too: a block's shards complete only near
    # its end
    writer = ShardWriter(
        store, todo, write_threads=cfg.write_threads, checkpoint_seconds=CHECKPOINT_SECONDS
    )
    t_loop = time.perf_counter()
    bar = tqdm(
        total=int(todo.sum()), unit="seg", desc="extract", disable=not plan.progress, smoothing=0.1
    )
    try:
        stats = encode_batches(
            loader, plan.rows, todo, enc.audio, enc.text, writer, enc.policy.input_rate, bar
        )
        writer.close()
        loop_seconds = time.perf_counter() - t_loop
    finally:
        bar.close()
        # on Ctrl-C or an error: write every row already encoded (the batch in flight is lost),
        # partial shards too
        writer.close(raise_errors=False, keep_partial=True)
    return finish_run(plan, store, writer.skipped, stats, loop_seconds)
