"""The scoring behind ``msmtfn-serve``: one run's model loaded once, the requests of many clients
put through ``msmtfn-predict``'s own path (predict/run.py: ``_plan_call`` cuts a call and gives its
segments their text, ``_finish_group`` encodes them and runs the model), with the device work of
concurrent requests batched.

    request thread:  upload ──BoundedDecoder (a capped worker process)──► samples
                     ──_plan_call (cut as the run's training was; transcript or ASR text)──► queue
    batch thread:    the first call waits ``batch_window_ms`` for others (at most the run's
                     ``group_calls``), then one ``_finish_group`` for the lot ──► each its answer

A batch's calls are the calls ``msmtfn-predict`` would encode together had they been in one
folder, so the numbers equal the command line's (tests/test_serve.py checks to 1e-6).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from .config import PredictConfig, PredictError
from .decoding import BoundedDecoder, DecodeLimits
from .run import CUT_RATE, CallResult, Predictor, _finish_group, _plan_call
from .serve_config import ServeConfig
from .transcripts import AsrTranscriber, Piece, TranscriptError, check_asr_model

log = logging.getLogger(__name__)


class RequestError(Exception):
    """What the client must fix (answered 4xx with this one line); ``status`` is the code."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def transcript_pieces(items) -> list[Piece]:
    """A request's transcript: a JSON list of ``{"start", "end", "text"[, "speaker"]}`` (seconds;
    ``end`` null = to the end of the recording, as an empty end in predict's CSV), in time
    order."""
    if not isinstance(items, list):
        raise RequestError('transcript: expected a JSON list of {"start", "end", "text"}')
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text", ""), str):
            raise RequestError(f'transcript item {i}: expected {{"start", "end", "text"}}')
        start, end = item.get("start", 0.0), item.get("end")
        try:
            start = 0.0 if start is None else float(start)
            end = math.inf if end is None else float(end)
        except (TypeError, ValueError):
            raise RequestError(f"transcript item {i}: start and end must be seconds") from None
        if not (math.isfinite(start) and start >= 0 and end >= start):
            raise RequestError(
                f"transcript item {i}: start {start:g}, end {end:g}: need 0 ≤ start ≤ end"
            )
        speaker = item.get("speaker") or ""
        if not isinstance(speaker, str):
            raise RequestError(f"transcript item {i}: speaker must be text")
        out.append(Piece(start, end, item.get("text", ""), speaker.strip()))
    return sorted(out, key=lambda p: (p.start, p.end))


def weights_id(run: str) -> str:
    """Which model answers: the first 16 hex digits of model.safetensors' SHA-256."""
    path = Path(run) / "model.safetensors"
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError:
        return ""


def answer(result: CallResult) -> dict:
    """A predicted call as the response's ``segments`` and ``predictions``."""

    def head(p: dict) -> dict:
        if "value" in p:
            return {"value": p["value"]}
        return {"class": p["label"], "probabilities": p.get("probs")}

    segments = []
    for s in result.segment_rows:
        row = {"start": s.start, "end": s.end, "text": s.text, "status": s.status}
        if s.predictions:
            row["predictions"] = {t: head(p) for t, p in s.predictions.items()}
        segments.append(row)
    return {
        "status": result.status,
        "duration_s": result.duration,
        "segments": segments,
        "predictions": {t: head(p) for t, p in result.predictions.items()},
    }


class _Explanations:
    """Where ``_finish_group`` puts explained calls (a report writer's ``add``): each call's
    explanations.csv rows as JSON objects (numbers as numbers, empty cells as null)."""

    TEXT = ("text", "task", "class", "top_words", "top_audio")

    def __init__(self):
        self.rows: dict[str, list[dict]] = {}

    def add(self, view) -> None:
        from .explain import COLUMNS, csv_rows

        out = []
        for row in csv_rows(view):
            item = {}
            for column, value in zip(COLUMNS, row):
                if column in ("call_id", "status"):
                    continue
                if column not in self.TEXT:
                    value = None if value == "" else float(value)
                    if column in ("segment", "top_neighbour") and value is not None:
                        value = int(value)
                item[column] = value
            out.append(item)
        self.rows[view.call_id] = out


@dataclass
class _Job:
    result: CallResult
    segments: list
    explain: bool
    done: Future


