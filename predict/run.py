"""``predict_calls``: a trained run applied to new, unlabelled recordings.

    recording ──decode (extract.audio.load_segment)──► cut as the run's training segments were
              made: by the transcript's rows, or at pauses into pieces of the training's
              lengths (predict/segmenter.py)
              ──► transcript per segment (CSV by time, or ASR; predict/transcripts.py)
              ──► the run's encoders, rebuilt and identity-checked from its cache settings
                  (predict/features.py)
              ──► the run's model (train.checkpoint.load_run), whole calls per batch
              ──► one row per call

A recording that cannot be used (missing, empty, not audio, NaN samples, no transcript, no segment
long enough for the encoder) is a row with ``status = skipped: <reason>``; the others are predicted.
Calls are processed in groups so that memory stays bounded however many recordings there are; the
output is a fixed function of the inputs (model in eval mode, no sampling).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from extract import AudioError, load_channels, load_segment
from extract.audio import CHANNEL_INDEX, stream_recording
from extract.segmentation import split_text
from pipeline.atomic import atomic_write_text
from pipeline.labels import get_scheme
from pipeline.manifest import Segment, role_text
from pipeline.memory import release_freed_memory
from pipeline.remote_files import absolute
from pipeline.segment_profile import SegmentProfile
from pipeline.units import join_texts, turn_units
from train.checkpoint import CheckpointError, load_run, read_run_config
from train.data import segments_batch
from train.predictions import (
    decode,
    head_widths,
    model_outputs,
    output_tasks,
    outputs_of_vectors,
    segment_vectors_of,
    task_columns,
    task_values,
    use_threads,
)

from .config import CUTS, PredictConfig, PredictError  # noqa: F401 — re-exported
from .features import ModelMismatch, RunEncoders, SegmentFeatures, run_settings, trained_from
from .segmenter import CutterConfig, CutterError, Levels, cut_levels, cut_recording
from .transcripts import (
    AsrTranscriber,
    Piece,
    TranscriptError,
    assign_text,
    channel_speakers,
    check_asr_model,
    read_transcript_csv,
    transcribe_channels,
)

log = logging.getLogger(__name__)

CUT_RATE = 16000  # the rate recordings are decoded at for cutting (and for ASR)
# a transcript reaching further past the end of its recording is flagged in the status
OVERRUN_SECONDS = 1.0


@dataclass(frozen=True)
class CutPlan:
    cut: str  # rows | pauses
    note: str  # what the summary says of it
    cutter: CutterConfig  # where --cut pauses cuts


@dataclass
class SegmentResult:
    call_id: str
    index: int
    start: float
    end: float
    text: str
    status: str = "ok"
    # segment-level runs: task -> {label, probs} | {value}
    predictions: dict = field(default_factory=dict)


@dataclass
class CallResult:
    call_id: str
    source: str
    status: str  # ok | ok: <warnings> | skipped: <reason>
    segments: int = 0  # segments that reached the model
    # seconds of audio in those segments (as predictions_test.csv counts them)
    duration: float | None = None
    # task -> {"label": class, "probs": {class: p}} | {"value": x}
    predictions: dict = field(default_factory=dict)
    segment_rows: list[SegmentResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok" or self.status.startswith("ok:")

    def warn(self, warning: str) -> None:
        """Predicted, with something the user must know (``ok: <warning>; <warning>``)."""
        self.status = (
            f"{self.status}; {warning}" if self.status.startswith("ok:") else f"ok: {warning}"
        )


@dataclass
class PredictResult:
    calls: list[CallResult]
    tasks: list[dict]  # [{"name", "classes", "kind", "level"}] in output order
    run: str
    elapsed: float
    cut: str = ""  # how the recordings were cut (the policy and why)
    report: str | None = None  # --explain: the report's index.html

    @property
    def predicted(self) -> int:
        return sum(c.ok for c in self.calls)

    @property
    def skipped(self) -> int:
        return len(self.calls) - self.predicted

    @property
    def warned(self) -> list[CallResult]:
        return [c for c in self.calls if c.status.startswith("ok:")]

    def summary(self) -> str:
        s = f"predicted {self.predicted} of {len(self.calls)} recordings in {self.elapsed:.1f} s"
        if self.cut:
            s += f"; {self.cut}"
        if self.warned:
            ids = [c.call_id for c in self.warned]
            s += (
                f"; warnings for {len(ids)}: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''} (in the status "
                "column)"
            )
        if self.skipped:
            ids = [c.call_id for c in self.calls if not c.ok]
            s += (
                f"; skipped {self.skipped}: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''} (reasons in the "
                "status column)"
            )
        return s

    def to_json(self) -> dict:
        return {
            "run": self.run,
            "tasks": self.tasks,
            "cut": self.cut,
            "predicted": self.predicted,
            "skipped": self.skipped,
            "report": self.report,
            "calls": [asdict(c) for c in self.calls],
        }


# ------------------------------------------------------------------------------------------------
# the run
class Predictor:
    """The run's model, scheme and encoders, loaded once."""

    def __init__(self, cfg: PredictConfig):
        self.cfg = cfg
        run = Path(cfg.run)
        try:
            meta = read_run_config(run)
            self.model, self.train_cfg = load_run(run, cfg.device)
            # on CPU the thread count changes float sums: the run's count gives the run's numbers
            use_threads(cfg.threads or self.train_cfg.threads, cfg.device)
        except CheckpointError as e:
            raise PredictError(str(e)) from None
        try:
            self.scheme = get_scheme(
                meta["cache"]["label_scheme"], meta["cache"].get("label_scheme_def")
            )
        except KeyError as e:
            raise PredictError(
                f"{run}/config.json: {e.args[0] if e.args else 'no label scheme'}"
            ) from None
        self.tasks = output_tasks(self.scheme, head_widths(self.model))
        self.text_tokens = int(meta["dims"]["text_tokens"])
        try:
            self.encoders = RunEncoders(
                run_settings(meta, run),
                device=cfg.device,
                dtype=cfg.dtype,
                audio_model=cfg.audio_model,
                text_model=cfg.text_model,
                trust_remote_code=cfg.trust_remote_code,
                run_dir=str(run),
                base=trained_from(run, meta.get("train", {}).get("out")),
            )
        except ModelMismatch as e:
            raise PredictError(str(e)) from None
        self.max_seconds = self.encoders.max_seconds
        self.profile = SegmentProfile.from_record(meta["cache"].get("segmentation"))
        # conversation units (pipeline/units.py): as the run's training segments, unless chosen
        self.units = self.encoders.cfg.units if cfg.units == "auto" else cfg.units
        self._plans: dict[bool, CutPlan] = {}
        # the command line's plan (a service's requests choose theirs: with or without transcript)
        self.plan = self.cut_plan(bool(cfg.transcripts))
        self.device = torch.device(cfg.device)
        log.info(
            "%s: tasks %s; %s; encoders %s, %s",
            run,
            ", ".join(t["name"] for t in self.tasks),
            self.plan.note,
            self.encoders.cfg.audio_model,
            self.encoders.cfg.text_model,
        )
        self.amp = self.train_cfg.amp and self.device.type == "cuda"
        self.meta = meta
        # the run's channel setting; with "customer", the recordings' customer channel
        self.channel = self.audio_channel(cfg.customer_channel) if cfg.audio else None
        self.explainer = None
        if cfg.explain:
            self.enable_explain()

    def enable_explain(self) -> None:
        """Build the explainer (--explain; a service builds it for its explain=true requests)."""
        if self.explainer is not None:
            return
        from train.explain import Explainer, ExplainOptions

        cfg = self.cfg
        opts = ExplainOptions(
            row_segments=cfg.explain_segments, method=cfg.explain_method, steps=cfg.explain_steps
        )
        self.explainer = Explainer(self.scheme, self.tasks, self.meta.get("priors", {}), opts)

    def audio_channel(self, customer: str | None) -> str:
        """The channel recordings are read from: the run's setting (mix, left, right, N), or with
        a run trained on each call's customer channel, ``customer``."""
        setting = self.encoders.policy.channel
        if setting != "customer":
            return setting
        chosen = (customer or "").strip().lower()
        if chosen not in ("left", "right") and not chosen.isdigit():
            raise PredictError(
                f"{self.cfg.run} was trained on each call's customer channel (--channel customer): "
                "give the new recordings' customer channel with --customer-channel left|right|N"
            )
        return chosen

    def cut_plan(self, timed_transcript: bool) -> CutPlan:
        """How a recording is cut when its text comes from a timed transcript (True) or from the
        speech recognizer (False): the rule of :func:`choose_cut`, its summary note, the cutter."""
        if timed_transcript not in self._plans:
            cfg, max_s = self.cfg, self.max_seconds
            cut, note = choose_cut(cfg.cut, timed_transcript, self.profile, max_s)
            if self.units == "turns" and timed_transcript and cfg.cut != "pauses":
                cut = "rows"
                why = (
                    "as the run's training segments were made"
                    if cfg.units == "auto"
                    else "as --units turns asks"
                )
                note = (
                    "cut into conversation units (an agent turn and the customer's reply, merged up "
                    f"to {max_s:g} s) of the transcript's rows, {why}"
                )
            limit = self.profile.pause_limit if self.profile and cut == "pauses" else max_s
            try:
                cutter = CutterConfig(
                    method=cfg.cutter,
                    max_seconds=limit,
                    search_seconds=min(cfg.search_seconds, limit / 2),
                    min_seconds=min(1.0, limit / 4),
                )
            except CutterError as e:
                raise PredictError(str(e)) from None
            self._plans[timed_transcript] = CutPlan(cut, note, cutter)
        return self._plans[timed_transcript]

    # -------------------------------------------------------------------------------- model over
    # calls
    def predict_features(
        self, calls: list[list[SegmentFeatures]], explain: bool = False
    ) -> tuple[list[dict[str, torch.Tensor]], list]:
        """Per call, the raw head outputs ({task: (C,) call-level or (segments, C) segment-level}),
        and with ``explain`` its train.explain.CallExplanation (else an empty list)."""
        m = self.model
        bc = self.cfg.batch_calls or self.train_cfg.batch_calls
        out: list[dict[str, torch.Tensor]] = []
        explained: list = []
        # integrated gradients need autograd: no_grad, not inference mode, when explaining
        with torch.no_grad() if explain else torch.inference_mode():
            for i in range(0, len(calls), bc):
                group = calls[i : i + bc]
                # assembled by the trainer's own routine, exactly as training and evaluation batches
                b = segments_batch(group, m, self.text_tokens, self.device)
                if explain:
                    logits, ex = self.explainer(m, b, self.amp)
                    explained += ex
                else:
                    logits = model_outputs(m, b, self.device, self.amp)
                out += self._per_call(group, {k: v.float().cpu() for k, v in logits.items()})
        return out, explained

    def vectors_of(self, feats: list[SegmentFeatures]) -> torch.Tensor:
        """(n, d) segment vectors of in-memory segments, on the CPU: what a call keeps of its
        segments' features once they are encoded (a 3-hour call's hidden states never sit in
        memory at once)."""
        m = self.model
        with torch.inference_mode():
            b = segments_batch([feats], m, self.text_tokens, self.device)
            return segment_vectors_of(m, b, self.device, self.amp).cpu()

    def predict_vectors(self, calls: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """As :meth:`predict_features` without explanations, from each call's (segments, d)
        vectors (:meth:`vectors_of`)."""
        bc = self.cfg.batch_calls or self.train_cfg.batch_calls
        out: list[dict[str, torch.Tensor]] = []
        with torch.inference_mode():
            for i in range(0, len(calls), bc):
                group = calls[i : i + bc]
                seg = torch.cat(group).to(self.device)
                counts = torch.as_tensor([len(c) for c in group], device=self.device)
                logits = outputs_of_vectors(self.model, seg, counts, self.device, self.amp)
                out += self._per_call(group, {k: v.float().cpu() for k, v in logits.items()})
        return out

    def _per_call(self, group, logits) -> list[dict[str, torch.Tensor]]:
        n_segs = sum(len(call) for call in group)
        out, seg_start = [], 0
        for k, call in enumerate(group):
            per = {}
            for name, v in logits.items():
                if self.scheme.level == "segment" and v.shape[0] == n_segs:
                    per[name] = v[seg_start : seg_start + len(call)]  # (segments, C)
                else:
                    per[name] = v[k]
            out.append(per)
            seg_start += len(call)
        return out


def choose_cut(
    cut: str, timed_transcript: bool, profile: SegmentProfile | None, max_seconds: float
) -> tuple[str, str]:
    """(``rows`` | ``pauses``, what the summary says of it): ``--cut auto`` cuts as the run's
    training segments were made — by the transcript's rows where the training rows were timed rows
    of longer recordings and a transcripts CSV is given, else at pauses into pieces of the
    training's lengths. ``cut``: the --cut option; ``timed_transcript``: the text comes from a
    transcript (else from the speech recognizer)."""
    asked = cut
    if cut == "auto":
        timed_rows = profile is not None and profile.policy == "rows"
        cut = "rows" if timed_rows and timed_transcript else "pauses"
    if cut == "rows":
        what = (
            "the transcript's rows" if timed_transcript else "the speech recognizer's timed chunks"
        )
        why = (
            "as the run's training segments were"
            if profile is not None and profile.policy == "rows"
            else "as --cut rows asks"
        )
        return cut, f"cut by {what}, {why}"
    if profile is None:
        return cut, (
            f"cut at pauses into pieces of ≤ {max_seconds:g} s (the run records no training segment "
            "lengths)"
        )
    note = (
        f"cut at pauses into pieces of ≤ {profile.pause_limit:g} s (training: {profile.describe()})"
    )
    if profile.policy == "rows" and asked == "auto":
        note += (
            "; the run was trained on the timed rows of its recordings: --transcripts cuts alike"
        )
    return cut, note


def row_bounds(
    pieces: list[Piece], duration: float, max_seconds: float, roles: str = "none"
) -> tuple[list[tuple[float, float | None]], list[str]]:
    """Segments cut by the transcript's rows, as extraction cuts a CSV's timed rows: each row is a
    segment (its end clipped to the recording; an empty end = to the end); a row over
    ``max_seconds`` becomes equal pieces with its text shared out (extract.segmentation), each
    piece with its row's speaker written before it under ``--roles prefix``, as extraction writes
    them. Rows starting after the end are left out by the caller."""
    bounds: list[tuple[float, float | None]] = []
    texts: list[str] = []
    for p in pieces:
        end = min(p.end, duration)
        span = end - p.start
        # a point in time (a word's timestamp, a chunk clamped to the end): no audio to cut
        if span <= 0:
            log.warning(
                "transcript row %g–%g s has no audio under it and is left out (--cut rows)",
                p.start,
                p.end,
            )
            continue
        n = max(1, math.ceil(span / max_seconds - 1e-9))
        shares = split_text(p.text, n)
        texts += [role_text(p.speaker, t) if roles == "prefix" else t for t in shares]
        if n == 1:
            bounds.append((p.start, None if math.isinf(p.end) else end))
            continue
        step = span / n
        bounds += [
            (p.start + i * step, p.start + (i + 1) * step if i < n - 1 else end) for i in range(n)
        ]
    return bounds, texts


def unite_pieces(pieces: list[Piece], max_seconds: float, roles: str = "none") -> list[Piece]:
    """``--units turns``: the transcript's rows grouped into conversation units as extraction
    groups a CSV's (pipeline/units.py); a unit of several rows has their texts joined (each with its
    speaker before it under ``--roles prefix``) and no one speaker."""
    spans = [(p.start, p.end) for p in pieces]
    out = []
    for unit in turn_units(spans, [p.speaker for p in pieces], max_seconds):
        if len(unit) == 1:
            out.append(pieces[unit[0]])
            continue
        parts = [pieces[i] for i in unit]
        text = join_texts(
            [role_text(q.speaker, q.text) if roles == "prefix" else q.text for q in parts]
        )
        out.append(Piece(parts[0].start, max(q.end for q in parts), text))
    return out


def _past_the_end(result: CallResult, pieces: list[Piece], duration: float) -> list[Piece]:
    """The pieces that have audio under them; those starting at or after the recording's end are
    left out, named in the log (those starting at its very end, as a speech recognizer's clamped
    chunks do, go to the last segment), and a transcript reaching far past the end flags the call (a
    truncated recording)."""
    inside = [p for p in pieces if p.start <= duration]
    after = [p for p in pieces if p.start > duration]
    reach = max((p.end if math.isfinite(p.end) else p.start for p in pieces), default=0.0)
    if reach - duration > OVERRUN_SECONDS:
        left = (
            f"; {len(after)} {'rows' if len(after) != 1 else 'row'} after its end left out"
            if after
            else ""
        )
        result.warn(
            f"transcript runs {reach - duration:.0f} s past the audio (recording {duration:.1f} s{left})"
        )
    if after:
        log.warning(
            "%s: %d transcript rows start after the recording's end (%.2f s) and are left out: %s",
            result.source,
            len(after),
            duration,
            ", ".join(f"{p.start:g}–{p.end:g} s" for p in after[:5])
            + (" …" if len(after) > 5 else ""),
        )
    return inside


def _units_or_rows(
    result: CallResult, pieces: list[Piece], max_seconds: float, roles: str
) -> list[Piece]:
    """The call's conversation units; a transcript without speakers has none to group by, so its
    rows are the segments, with a warning in the call's row of the report."""
    if any(not p.speaker for p in pieces):
        result.warn("--units turns: transcript rows without a speaker; cut by its rows instead")
        return pieces
    return unite_pieces(pieces, max_seconds, roles)


def _decode_for_cut(pred: Predictor, path: str, audio, asr, channel: str):
    """What cutting the recording needs: its frame levels, read block by block (a transcript, the
    energy cutter: memory stays flat however long the call, WAV or container), else its
    samples at CUT_RATE (the speech recognizer and the VAD cutter read them whole). ``audio``: the
    recording already decoded, or the AudioError of its decoding."""
    if isinstance(audio, AudioError):
        raise audio
    if audio is not None:
        return audio
    if asr is None and pred.cfg.cutter == "energy":
        hop = CutterConfig.hop_seconds
        return Levels.of_blocks(stream_recording(path, CUT_RATE, channel), CUT_RATE, hop)
    return load_segment(path, None, None, CUT_RATE, channel)[0]


def _recognise(
    pred: Predictor, asr, path: str, x, channel: str | None, customer: str | None = None
) -> tuple[list[Piece], bool]:
    """The speech recognizer's pieces, and whether they carry their speakers: with
    ``--asr-channels split`` each channel of a multi-channel recording is transcribed on its own
    (``channel``: the one read for the features; None: one transcript of ``x``)."""
    if channel is None or pred.cfg.asr_channels != "split":
        return asr(x, CUT_RATE), False
    channels, _ = load_channels(path, CUT_RATE)
    if len(channels) < 2:
        return asr(x, CUT_RATE), False
    # the customer's channel: the one a customer-channel run reads, else the request's or
    # --customer-channel
    own = pred.encoders.policy.channel == "customer"
    known = channel if own else (customer or pred.cfg.customer_channel)
    index = CHANNEL_INDEX.get(str(known or "").lower())
    if index is None and str(known or "").isdigit():
        index = int(known)
    speakers = channel_speakers(len(channels), index)
    return transcribe_channels(asr, channels, CUT_RATE, speakers), True


def _plan_call(
    pred: Predictor,
    path: str,
    call_id: str,
    transcripts: dict | None,
    transcripts_path: str | None,
    asr: AsrTranscriber | None,
    audio=None,
    channel: str | None = None,
    customer: str | None = None,
) -> tuple[CallResult, list[Segment]]:
    """The call's segments (not yet encoded) and its result row. ``audio``: the recording already
    decoded at CUT_RATE, or an AudioError (a service decodes in a bounded process), else it is
    decoded here; ``channel``: the one to read (else the run's, :meth:`Predictor.audio_channel`);
    ``customer``: the customer's channel, naming the speakers of a recording recognised channel by
    channel (else --customer-channel)."""
    result = CallResult(call_id=call_id, source=path, status="ok")
    channel = channel or pred.channel or pred.audio_channel(None)
    try:
        x = _decode_for_cut(pred, path, audio, asr, channel)
    except AudioError as e:
        result.status = f"skipped: {e}"
        return result, []
    duration = x.duration if isinstance(x, Levels) else len(x) / CUT_RATE
    if transcripts is not None:
        pieces: list[Piece] | None = transcripts.get(call_id)
        if pieces is None:
            result.status = (
                f"skipped: no transcript rows for call_id {call_id} in {transcripts_path}"
            )
            return result, []
        by_speaker = True
    else:
        # a service hands ``audio`` decoded in its bounded worker; channel by channel, the file is
        # read again here (it decoded there within the limits)
        pieces, by_speaker = _recognise(pred, asr, path, x, channel, customer)
    # timed rows with their speakers (a transcript, or each channel recognised on its own) are cut
    # as a transcript's rows
    plan = pred.cut_plan(by_speaker)
    pieces = _past_the_end(result, pieces, duration)
    roles = pred.encoders.cfg.roles  # as the run's training text was written
    if plan.cut == "rows":
        if not pieces:
            result.status = (
                f"skipped: no transcript row inside the recording's {duration:.1f} s (--cut rows)"
            )
            return result, []
        if pred.units == "turns":
            pieces = _units_or_rows(result, pieces, pred.max_seconds, roles)
        bounds, texts = row_bounds(pieces, duration, pred.max_seconds, roles)
    else:
        if roles == "prefix":
            pieces = [replace(p, text=role_text(p.speaker, p.text)) for p in pieces]
        bounds = (
            cut_levels(x, plan.cutter)
            if isinstance(x, Levels)
            else cut_recording(x, CUT_RATE, plan.cutter)
        )
        texts = assign_text(pieces, bounds)
    segs = [
        Segment(
            segment_id=f"{call_id}#{i}",
            call_id=call_id,
            index=i,
            split="",
            label="",
            audio_path=absolute(path),
            text=t,
            start=a,
            end=b,
            source_row=path,
            channel=channel,
        )
        for i, ((a, b), t) in enumerate(zip(bounds, texts))
    ]
    result.segment_rows = [
        SegmentResult(call_id, i, round(a, 4), round(duration if b is None else b, 4), t)
        for i, ((a, b), t) in enumerate(zip(bounds, texts))
    ]
    return result, segs


STREAM_SEGMENTS = 128  # segments encoded at a time, then reduced to their vectors


def _encoded(pred: Predictor, segs: list[Segment], explain: bool) -> list:
    """Per segment, the reason it cannot be encoded, else its features (explaining reads them)
    or, by default, its segment vector: the segments are encoded STREAM_SEGMENTS at a time and
    only their vectors kept, so a long call's memory does not grow with its hidden states."""
    step = len(segs) if explain else STREAM_SEGMENTS
    out: list = []
    for i in range(0, len(segs), max(step, 1)):
        feats = pred.encoders.encode(
            segs[i : i + step],
            batch_seconds=pred.cfg.batch_seconds,
            num_workers=pred.cfg.num_workers,
        )
        ok = [f for f in feats if isinstance(f, SegmentFeatures)]
        if not explain and ok:
            vectors = iter(pred.vectors_of(ok))
            feats = [next(vectors) if isinstance(f, SegmentFeatures) else f for f in feats]
            release_freed_memory()  # the chunk's hidden states are gone: their pages too
        out += feats
    return out


def _finish_group(
    pred: Predictor, group: list[tuple[CallResult, list[Segment]]], report=None
) -> None:
    """Encode the group's segments, run the model over its calls, fill in the results (and with a
    predict.explain.ReportWriter, explain them into it)."""
    segs = [s for _, ss in group for s in ss]
    feats = _encoded(pred, segs, explain=report is not None)
    usable: list[tuple[CallResult, list[SegmentFeatures], list[SegmentResult]]] = []
    k = 0
    for result, _ in group:
        fs, kept = [], []
        for row in result.segment_rows:
            f = feats[k]
            k += 1
            if not isinstance(f, str):
                fs.append(f)
                kept.append(row)
            else:
                row.status = f"skipped: {f}"
        if not fs:
            reasons = sorted({r.status.removeprefix("skipped: ") for r in result.segment_rows})
            result.status = f"skipped: no segment could be encoded ({'; '.join(reasons)})"
            continue
        if len(fs) < len(result.segment_rows):
            log.warning(
                "%s: %d of %d segments cannot be encoded and are left out of the call",
                result.source,
                len(result.segment_rows) - len(fs),
                len(result.segment_rows),
            )
        usable.append((result, fs, kept))
    if report is None:
        outputs, explained = pred.predict_vectors([torch.stack(fs) for _, fs, _ in usable]), []
    else:
        outputs, explained = pred.predict_features([fs for _, fs, _ in usable], True)
    for (result, fs, kept), out in zip(usable, outputs):
        result.segments = len(fs)
        lengths = [row.end - row.start for row in kept]
        result.duration = round(float(sum(lengths)), 3)
        if pred.profile is not None and (far := pred.profile.far_outside(lengths)):
            result.warn(far)
        segment_level = {h: v for h, v in out.items() if v.dim() == 2}
        call_level = {h: v[None] for h, v in out.items() if v.dim() == 1}
        if segment_level:
            for row, answer in zip(kept, decode(pred.scheme, pred.tasks, segment_level)):
                row.predictions.update(answer)
        if call_level:
            result.predictions.update(decode(pred.scheme, pred.tasks, call_level)[0])
    for (result, _, kept), e in zip(usable, explained):
        report.add(_call_view(pred, result, kept, e))


def _call_view(pred: Predictor, result: CallResult, kept: list[SegmentResult], explanation):
    """A predicted call as the report shows it: its encoded segments, each with its audio."""
    from .explain import CallView, SegmentView, attach, audio_clip, lay_out

    segs = [
        SegmentView(
            row.index,
            row.start,
            row.end,
            row.text,
            clip=audio_clip(result.source, row.start, row.end),
            predictions=row.predictions,
        )
        for row in kept
    ]
    lay_out(segs, [result.source] * len(segs))
    view = CallView(result.call_id, result.source, result.status, result.predictions, segs)
    text = pred.encoders.text
    return attach(view, explanation, text.tokenizer, text.max_tokens)


def predict_calls(cfg: PredictConfig, predictor: Predictor | None = None) -> PredictResult:
    """Predict every recording of ``cfg.audio``; unusable ones are returned with their reason, never
    raised. ``predictor``: a :class:`Predictor` already loaded (many calls of predict_calls with one
    model)."""
    t0 = time.perf_counter()
    try:
        if cfg.asr:
            # before the run's models load: an unusable --asr answers at once
            check_asr_model(cfg.asr)
    except TranscriptError as e:
        raise PredictError(str(e)) from None
    pred = predictor or Predictor(cfg)
    transcripts = None
    asr = None
    try:
        if cfg.transcripts:
            transcripts = read_transcript_csv(cfg.transcripts)
        else:
            asr = AsrTranscriber(
                cfg.asr, device=cfg.device, trust_remote_code=cfg.trust_remote_code
            )
    except TranscriptError as e:
        raise PredictError(str(e)) from None
    report = None
    if cfg.explain:
        from train.explain import main_task

        from .explain import ReportWriter

        report = ReportWriter(
            cfg.explain,
            str(cfg.run),
            pred.tasks,
            main_task(pred.model.cfg.task, pred.explainer.names),
        )
    results: list[CallResult] = []
    seen: dict[str, str] = {}
    group: list[tuple[CallResult, list[Segment]]] = []
    for path in tqdm(cfg.audio, desc="predict", unit="call", disable=not cfg.progress):
        call_id = Path(path).stem
        if call_id in seen:
            results.append(
                CallResult(call_id, path, f"skipped: duplicate call id (also {seen[call_id]})")
            )
            continue
        seen[call_id] = path
        result, segs = _plan_call(pred, path, call_id, transcripts, cfg.transcripts, asr)
        results.append(result)
        if not result.ok:
            continue
        group.append((result, segs))
        if len(group) >= cfg.group_calls:
            _finish_group(pred, group, report)
            group = []
    if group:
        _finish_group(pred, group, report)
    for r in results:
        if not r.ok:
            log.warning("%s: %s", r.source, r.status)
    if report is not None:
        from .explain import CallView

        for r in results:
            if not r.ok:
                report.add(CallView(r.call_id, r.source, r.status, {}, []))
    return PredictResult(
        calls=results,
        tasks=[{k: t[k] for k in ("name", "classes", "kind", "level")} for t in pred.tasks],
        run=str(cfg.run),
        elapsed=time.perf_counter() - t0,
        cut=pred.plan.note,
        report=str(report.close()) if report is not None else None,
    )


# -------------------------------------------------------------------------------------------------
# output
def _tasks_at(result: PredictResult, level: str) -> list[dict]:
    """Tasks with columns at ``level``: the scheme's level, or where the model's heads actually
    answered (a segment-level scheme on a model with call-level heads)."""
    rows = (
        [c.predictions for c in result.calls]
        if level == "call"
        else [s.predictions for c in result.calls for s in c.segment_rows]
    )
    return [t for t in result.tasks if t["level"] == level or any(t["name"] in p for p in rows)]


def calls_csv(result: PredictResult) -> str:
    call_tasks = _tasks_at(result, "call")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["call_id", "source", "status", "segments", "duration_s", *task_columns(call_tasks)])
    for c in result.calls:
        w.writerow(
            [
                c.call_id,
                c.source,
                c.status,
                c.segments,
                "" if c.duration is None else f"{c.duration:.3f}",
                *task_values(call_tasks, c.predictions),
            ]
        )
    return buf.getvalue()


def segments_csv(result: PredictResult) -> str:
    seg_tasks = _tasks_at(result, "segment")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["call_id", "segment", "start", "end", "status", "text", *task_columns(seg_tasks)])
    for c in result.calls:
        for s in c.segment_rows:
            w.writerow(
                [
                    s.call_id,
                    s.index,
                    f"{s.start:.4f}",
                    f"{s.end:.4f}",
                    s.status,
                    s.text,
                    *task_values(seg_tasks, s.predictions),
                ]
            )
    return buf.getvalue()


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_outputs(
    result: PredictResult, out: str | Path, segments_out: str | Path | None = None
) -> None:
    write_atomic(out, calls_csv(result))
    if segments_out:
        write_atomic(segments_out, segments_csv(result))


def result_json(result: PredictResult) -> str:
    return json.dumps(result.to_json(), ensure_ascii=False, indent=2)
