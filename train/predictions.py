"""The one inference path: the model over batches of calls → per-item outputs → every reported
task's answer.

Training's evaluation (metrics.json), the run's prediction files (``predictions_{valid,test}.csv``)
and ``msmtfn-predict`` (new recordings, or ``--cache``) all go through :func:`run_model` /
:func:`decode`, and every reported task is derived by ``train.metrics.reported_predictions``: what a
published figure describes is what a user gets. The CSV columns are msmtfn-predict's
(``pred_<task>``, ``p_<task>_<class>``), plus ``true_<task>``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import effective_threads
from .metrics import reported_predictions


# -------------------------------------------------------------------------------------------------
# tasks
def output_tasks(scheme, heads: dict[str, int]) -> list[dict]:
    """Every task the run reports, in the metrics' order and by their rule: its heads, the coarser
    tasks of a single-head run, the classes a regression's score falls in and, beside a regression,
    the class heads as ``<task>:head``. ``heads``: head name -> width (1 for a regression)."""
    probe = {h: (np.zeros(1) if k == 1 else np.full((1, k), 1.0 / k)) for h, k in heads.items()}
    out = []
    for name in reported_predictions(scheme, probe):
        t = scheme.task(name.split(":")[0])
        out.append(
            {"name": name, "classes": list(t.classes), "kind": t.kind, "level": scheme.level}
        )
    return out


def head_widths(model) -> dict[str, int]:
    return {h: m[-1].out_features for h, m in model.heads.items()}


def decode_outputs(scheme, tasks: list[dict], outputs: dict[str, np.ndarray]) -> list[dict]:
    """Per item, {task: {"label", "probs"} or {"value"}} from per-head probabilities (items, k) /
    values (items,)."""
    reported = reported_predictions(scheme, outputs)
    n = len(next(iter(outputs.values())))
    items: list[dict] = [{} for _ in range(n)]
    for t in tasks:
        rep = reported.get(t["name"])
        if rep is None:
            continue
        for i in range(n):
            if t["kind"] == "regression":
                items[i][t["name"]] = {"value": float(rep.pred[i])}
            else:
                d = {"label": t["classes"][int(rep.pred[i])]}
                if rep.probs is not None:
                    d["probs"] = dict(zip(t["classes"], rep.probs[i].tolist()))
                items[i][t["name"]] = d
    return items


def head_outputs(scheme, logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Raw head outputs → probabilities (softmax) or values (a regression), float64 on the CPU."""
    out = {}
    for name, v in logits.items():
        v = v.float().cpu()
        out[name] = (
            (v.reshape(-1) if scheme.task(name).is_regression else torch.softmax(v, -1))
            .numpy()
            .astype(np.float64)
        )
    return out


def decode(scheme, tasks: list[dict], logits: dict[str, torch.Tensor]) -> list[dict]:
    return decode_outputs(scheme, tasks, head_outputs(scheme, logits))


# ------------------------------------------------------------------------------------------- the
# model run
def regression_tasks(scheme) -> frozenset:
    return frozenset(t.name for t in scheme.tasks if t.is_regression)


def model_outputs(model, batch, device, amp: bool) -> dict:
    """The model's raw head outputs for a :class:`~train.data.Batch`, under bf16 autocast on CUDA
    when ``amp``: the one forward call of training, evaluation and msmtfn-predict."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        return model(batch.audio, batch.audio_len, batch.text, batch.text_len, batch.seg_counts)


def segment_vectors_of(model, batch, device, amp: bool) -> torch.Tensor:
    """(S, d) float32 segment vectors of a batch's segments, under the autocast of
    :func:`model_outputs` (the first half of its forward call)."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        v = model.segment_vectors(batch.audio, batch.audio_len, batch.text, batch.text_len)
    return v.float()