class Scorer:
    """The loaded run; :meth:`score` is safe from many threads at once."""

    def __init__(self, cfg: ServeConfig, device: str):
        self.cfg = cfg
        try:
            if cfg.asr:
                check_asr_model(cfg.asr)
            self.pred = Predictor(
                PredictConfig(
                    run=cfg.run,
                    audio=(),
                    device=device,
                    batch_calls=cfg.batch_calls,
                    threads=cfg.threads,
                    asr_channels=cfg.asr_channels,
                    trust_remote_code=cfg.trust_remote_code,
                    progress=False,
                )
            )
            self.asr = (
                AsrTranscriber(cfg.asr, device=device, trust_remote_code=cfg.trust_remote_code)
                if cfg.asr
                else None
            )
        except TranscriptError as e:
            raise PredictError(str(e)) from None
        self.pred.enable_explain()
        self.run_id = weights_id(cfg.run)
        self._asr_lock = threading.Lock()
        self.decoder = BoundedDecoder(
            DecodeLimits(
                timeout_s=cfg.decode_timeout_s,
                memory_mb=cfg.decode_memory_mb,
                max_audio_minutes=cfg.max_audio_minutes,
                workers=cfg.decode_workers,
            ),
            CUT_RATE,
        )
        self.max_batch = max(1, self.pred.cfg.group_calls)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._batcher = threading.Thread(target=self._batches, name="msmtfn-batches", daemon=True)
        self._batcher.start()
        self.served = {"calls": 0, "batches": 0}  # model work done (/v1/info; tests, benchmark)

    def info(self) -> dict:
        enc = self.pred.encoders.cfg
        return {
            "run": str(self.cfg.run),
            "run_id": self.run_id,
            "label_scheme": self.pred.scheme.name,
            "level": self.pred.scheme.level,
            "tasks": [
                {k: t[k] for k in ("name", "classes", "kind", "level")} for t in self.pred.tasks
            ],
            "encoders": {"audio": enc.audio_model, "text": enc.text_model},
            "asr": self.cfg.asr,
            "asr_channels": self.cfg.asr_channels if self.cfg.asr else None,
            "served": dict(self.served),
            "cut": {
                "with transcript": self.pred.cut_plan(True).note,
                "without": self.pred.cut_plan(False).note if self.asr else None,
            },
        }

    def score(
        self,
        path: str,
        call_id: str,
        pieces: list[Piece] | None,
        explain: bool,
        customer_channel: str | None = None,
    ) -> dict:
        """One uploaded recording → the response's body (RequestError for what cannot be used)."""
        try:
            channel = self.pred.audio_channel(customer_channel)
        except PredictError as e:
            raise RequestError(
                f"{e}".replace("--customer-channel", "the customer_channel field")
            ) from None
        if pieces is None and self.asr is None:
            raise RequestError(
                "no transcript in the request and this server has no --asr model: send a "
                '"transcript" field (a JSON list of {"start", "end", "text"})'
            )
        log.info("call %s: scoring (%d bytes)", call_id, os.path.getsize(path))
        audio = self.decoder.decode(path, channel)
        key = uuid.uuid4().hex  # internal id: two clients may send the same call_id
        with self._asr_lock if pieces is None else contextlib.nullcontext():
            result, segs = _plan_call(
                self.pred,
                path,
                key,
                None if pieces is None else {key: pieces},
                "the request's transcript",
                self.asr,
                audio=audio,
                channel=channel,
                customer=customer_channel,
            )
        if result.ok:
            job = _Job(result, segs, explain, Future())
            self._jobs.put(job)
            result, rows = job.done.result()
        else:
            rows = None
        if not result.ok:
            raise RequestError(result.status.removeprefix("skipped: ").replace(path, "the upload"))
        body = {"call_id": call_id, **answer(result)}
        if explain:
            body["explanation"] = rows
        return body

    # ---------------------------------------------------------------------------- the batch thread
    def _batches(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.cfg.batch_window_ms / 1000
            while len(jobs) < self.max_batch:
                try:
                    job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                jobs.append(job)
            for explain in (False, True):  # explaining runs another pass: its own batch
                group = [j for j in jobs if j.explain == explain]
                if group:
                    self._run(group, explain)

    def _run(self, jobs: list[_Job], explain: bool) -> None:
        collector = _Explanations() if explain else None
        try:
            _finish_group(self.pred, [(j.result, j.segments) for j in jobs], collector)
            self.served["batches"] += 1
            self.served["calls"] += len(jobs)
        except Exception as e:  # the server goes on; these requests get the reason
            log.exception("a batch of %d calls failed", len(jobs))
            for j in jobs:
                j.done.set_exception(e)
            return
        for j in jobs:
            rows = collector.rows.get(j.result.call_id) if collector else None
            j.done.set_result((j.result, rows))

    def close(self) -> None:
        """After the last request: stop the batch thread and the decode workers."""
        self._jobs.put(None)
        self._batcher.join(60)
        self.decoder.close()
