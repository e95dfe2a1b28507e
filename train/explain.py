"""Why a call scored so: each segment's contribution, its split into audio and text, and the text
rows and audio frames inside a segment that carried it (definitions and their reasons:
docs/explain.md).

For each scored item (a call; where labels belong to segments, a scored segment), each reported
task and the class the run predicts for it (its probability p; a regression: its value):

* ``contribution`` of segment s = p − p(the call with s left out: the Bi-GRU reads the other
  segments in their order). Only the Bi-GRU and the heads re-run, on the segment vectors already
  computed. A one-segment call: p − the class's training frequency (the run's ``priors``).
* ``audio_contribution`` / ``text_contribution`` = p − p(s's audio / text replaced by the baseline:
  the training mean frame, which the model's input standardisation maps to zero, at s's own valid
  length; the other modality and the other segments as they are).
* segment-level labels, for scored segment u: ``contribution`` = p_u − prior; ``context`` = p_u −
  p_u(u alone, no neighbours); the neighbour whose leaving out moves p_u most.
* rows: integrated gradients (captum, Gauss-Legendre) of p over s's text rows (audio frames) from
  the same baseline, the other modality and segments held: by completeness the rows' attributions
  add up to the text (audio) contribution, up to captum's convergence delta.

Perturbations run batched (every left-out and baselined version of every call in one Bi-GRU pass);
the gradients run with cuDNN off, whose GRU has no backward pass in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .metrics import reported_predictions
from .predictions import head_outputs

NAN = float("nan")


ROW_METHODS = ("ablation", "ig")
AUDIO_WINDOWS = 20  # a segment's valid audio frames are attributed in this many equal stretches
# ablation: a text of more tokens is attributed in this many equal stretches of tokens (each a few
# words), which bounds the cost at AUDIO_WINDOWS + TEXT_STRETCHES fusion runs per segment
TEXT_STRETCHES = 32


@dataclass(frozen=True)
class ExplainOptions:
    # per call, how many segments (largest |contribution| of the main task first) get row
    # attributions; 0: none, -1: every segment
    row_segments: int = 0
    # "ablation": p − p(one text row / one audio stretch replaced by the baseline), captum's
    # FeatureAblation; "ig": integrated gradients (additive, but unstable where p saturates)
    method: str = "ablation"
    steps: int = 16  # integrated-gradient steps (doubled while the completeness gap is large)


@dataclass
class ExplainedItem:
    """One (call, segment, task) row of explanations.csv."""

    segment: int  # 0-based position in the call
    task: str
    label: str | None  # the predicted class (None: a regression)
    probability: float  # p of that class (a regression: its value)
    contribution: float
    audio_contribution: float  # NaN where the model reads no audio
    text_contribution: float  # NaN where the model reads no text
    context_contribution: float = NAN  # segment-level labels: p_u − p_u(alone)
    top_neighbour: int = -1  # segment-level labels: the neighbour that moves p_u most
    neighbour_contribution: float = NAN  # p_u − p_u(that neighbour left out)


@dataclass
class RowAttribution:
    """What one segment's text rows and stretches of audio did to one task's predicted class."""

    task: str
    method: str  # "ablation" | "ig"
    # (stretches, 3): first row, end row, effect; rows are tokens (row 0: the tokenizer's first,
    # special one), each alone up to TEXT_STRETCHES of them (ig: always)
    text: np.ndarray | None
    # (AUDIO_WINDOWS, 3): equal stretches of the valid audio frames: first row, end row, effect
    audio: np.ndarray | None
    text_delta: float = NAN  # ig: captum's convergence delta (the completeness gap)
    audio_delta: float = NAN


@dataclass
class CallExplanation:
    call: int  # the batch's call (its entry of ``Batch.calls``)
    items: list[ExplainedItem] = field(default_factory=list)
    rows: dict[int, RowAttribution] = field(default_factory=dict)  # segment -> attribution


# ----------------------------------------------------------------------------- scores of a task
def explained_tasks(scheme, tasks: list[dict]) -> list[str]:
    """The tasks with an explainable score: a class with a probability, or a regression's value
    (classes read off a regression's value are explained through that value)."""
    out = []
    for t in tasks:
        base = scheme.task(t["name"].split(":")[0])
        derived_from_value = (
            t["kind"] != "regression"
            and ":" not in t["name"]
            and any(x.is_regression for x in scheme.tasks)
        )
        if base.is_regression or not derived_from_value:
            out.append(t["name"])
    return out


def _scores(scheme, names, logits, chosen=None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per task: (score per item, class per item or None): the probability of ``chosen`` (default:
    the predicted class), or a regression's value."""
    rep = reported_predictions(scheme, head_outputs(scheme, logits))
    out = {}
    for name in names:
        r = rep.get(name)
        if r is None:
            continue
        if r.probs is None:  # a regression
            out[name] = (np.asarray(r.pred, dtype=np.float64), None)
            continue
        cls = r.pred if chosen is None else chosen[name]
        out[name] = (r.probs[np.arange(len(cls)), cls], cls)
    return out


def _torch_score(scheme, name: str, logits: dict, cls: int) -> torch.Tensor:
    """The differentiable score of one task's class (as :func:`_scores` computes it)."""
    base = name.split(":")[0]
    task = scheme.task(base)
    if task.is_regression:
        return logits[base].float().reshape(-1)
    if base in logits:
        return torch.softmax(logits[base].float(), -1)[:, cls]
    for src, v in logits.items():  # a single-head run: the classes mapped onto ``cls``, summed
        m = scheme.class_map(src, base)
        if m is not None:
            return torch.softmax(v.float(), -1)[:, torch.as_tensor(m == cls)].sum(-1)
    raise KeyError(name)


def prior_of(priors: dict, scheme, name: str, cls) -> float:
    """The training frequency of ``cls`` (a regression: the training mean); runs that recorded no
    priors: 1/k (a regression: 0)."""
    base = name.split(":")[0]
    p = priors.get(base)
    task = scheme.task(base)
    if task.is_regression:
        return float(p) if p is not None else 0.0
    return float(p[int(cls)]) if p is not None else 1.0 / task.num_classes


# ------------------------------------------------------------------------------ the model parts
def _heads_on(model, seg: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The heads over segment vectors (S, d) of calls with ``counts`` segments each."""
    if model.dims.level == "segment":
        x = model.context_vectors(seg, counts)
    else:
        x = model.call_vectors(seg, counts)
    return {n: h(x) for n, h in model.heads.items()}


def _baseline(model, x: torch.Tensor | None, modality: str) -> torch.Tensor | None:
    """``x``'s shape filled with the training mean frame (zero after standardisation)."""
    if x is None:
        return None
    return getattr(model, f"{modality}_mean").float().expand(*x.shape[:-1], -1)


def _segment_pool(model, batch) -> tuple[torch.Tensor, dict[str, int]]:
    """The segment vectors, then those with the audio / the text replaced by the baseline, stacked:
    (k·S, d) and where each version starts."""
    a, al, t, tl = batch.audio, batch.audio_len, batch.text, batch.text_len
    versions = [model.segment_vectors(a, al, t, tl)]
    starts = {"real": 0}
    n = len(al)
    for modality in model.modalities:  # a one-modality model: its own modality's split only
        starts[modality] = n * len(versions)
        if modality == "audio":
            versions.append(model.segment_vectors(_baseline(model, a, "audio"), al, t, tl))
        else:
            versions.append(model.segment_vectors(a, al, _baseline(model, t, "text"), tl))
    return torch.cat(versions), starts


# ------------------------------------------------------------------------- virtual calls
@dataclass
class _Virtual:
    """Calls assembled from pooled segment vectors: per call its pool rows and what it is."""

    rows: list[list[int]] = field(default_factory=list)
    what: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, call, segment)
    orig: list[list[int]] = field(default_factory=list)  # each row's segment in the real call

    def add(self, kind: str, call: int, seg: int, rows: list[int], orig: list[int]) -> None:
        self.rows.append(rows)
        self.what.append((kind, call, seg))
        self.orig.append(orig)


def _virtual_calls(counts: list[int], starts: dict[str, int], segment_level: bool) -> _Virtual:
    v = _Virtual()
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    for c, n in enumerate(counts):
        real = list(range(first[c], first[c] + n))
        for s in range(n):
            others = [i for i in range(n) if i != s]
            if n > 1:
                v.add("loo", c, s, [real[i] for i in others], others)
            if segment_level:
                v.add("alone", c, s, [real[s]], [s])
            for modality in ("audio", "text"):
                if modality in starts:
                    rows = list(real)
                    rows[s] = starts[modality] + first[c] + s
                    v.add(modality, c, s, rows, list(range(n)))
    return v


def _run_virtual(model, pool, v: _Virtual, device) -> dict[str, torch.Tensor]:
    idx = torch.as_tensor([r for rows in v.rows for r in rows], device=device)
    counts = torch.as_tensor([len(rows) for rows in v.rows], device=device)
    return _heads_on(model, pool[idx], counts)


# ------------------------------------------------------------------------------------ explain
@torch.no_grad()
def perturbation_effects(model, batch, scheme, names: list[str], priors: dict, amp: bool = False):
    """(logits of the batch, per call a :class:`CallExplanation` with its items, the segment
    vectors): every contribution but the rows'."""
    model.eval()
    device = batch.seg_counts.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        pool, starts = _segment_pool(model, batch)
        n = len(batch.audio_len)
        logits = _heads_on(model, pool[:n], batch.seg_counts)
        counts = batch.seg_counts.tolist()
        segment_level = model.dims.level == "segment"
        v = _virtual_calls(counts, starts, segment_level)
        vout = _run_virtual(model, pool, v, device) if v.rows else {}
    full = _scores(scheme, names, logits)
    if segment_level:
        calls = _segment_items(scheme, names, priors, full, vout, v, counts)
    else:
        calls = _call_items(scheme, names, priors, full, vout, v, counts)
    return logits, calls, pool[:n]


def _call_items(scheme, names, priors, full, vout, v: _Virtual, counts) -> list[CallExplanation]:
    owner = np.asarray([c for _, c, _ in v.what], dtype=np.int64)
    chosen = {k: cls[owner] for k, (_, cls) in full.items() if cls is not None}
    virt = _scores(scheme, names, vout, chosen) if v.rows else {}
    effect = {k: {} for k in full}  # task -> {(kind, call, seg): p − p(perturbed)}
    for name, (p, _) in full.items():
        for j, key in enumerate(v.what):
            effect[name][key] = float(p[key[1]] - virt[name][0][j])
    out = []
    for c, n in enumerate(counts):
        e = CallExplanation(call=c)
        for name, (p, cls) in full.items():
            label = None if cls is None else scheme.task(name.split(":")[0]).classes[int(cls[c])]
            for s in range(n):
                eff = effect[name]
                whole = (
                    eff[("loo", c, s)]
                    if n > 1
                    else float(p[c])
                    - prior_of(priors, scheme, name, None if cls is None else cls[c])
                )
                e.items.append(
                    ExplainedItem(
                        s,
                        name,
                        label,
                        float(p[c]),
                        whole,
                        eff.get(("audio", c, s), NAN),
                        eff.get(("text", c, s), NAN),
                    )
                )
        out.append(e)
    return out


def _segment_items(scheme, names, priors, full, vout, v: _Virtual, counts):
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    # each virtual row's real segment (a batch row), so each row explains that segment's class
    owner = np.asarray([first[c] + o for (_, c, _), orig in zip(v.what, v.orig) for o in orig])
    chosen = {k: cls[owner] for k, (_, cls) in full.items() if cls is not None}
    virt = _scores(scheme, names, vout, chosen) if v.rows else {}
    at = np.concatenate([[0], np.cumsum([len(r) for r in v.rows])]).astype(int)
    out = [CallExplanation(call=c) for c in range(len(counts))]
    for name, (p, cls) in full.items():
        moved = {}  # (kind, call, seg) -> {segment u: p_u − p_u(perturbed)}
        for j, key in enumerate(v.what):
            rows = range(at[j], at[j + 1])
            moved[key] = {
                o: float(p[first[key[1]] + o] - virt[name][0][r]) for o, r in zip(v.orig[j], rows)
            }
        for c, n in enumerate(counts):
            for u in range(n):
                i = first[c] + u
                k = None if cls is None else int(cls[i])
                label = None if k is None else scheme.task(name.split(":")[0]).classes[k]
                by_neighbour = {s: moved[("loo", c, s)][u] for s in range(n) if s != u}
                top = max(by_neighbour, key=lambda s: abs(by_neighbour[s]), default=-1)
                out[c].items.append(
                    ExplainedItem(
                        u,
                        name,
                        label,
                        float(p[i]),
                        float(p[i]) - prior_of(priors, scheme, name, k),
                        moved.get(("audio", c, u), {}).get(u, NAN),
                        moved.get(("text", c, u), {}).get(u, NAN),
                        context_contribution=moved[("alone", c, u)][u],
                        top_neighbour=top,
                        neighbour_contribution=by_neighbour.get(top, NAN),
                    )
                )
    return out


def main_task(task: str, names: list[str]) -> str:
    """The task whose rows are attributed and the report leads with: the run's own (the one it
    selected on, ``model.cfg.task``), else the first explained one."""
    return task if task in names else names[0]


def explain_batch(model, batch, scheme, tasks, priors, opts: ExplainOptions, amp: bool = False):
    """(logits, per call a :class:`CallExplanation`): contributions of every segment, task and
    modality, and row attributions for ``opts.row_segments`` segments per call. Where the batch
    marks its scored segments (``batch.mask``), only those are explained."""
    names = explained_tasks(scheme, tasks)
    logits, calls, seg = perturbation_effects(model, batch, scheme, names, priors, amp)
    if batch.mask is not None:
        keep = batch.mask.cpu().numpy()
        first = np.concatenate([[0], np.cumsum(batch.seg_counts.tolist())[:-1]]).astype(int)
        for c, e in enumerate(calls):
            e.items = [it for it in e.items if keep[first[c] + it.segment]]
    if opts.row_segments and names:
        task = main_task(model.cfg.task, names)
        attribute_rows(model, batch, scheme, task, calls, opts, seg.float())
    return logits, calls


@dataclass
class Explainer:
    """What explaining a run needs besides the model: its scheme, reported tasks, priors."""

    scheme: object
    tasks: list[dict]
    priors: dict
    opts: ExplainOptions = ExplainOptions()

    @property
    def names(self) -> list[str]:
        return explained_tasks(self.scheme, self.tasks)

    def __call__(self, model, batch, amp: bool = False):
        return explain_batch(model, batch, self.scheme, self.tasks, self.priors, self.opts, amp)


# ------------------------------------------------------------------- integrated gradients
def attribute_rows(model, batch, scheme, task: str, calls, opts: ExplainOptions, seg) -> None:
    """Fill each call's ``rows`` for the segments with the largest |contribution| of ``task``
    (``seg``: the batch's segment vectors)."""
    counts = batch.seg_counts.tolist()
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    for c, e in enumerate(calls):
        mine = [it for it in e.items if it.task == task]
        ranked = sorted(
            mine, key=lambda it: -abs(it.contribution) if math.isfinite(it.contribution) else 0
        )
        take = ranked if opts.row_segments < 0 else ranked[: opts.row_segments]
        for it in take:
            cls = None
            if it.label is not None:
                cls = scheme.task(task.split(":")[0]).classes.index(it.label)
            target = _SegmentTarget(
                model, batch, scheme, task, cls, seg, first[c], counts[c], it.segment
            )
            e.rows[it.segment] = target.attribute(opts)


class _SegmentTarget:
    """p of one class as a function of one segment's text rows or audio frames, everything else
    held."""

    def __init__(self, model, batch, scheme, task, cls, seg, first, n, s):
        self.model, self.scheme, self.task, self.cls = model, scheme, task, cls
        self.rows, self.n, self.s = seg[first : first + n].detach(), n, s
        i = first + s
        self.a_len, self.t_len = batch.audio_len[i : i + 1], batch.text_len[i : i + 1]
        self.audio = self._own(batch.audio, i, int(self.a_len))
        full_text = model.needs_every_text_row
        self.text = self._own(batch.text, i, None if full_text else int(self.t_len))

    @staticmethod
    def _own(x, i, length):
        if x is None:
            return None
        x = x[i : i + 1] if length is None else x[i : i + 1, : max(1, length)]
        return (
            x.float().clone()
        )  # a tensor autograd may save (predict builds its in inference mode)

    def score(self, text, audio) -> torch.Tensor:
        m = self.model
        k = (text if text is not None else audio).shape[0]
        v = m.segment_vectors(audio, self.a_len.expand(k), text, self.t_len.expand(k))
        calls = self.rows.unsqueeze(0).repeat(k, 1, 1)
        calls[:, self.s] = v
        counts = torch.full((k,), self.n, device=v.device)
        out = _heads_on(m, calls.reshape(k * self.n, -1), counts)
        if m.dims.level == "segment":  # the explained segment's own output
            out = {h: x[self.s :: self.n] for h, x in out.items()}
        return _torch_score(self.scheme, self.task, out, self.cls)

    def attribute(self, opts: ExplainOptions) -> RowAttribution:
        m = self.model
        got = {"text": (None, NAN), "audio": (None, NAN)}
        self._method = opts.method
        for modality in m.modalities:
            if opts.method == "ig":
                with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
                    rows, delta = self._integrate(modality, opts.steps)
            else:
                rows, delta = self._ablate(modality), NAN
            got[modality] = (self._windows(rows, modality), delta)
        return RowAttribution(
            self.task, opts.method, got["text"][0], got["audio"][0], got["text"][1], got["audio"][1]
        )

    def _forward(self, modality: str):
        if modality == "text":
            return self.text, self.audio, lambda t, a: self.score(t, a)
        return self.audio, self.text, lambda a, t: self.score(t, a)

    def _groups(self, modality: str, n: int) -> tuple[np.ndarray, int]:
        """(per row its group, the number of groups): the valid rows in at most AUDIO_WINDOWS /
        TEXT_STRETCHES equal stretches (ig: each text row alone); padding rows one more group."""
        valid = max(1, int(self.t_len if modality == "text" else self.a_len))
        most = AUDIO_WINDOWS if modality == "audio" else TEXT_STRETCHES
        k = min(valid, most if modality == "audio" or self._method == "ablation" else valid)
        rows = np.arange(n)
        return np.where(rows < valid, rows * k // valid, k), k

    @torch.no_grad()
    def _ablate(self, modality: str) -> np.ndarray:
        from captum.attr import FeatureAblation

        x, other, f = self._forward(modality)
        groups, _ = self._groups(modality, x.shape[1])
        mask = torch.as_tensor(groups, device=x.device)[None, :, None]
        attr = FeatureAblation(f).attribute(
            x,
            baselines=_baseline(self.model, x, modality).contiguous(),
            additional_forward_args=(other,),
            feature_mask=mask,
            perturbations_per_eval=32,
        )
        # every element of a group carries the group's effect: one value per row
        return attr[0, :, 0].detach().cpu().numpy().astype(np.float64)

    def _windows(self, rows: np.ndarray, modality: str) -> np.ndarray:
        """(stretches, 3): each stretch's first row, end row and effect (ablation: the stretch's
        own; ig: the sum of its rows)."""
        groups, count = self._groups(modality, len(rows))
        out = []
        for g in range(count):
            at = np.flatnonzero(groups == g)
            if not len(at):
                continue
            value = rows[at[0]] if self._method == "ablation" else rows[at].sum()
            out.append((at[0], at[-1] + 1, value))
        return np.asarray(out, dtype=np.float64).reshape(-1, 3)

    def _integrate(self, modality: str, steps: int) -> tuple[np.ndarray, float]:
        """Integrated gradients of one modality's rows, the steps doubled (up to MAX_STEP_DOUBLINGS
        times) while the completeness gap exceeds GAP_TOLERANCE of the change it explains: a
        confident model's probability can jump along the path, where few steps miss it."""
        from captum.attr import IntegratedGradients

        x, other, f = self._forward(modality)
        ig = IntegratedGradients(f)
        base = _baseline(self.model, x, modality).contiguous()
        for k in range(MAX_STEP_DOUBLINGS + 1):
            n = steps * 2**k
            attr, delta = ig.attribute(
                x,
                baselines=base,
                additional_forward_args=(other,),
                n_steps=n,
                method="gausslegendre",
                internal_batch_size=min(n, 32),
                return_convergence_delta=True,
            )
            rows = attr[0].sum(-1).detach().cpu().numpy().astype(np.float64)
            change = abs(float(rows.sum()) - float(delta))  # |f(x) − f(baseline)|
            if abs(float(delta)) <= GAP_TOLERANCE * max(change, 1e-3):
                break
        return rows, float(delta)


GAP_TOLERANCE = 0.05
MAX_STEP_DOUBLINGS = 4
