"""Label schemes: the one place where task label maps are defined.

MarketCalls segments carry a five-class purchase-intent label A–E. The derived tasks are fixed maps
(README, "Label schemes"): 4-class A|B|C|D+E, 3-class A|B+C|D+E, 2-class A+B+C|D+E. Training, metrics and prediction all
read these maps from here, so the 2-class metric can never use a different grouping than the 2-class head
(a defect of the paper's public code).

A scheme also says what a label belongs to (``level``): the whole call (MarketCalls: every segment of a call
carries the call's label) or each segment (CMU-MOSI/MOSEI and MELD: a call is a video or a dialogue and every
utterance has its own label; the Bi-GRU over the call's segments gives each one its context). Labels are strings
in the store's segment table:

- ``sentiment`` (CMU-MOSI, CMU-MOSEI): the sentiment score in [-3, 3] as a decimal string ("-1.4", "2.0");
  tasks ``score`` (regression), ``2`` (negative < 0 vs non-negative), ``5`` and ``7`` (the score clipped to
  [-2, 2] / [-3, 3] and rounded, as in the field's code);
- ``meld``: ``"<emotion>/<sentiment>"`` ("joy/positive"); tasks ``emotion`` (7) and ``sentiment`` (3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Task:
    """One task derived from a base label: a classification (``classes``) or a regression (``kind``)."""

    name: str                      # "5", "4", "3", "2" for MarketCalls
    classes: tuple[str, ...]       # display names of the task's classes, in index order; () for a regression
    base_to_class: dict[str, int] = field(default_factory=dict)   # base label -> class index, where finite
    kind: str = "class"            # "class" | "regression"
    target: Callable[[str], float] | None = None   # label -> class index or value, where no finite map exists
    value_range: tuple[float, float] | None = None  # a regression's valid values (predictions are clipped to it)

    @property
    def num_classes(self) -> int:
        """Width of the task's head: the number of classes, 1 for a regression."""
        return 1 if self.kind == "regression" else len(self.classes)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    def encode_one(self, label: str):
        return self.target(label) if self.target is not None else self.base_to_class[label]


@dataclass(frozen=True)
class LabelScheme:
    """A base label set and the tasks derived from it."""

    name: str
    base_labels: tuple[str, ...]   # every valid label, where finite (else ``valid`` decides)
    tasks: tuple[Task, ...] = field(default_factory=tuple)
    level: str = "call"            # "call": one label per call | "segment": one label per segment (utterance)
    selection: str = "macro_f1"    # validation metric that picks the checkpoint (of the main task; "mae" for a
    valid: Callable[[str], bool] | None = None   # regression, lower is better); label check without base_labels
    describe: str = ""             # what a label looks like, for error messages

    def task(self, name: str | int) -> Task:
        for t in self.tasks:
            if t.name == str(name):
                return t
        raise KeyError(f"unknown task {name!r} for label scheme {self.name!r}; "
                       f"valid: {', '.join(t.name for t in self.tasks)}")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def is_valid(self, label: str) -> bool:
        return self.valid(label) if self.valid is not None else label in self.base_labels

    def accepted(self) -> str:
        return self.describe or ", ".join(self.base_labels)

    def encode(self, labels, task: str | int) -> np.ndarray:
        """Map base labels to ``task``'s targets: class indices (int64) or values (float32, a regression)."""
        t = self.task(task)
        out = []
        for lab in labels:
            try:
                out.append(t.encode_one(lab))
            except (KeyError, ValueError):
                raise ValueError(f"label {lab!r} is not {self.accepted()}") from None
        return np.array(out, dtype=np.float32 if t.is_regression else np.int64)

    def encode_all(self, labels) -> dict[str, np.ndarray]:
        return {t.name: self.encode(labels, t.name) for t in self.tasks}

    def class_map(self, source: str | int, target: str | int) -> np.ndarray | None:
        """Index map from ``source`` task classes to ``target`` classes when every source class falls inside
        one target class (5 → 4, 3, 2; 4 → 3, 2; 3 → 2), else None. Lets a single-head model (no MTL) report
        the coarser tasks with the same maps the heads use."""
        s, t = self.task(source), self.task(target)
        if not (s.base_to_class and t.base_to_class):
            return None
        out = []
        for c in range(s.num_classes):
            members = {t.base_to_class[b] for b, k in s.base_to_class.items() if k == c}
            if len(members) != 1:
                return None
            out.append(members.pop())
        return np.array(out, dtype=np.int64)