def outputs_of_vectors(model, seg: torch.Tensor, seg_counts: torch.Tensor, device, amp: bool):
    """The head outputs of calls from their segment vectors (the second half of
    :func:`model_outputs`)."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        return model.outputs_of(seg, seg_counts)


@dataclass
class Scored:
    """One split (or any calls) through the model: one entry per scored item — a call, or a scored
    segment."""

    outputs: dict[str, np.ndarray]  # per head: probabilities (items, k) or values (items,)
    truth: dict[str, np.ndarray]  # per task: targets (meaningless where not ``labelled``)
    labelled: np.ndarray  # (items,) bool
    calls: np.ndarray  # (items,) CallData index
    segments: np.ndarray | None  # (items,) position in the call (segment-level), else None
    loss: float | None  # mean loss per labelled item
    # with an explainer: (CallData index, train.explain.CallExplanation) per call
    explanations: list = field(default_factory=list)


@torch.no_grad()
def run_model(
    model, batches, data, weights: dict, device, amp: bool, loss_fn=None, explainer=None
) -> Scored:
    """The model over ``batches`` (eval mode): per-item outputs, targets and identities; ``loss_fn``
    as in training (train.loop._loss), on the labelled items only (None: no loss). ``explainer``
    (a train.explain.Explainer): each call's explanation too, from the same forward pass."""
    model.eval()
    scheme = data.scheme
    regression = regression_tasks(scheme)
    outs: dict[str, list] = {t: [] for t in model.heads}
    y: dict[str, list] = {t: [] for t in data.labels}
    lab, calls, segs = [], [], []
    total, n = 0.0, 0
    explained = []
    for batch in batches:
        if explainer is None:
            logits = model_outputs(model, batch, device, amp)
        else:
            logits, calls_explained = explainer(model, batch, amp)
            explained += [(batch.calls[e.call], e) for e in calls_explained]
        counts = batch.seg_counts.cpu().numpy()
        if batch.mask is not None:  # segment level: the scored segments
            keep = batch.mask.cpu().numpy()
            item_call = np.repeat(np.asarray(batch.calls), counts)[keep]
            item_seg = np.concatenate([np.arange(k) for k in counts])[keep]
            item_lab = data.labelled_row[torch.as_tensor(batch.rows)].numpy()[keep]
            sel = torch.as_tensor(keep, device=batch.seg_counts.device)
        else:
            item_call, item_seg = np.asarray(batch.calls), None
            item_lab = np.asarray([data.labelled[c] for c in batch.calls], dtype=bool)
            sel = None
        if not len(item_call):
            continue
        picked = {t: (v if sel is None else v[sel]) for t, v in logits.items()}
        truth = {t: (v if sel is None else v[sel]) for t, v in batch.labels.items()}
        if item_lab.any() and loss_fn is not None:
            on = torch.as_tensor(item_lab, device=batch.seg_counts.device)
            k = int(item_lab.sum())
            total += (
                float(
                    loss_fn(
                        {t: v[on] for t, v in picked.items()},
                        {t: v[on] for t, v in truth.items()},
                        weights,
                        None,
                        regression,
                    )
                )
                * k
            )
            n += k
        for t, v in head_outputs(scheme, picked).items():
            outs[t].append(v)
        for t, v in truth.items():
            y[t].append(v.cpu().numpy())
        lab.append(item_lab)
        calls.append(item_call)
        if item_seg is not None:
            segs.append(item_seg)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return Scored(
        outputs={t: cat(v) for t, v in outs.items() if v},
        truth={t: cat(v) for t, v in y.items() if v},
        labelled=cat(lab).astype(bool),
        calls=cat(calls).astype(np.int64),
        segments=cat(segs).astype(np.int64) if segs else None,
        loss=total / n if n else None,
        explanations=explained,
    )


# -------------------------------------------------------------------------------------------------
# tables
def task_columns(tasks: list[dict]) -> list[str]:
    cols = []
    for t in tasks:
        cols.append(f"pred_{t['name']}")
        cols += [f"p_{t['name']}_{c}" for c in t["classes"]]
    return cols


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def task_values(tasks: list[dict], preds: dict) -> list[str]:
    vals = []
    for t in tasks:
        p = preds.get(t["name"])
        if p is None:
            vals += [""] * (1 + len(t["classes"]))
        elif "value" in p:
            vals.append(_fmt(p["value"]))
            vals += [""] * len(t["classes"])
        else:  # classes derived from a regression's score have a label but no probabilities
            vals.append(p["label"])
            vals += [_fmt(p["probs"][c]) if "probs" in p else "" for c in t["classes"]]
    return vals


def _time(x) -> str:
    return f"{float(x):.4f}" if np.isfinite(float(x)) else ""


def prediction_table(scored: Scored, data, tasks: list[dict]) -> str:
    """CSV: one row per call (or scored segment) with msmtfn-predict's columns and
    ``true_<task>``."""
    scheme = data.scheme
    table = data.store.table()
    answers = decode_outputs(scheme, tasks, scored.outputs) if len(scored.calls) else []
    truths = [t for t in tasks if ":" not in t["name"]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    segment_level = scored.segments is not None
    seconds_of = data.store.segment_seconds()
    head = (
        ["call_id", "segment", "start", "end", "status", "text"]
        if segment_level
        else ["call_id", "source", "status", "segments", "duration_s"]
    )
    w.writerow(head + task_columns(tasks) + [f"true_{t['name']}" for t in truths])
    for i, answer in enumerate(answers):
        c = int(scored.calls[i])
        rows = data.rows[c]
        if segment_level:
            r = int(rows[int(scored.segments[i])])
            lead = [
                data.calls[c],
                int(table["segment_index"][r]),
                _time(table["start"][r]),
                _time(table["end"][r]),
                "ok",
                "",
            ]
        else:
            # the seconds of audio in the call's scored segments, as msmtfn-predict counts them
            # (empty for an older store's whole-file segments, whose length it did not keep)
            seconds = float(seconds_of[rows].sum())
            lead = [
                data.calls[c],
                table["source_path"][int(rows[0])],
                "ok",
                len(rows),
                f"{seconds:.3f}" if np.isfinite(seconds) else "",
            ]
        true = []
        for t in truths:
            if not scored.labelled[i]:
                true.append("")
            elif t["kind"] == "regression":
                true.append(_fmt(float(scored.truth[t["name"]][i])))
            else:
                true.append(t["classes"][int(scored.truth[t["name"]][i])])
        w.writerow(lead + task_values(tasks, answer) + true)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ a
# cache's calls
SCORE_SPLITS = ("test", "valid", "train", "all")


def use_threads(n: int, device: str = "cpu") -> None:
    """torch's CPU threads: ``n``, or on the CPU when ``n`` is 0 the count training takes by default
    (train.config.default_threads); on a GPU 0 leaves torch's own. CPU float sums depend on the
    thread count, so scoring with the run's own count reproduces its numbers to the last digit."""
    if str(device).startswith("cpu"):
        n = effective_threads(n)
    if n:
        torch.set_num_threads(n)


@dataclass
class CacheScores:
    """A trained run over calls of a cache: the scored items, the calls, the reported tasks."""

    scored: Scored
    data: object  # train.data.CallData
    tasks: list[dict]
    meta: dict  # the run's config.json

    def table(self) -> str:
        return prediction_table(self.scored, self.data, self.tasks)


def score_cache(
    run_dir,
    cache: str,
    split: str = "test",
    device: str = "cpu",
    batch_calls: int = 0,
    storage_options: dict | None = None,
    threads: int = 0,
) -> tuple[str, int]:
    """(CSV text, rows) of a trained run over the calls of an existing cache: the run's own cache
    (its ``--split test`` output equals the run's predictions_test.csv) or a cache of new calls
    extracted with the run's encoder settings (unlabelled calls are scored too; their ``true_*``
    cells stay empty)."""
    r = score_cache_calls(run_dir, cache, split, device, batch_calls, storage_options, threads)
    return r.table(), len(r.scored.calls)


def _check_cache(run_dir, cache: str, meta: dict, store) -> None:
    """The cache has the run's label scheme and encoder settings, or one line says what differs."""
    from pipeline.cache_settings import encoder_identity
    from pipeline.fingerprint import diff_settings

    from .data import TrainError

    run_cache = meta.get("cache", {})
    if (store.label_scheme, store.label_scheme_def) != (
        run_cache.get("label_scheme"),
        run_cache.get("label_scheme_def"),
    ):
        same_name = store.label_scheme == run_cache.get("label_scheme")
        raise TrainError(
            f"{cache}: label scheme {store.label_scheme!r}"
            + (" with another definition (its classes or tasks changed)" if same_name else "")
            + f", but {run_dir} was trained on "
            f"{run_cache.get('label_scheme')!r}; score a cache extracted with the run's label scheme"
        )
    mine, theirs = encoder_identity(store.settings), encoder_identity(run_cache.get("settings", {}))
    # named as msmtfn-extract names them ("text.max_tokens: 48 → 64"), the run's value first
    named = diff_settings(theirs, mine)
    if named:
        more = "; …" if len(named) > 5 else ""
        raise TrainError(
            f"{cache}: extracted with other settings than {run_dir}'s cache (run's → this cache's: "
            f"{'; '.join(named[:5])}{more}); extract the calls with the run's encoder settings "
            "(msmtfn-extract info shows them)"
        )


def score_cache_calls(
    run_dir,
    cache: str,
    split: str = "test",
    device: str = "cpu",
    batch_calls: int = 0,
    storage_options: dict | None = None,
    threads: int = 0,
    explain=None,
) -> CacheScores:
    """:func:`score_cache`'s scores before they become a table; ``explain`` (a
    train.explain.ExplainOptions): each call's explanation too."""
    from .checkpoint import load_run, read_run_config
    from .data import Batches, CallData, FeatureSource, TrainError, open_cache

    if split not in SCORE_SPLITS:
        raise TrainError(f"--split {split}: valid are {', '.join(SCORE_SPLITS)}")
    meta = read_run_config(run_dir)
    dev = torch.device(device)
    model, cfg = load_run(run_dir, dev)
    use_threads(threads or cfg.threads, device)
    store = open_cache(cache, storage_options)
    _check_cache(run_dir, cache, meta, store)
    data = CallData(store, scoring=True)
    calls = data.indices(split)
    if not calls:
        raise TrainError(f"{cache}: no calls in split {split!r} (--split all scores every call)")
    source = FeatureSource(data, dev, cfg.max_cache_gb, modalities=model.modalities, calls=calls)
    batches = Batches(
        data,
        source,
        calls,
        batch_calls or cfg.batch_calls,
        False,
        None,
        full_text=model.needs_every_text_row,
    )
    tasks = output_tasks(data.scheme, head_widths(model))
    explainer = None
    if explain is not None:
        from .explain import Explainer

        explainer = Explainer(data.scheme, tasks, meta.get("priors", {}), explain)
    amp = cfg.amp and dev.type == "cuda"
    scored = run_model(model, batches, data, {}, dev, amp, explainer=explainer)
    return CacheScores(scored, data, tasks, meta)