def _task_from_groups(name: str, groups: list[str]) -> Task:
    """``groups`` like ["A", "B", "C", "DE"]: each string is one class made of those base labels."""
    mapping = {lab: i for i, grp in enumerate(groups) for lab in grp}
    return Task(name=name, classes=tuple("+".join(g) for g in groups), base_to_class=mapping)


MARKETCALLS = LabelScheme(
    name="marketcalls",
    base_labels=("A", "B", "C", "D", "E"),
    tasks=(
        _task_from_groups("5", ["A", "B", "C", "D", "E"]),
        _task_from_groups("4", ["A", "B", "C", "DE"]),
        _task_from_groups("3", ["A", "BC", "DE"]),
        _task_from_groups("2", ["ABC", "DE"]),
    ),
)



def sentiment_score(label: str) -> float:
    """A CMU-MOSI/MOSEI label: the annotators' mean sentiment, a number in [-3, 3]."""
    x = float(label)
    if not (math.isfinite(x) and -3.0 <= x <= 3.0):
        raise ValueError(label)
    return x


def _is_score(label: str) -> bool:
    try:
        sentiment_score(label)
        return True
    except ValueError:
        return False


def _rounded(lo: int, hi: int) -> Callable[[str], int]:
    # np.round as in the field's evaluation code (MMSA, MMML): clip, round half to even, shift to 0-based
    return lambda label: int(np.round(np.clip(sentiment_score(label), lo, hi))) - lo


SENTIMENT = LabelScheme(
    name="sentiment",
    base_labels=(),
    tasks=(
        Task("score", (), kind="regression", target=sentiment_score, value_range=(-3.0, 3.0)),
        Task("2", ("negative", "non-negative"), target=lambda label: int(sentiment_score(label) >= 0)),
        Task("5", tuple(str(v) for v in range(-2, 3)), target=_rounded(-2, 2)),
        Task("7", tuple(str(v) for v in range(-3, 4)), target=_rounded(-3, 3)),
    ),
    level="segment", selection="mae", valid=_is_score, describe="a sentiment score in [-3, 3]",
)

MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
MELD_SENTIMENTS = ("neutral", "positive", "negative")
MELD = LabelScheme(
    name="meld",
    base_labels=tuple(f"{e}/{s}" for e in MELD_EMOTIONS for s in MELD_SENTIMENTS),
    tasks=(
        Task("emotion", MELD_EMOTIONS, {f"{e}/{s}": i for i, e in enumerate(MELD_EMOTIONS) for s in MELD_SENTIMENTS}),
        Task("sentiment", MELD_SENTIMENTS,
             {f"{e}/{s}": i for e in MELD_EMOTIONS for i, s in enumerate(MELD_SENTIMENTS)}),
    ),
    level="segment", selection="weighted_f1", describe="<emotion>/<sentiment>, e.g. joy/positive "
    f"(emotions: {', '.join(MELD_EMOTIONS)}; sentiments: {', '.join(MELD_SENTIMENTS)})",
)

SCHEMES: dict[str, LabelScheme] = {x.name: x for x in (MARKETCALLS, SENTIMENT, MELD)}


def label_counts(scheme_name: str, call_ids, labels) -> dict[str, dict[str, int]]:
    """What a dataset's labels look like, for summaries: calls per label where a label belongs to a call;
    segments per class of each classification task where it belongs to a segment (a MOSI score is not a
    class)."""
    try:
        scheme = get_scheme(scheme_name)
    except KeyError:
        scheme = None
    if scheme is None or scheme.level == "call":
        seen: set[str] = set()
        per: dict[str, int] = {}
        for cid, lab in zip(call_ids, labels):
            if cid not in seen:
                seen.add(cid)
                per[lab or "(none)"] = per.get(lab or "(none)", 0) + 1
        return {"calls per label": dict(sorted(per.items()))}
    out: dict[str, dict[str, int]] = {}
    valid = [lab for lab in labels if scheme.is_valid(lab)]
    for task in scheme.tasks:
        if task.is_regression:
            continue
        per = {c: 0 for c in task.classes}
        for k in scheme.encode(valid, task.name):
            per[task.classes[k]] += 1
        if len(valid) < len(labels):
            per["(none)"] = len(labels) - len(valid)
        out[f"segments per {task.name}" + ("-class" if task.name.isdigit() else "")] = per
    return out


def get_scheme(name: str) -> LabelScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown label scheme {name!r}; valid: {', '.join(SCHEMES)}") from None
