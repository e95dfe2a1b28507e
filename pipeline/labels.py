"""Label schemes: the one place where task label maps are defined.

MarketCalls segments carry a five-class purchase-intent label A–E. The derived tasks are fixed maps
(README, "Label schemes"): 4-class A|B|C|D+E, 3-class A|B+C|D+E, 2-class A+B+C|D+E. Training,
metrics and prediction all read these maps from here, so the 2-class metric can never use a
different grouping than the 2-class head (a defect of the paper's public code).

A scheme also says what a label belongs to (``level``): the whole call (MarketCalls: every segment
of a call carries the call's label) or each segment (CMU-MOSI/MOSEI and MELD: a call is a video or a
dialogue and every utterance has its own label; the Bi-GRU over the call's segments gives each one
its context). Labels are strings in the store's segment table:

- ``sentiment`` (CMU-MOSI, CMU-MOSEI): the sentiment score in [-3, 3] as a decimal string ("-1.4",
  "2.0"); tasks ``score`` (regression), ``2`` (negative < 0 vs non-negative), ``5`` and ``7`` (the
  score clipped to [-2, 2] / [-3, 3] and rounded, as in the field's code);
- ``meld``: ``"<emotion>/<sentiment>"`` ("joy/positive"); tasks ``emotion`` (7) and ``sentiment``
  (3).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Task:
    """One task derived from a base label: a classification (``classes``) or a regression
    (``kind``)."""

    name: str  # "5", "4", "3", "2" for MarketCalls
    # display names of the task's classes, in index order; () for a regression
    classes: tuple[str, ...]
    # base label -> class index, where finite
    base_to_class: dict[str, int] = field(default_factory=dict)
    kind: str = "class"  # "class" | "regression"
    # label -> class index or value, where no finite map exists
    target: Callable[[str], float] | None = None
    # a regression's valid values (predictions are clipped to it)
    value_range: tuple[float, float] | None = None

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
    base_labels: tuple[str, ...]  # every valid label, where finite (else ``valid`` decides)
    tasks: tuple[Task, ...] = field(default_factory=tuple)
    level: str = "call"  # "call": one label per call | "segment": one label per segment (utterance)
    # validation metric that picks the checkpoint (of the main task; "mae" for a
    selection: str = "macro_f1"
    # regression, lower is better); label check without base_labels
    valid: Callable[[str], bool] | None = None
    describe: str = ""  # what a label looks like, for error messages
    # base label -> what it means (README, info)
    class_descriptions: dict[str, str] = field(default_factory=dict)
    # a custom scheme's checked TOML content (stored in the cache); None = built-in
    definition: dict | None = None

    def task(self, name: str | int) -> Task:
        for t in self.tasks:
            if t.name == str(name):
                return t
        raise KeyError(
            f"unknown task {name!r} for label scheme {self.name!r}; "
            f"valid: {', '.join(t.name for t in self.tasks)}"
        )

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def is_valid(self, label: str) -> bool:
        return self.valid(label) if self.valid is not None else label in self.base_labels

    def accepted(self) -> str:
        return self.describe or ", ".join(self.base_labels)

    def encode(self, labels, task: str | int) -> np.ndarray:
        """Map base labels to ``task``'s targets: class indices (int64) or values (float32, a
        regression)."""
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
        """Index map from ``source`` task classes to ``target`` classes when every source class
        falls inside one target class (5 → 4, 3, 2; 4 → 3, 2; 3 → 2), else None. Lets a single-head
        model (no MTL) report the coarser tasks with the same maps the heads use."""
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
    # the paper (its summary in shared/paper/) names A–E the five purchase-intent categories of its
    # 5-class task
    # and defines none of them one by one: nothing more is claimed here
    class_descriptions={
        lab: f"purchase-intent category {lab} of the five (A–E) the MarketCalls paper defines"
        for lab in "ABCDE"
    },
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
    # np.round as in the field's evaluation code (MMSA, MMML): clip, round half to even, shift to
    # 0-based
    return lambda label: int(np.round(np.clip(sentiment_score(label), lo, hi))) - lo


SENTIMENT = LabelScheme(
    name="sentiment",
    base_labels=(),
    tasks=(
        Task("score", (), kind="regression", target=sentiment_score, value_range=(-3.0, 3.0)),
        Task(
            "2", ("negative", "non-negative"), target=lambda label: int(sentiment_score(label) >= 0)
        ),
        Task("5", tuple(str(v) for v in range(-2, 3)), target=_rounded(-2, 2)),
        Task("7", tuple(str(v) for v in range(-3, 4)), target=_rounded(-3, 3)),
    ),
    level="segment",
    selection="mae",
    valid=_is_score,
    describe="a sentiment score in [-3, 3]",
)

MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
MELD_SENTIMENTS = ("neutral", "positive", "negative")
MELD = LabelScheme(
    name="meld",
    base_labels=tuple(f"{e}/{s}" for e in MELD_EMOTIONS for s in MELD_SENTIMENTS),
    tasks=(
        Task(
            "emotion",
            MELD_EMOTIONS,
            {f"{e}/{s}": i for i, e in enumerate(MELD_EMOTIONS) for s in MELD_SENTIMENTS},
        ),
        Task(
            "sentiment",
            MELD_SENTIMENTS,
            {f"{e}/{s}": i for e in MELD_EMOTIONS for i, s in enumerate(MELD_SENTIMENTS)},
        ),
    ),
    level="segment",
    selection="weighted_f1",
    describe="<emotion>/<sentiment>, e.g. joy/positive "
    f"(emotions: {', '.join(MELD_EMOTIONS)}; sentiments: {', '.join(MELD_SENTIMENTS)})",
)

SCHEMES: dict[str, LabelScheme] = {x.name: x for x in (MARKETCALLS, SENTIMENT, MELD)}


def label_counts(scheme_name: str | LabelScheme, call_ids, labels) -> dict[str, dict[str, int]]:
    """What a dataset's labels look like, for summaries: calls per label where a label belongs to a
    call; segments per class of each classification task where it belongs to a segment (a MOSI score
    is not a class). ``scheme_name``: a built-in scheme's name or a scheme (a custom one)."""
    if isinstance(scheme_name, LabelScheme):
        scheme = scheme_name
    else:
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


def get_scheme(name: str, definition: dict | None = None) -> LabelScheme:
    """A built-in scheme by name; with ``definition`` (a store's or a run's copy of a custom scheme)
    that scheme, as :func:`scheme_from_record`. KeyError (one line) when neither is valid."""
    if definition is not None:
        return scheme_from_record(name, definition)
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown label scheme {name!r}; valid: {', '.join(SCHEMES)}") from None


# ---------------------------------------------------------------------------------------------------
# custom schemes A user's scheme is a TOML file (README, "Label schemes"); its checked content (the
# *definition*) is copied into the cache store and each run's config.json, so training and predict
# never read the file again.

SELECTION_METRICS = (
    "macro_f1",
    "weighted_f1",
    "accuracy",
)  # what train/metrics.py selection_score knows
LEVELS = ("call", "segment")
SCHEME_KEYS = ("name", "classes", "tasks", "selection", "level", "descriptions")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# no "+" (it joins a group's members), "," or ":"
_CLASS = re.compile(r"^[^+,:\s](?:[^+,:]*[^+,:\s])?$")


class SchemeFileError(ValueError):
    """A custom label scheme (its file or its copy in a store) is not valid; the message names where
    and the key."""


def _fail(source: str, key: str, why: str) -> SchemeFileError:
    return SchemeFileError(f'{source}: key {key!r}: {why} (format: README, "Label schemes")')


def _str_list(source: str, key: str, value, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise _fail(source, key, f"must be a non-empty list of {what} (strings)")
    return value


def _check_tasks(source: str, tasks, classes: list[str]) -> list[dict]:
    """``tasks`` as TOML gives it ({name: [[class, ...], ...]}) or as stored ([{"name", "groups"}]),
    checked; returns the stored form (a list keeps the order: the first task is the main one)."""
    if isinstance(tasks, dict):
        items = list(tasks.items())
    elif isinstance(tasks, list) and all(
        isinstance(t, dict) and set(t) == {"name", "groups"} for t in tasks
    ):
        items = [(t["name"], t["groups"]) for t in tasks]
    else:
        raise _fail(source, "tasks", "must be a table of task name = list of groups of classes")
    if not items:
        raise _fail(
            source, "tasks", "is empty; leave it out for one task with every class on its own"
        )
    out, seen = [], set()
    for name, groups in items:
        key = f"tasks.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(source, key, "a task name is letters, digits, '_', '.' or '-'")
        if name in seen:
            raise _fail(source, key, "the task is defined twice")
        seen.add(name)
        if not isinstance(groups, list) or len(groups) < 2:
            raise _fail(
                source, key, 'must be a list of at least two groups, e.g. [["a", "b"], ["c"]]'
            )
        where: dict[str, int] = {}
        for i, grp in enumerate(groups):
            _str_list(source, key, grp, "classes in each group")
            for c in grp:
                if c not in classes:
                    raise _fail(
                        source,
                        key,
                        f"group {i + 1} names {c!r}, which is not in classes "
                        f"({', '.join(classes)})",
                    )
                if c in where:
                    raise _fail(
                        source, key, f"class {c!r} is in two groups ({where[c] + 1} and {i + 1})"
                    )
                where[c] = i
        missing = [c for c in classes if c not in where]
        if missing:
            raise _fail(
                source,
                key,
                f"class(es) {', '.join(map(repr, missing))} in no group; every class must be "
                "in exactly one group",
            )
        out.append({"name": name, "groups": [list(g) for g in groups]})
    return out


def check_definition(data, source: str = "label scheme") -> dict:
    """A custom scheme's content checked key by key (SchemeFileError names ``source`` and the key);
    returns the definition as stored: every key present, defaults filled in, tasks as a list."""
    if not isinstance(data, dict):
        raise SchemeFileError(f'{source}: a label scheme is a TOML table (README, "Label schemes")')
    unknown = [k for k in data if k not in SCHEME_KEYS]
    if unknown:
        raise _fail(source, unknown[0], f"unknown key; valid keys: {', '.join(SCHEME_KEYS)}")
    for key in ("name", "classes"):
        if key not in data:
            raise _fail(source, key, "missing (required)")
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(source, "name", "must be a name of letters, digits, '_', '.' or '-'")
    if name in SCHEMES:
        raise _fail(source, "name", f"{name!r} is a built-in label scheme; choose another name")
    classes = _str_list(source, "classes", data["classes"], "labels as written in the CSV")
    bad = next((c for c in classes if not _CLASS.match(c)), None)
    if bad is not None:
        raise _fail(
            source,
            "classes",
            f"{bad!r}: a class has no '+', ',' or ':' and no leading or trailing space",
        )
    folded: dict[str, str] = {}
    for c in classes:  # labels are matched case-insensitively, so "Keen" and "keen" are one class
        if c.lower() in folded:
            raise _fail(
                source,
                "classes",
                f"duplicate class {c!r}"
                + (
                    f" (same as {folded[c.lower()]!r} but for case)"
                    if folded[c.lower()] != c
                    else ""
                ),
            )
        folded[c.lower()] = c
    if len(classes) < 2:
        raise _fail(source, "classes", "needs at least two classes")
    selection = data.get("selection", "macro_f1")
    if selection not in SELECTION_METRICS:
        raise _fail(
            source, "selection", f"{selection!r} is not one of {', '.join(SELECTION_METRICS)}"
        )
    level = data.get("level", "call")
    if level not in LEVELS:
        raise _fail(source, "level", f"{level!r} is not one of {', '.join(LEVELS)}")
    descriptions = data.get("descriptions", {})
    if not isinstance(descriptions, dict) or not all(
        isinstance(v, str) for v in descriptions.values()
    ):
        raise _fail(source, "descriptions", 'must be a table of class = "what it means"')
    stray = next((k for k in descriptions if k not in classes), None)
    if stray is not None:
        raise _fail(source, f"descriptions.{stray}", "is not in classes")
    tasks = data.get("tasks")
    tasks = (
        [{"name": str(len(classes)), "groups": [[c] for c in classes]}]
        if tasks is None
        else _check_tasks(source, tasks, classes)
    )
    return {
        "name": name,
        "classes": list(classes),
        "tasks": tasks,
        "selection": selection,
        "level": level,
        "descriptions": dict(descriptions),
    }


def scheme_from_definition(data, source: str = "label scheme") -> LabelScheme:
    """The :class:`LabelScheme` of a custom scheme's content (a TOML file's table or a stored
    definition)."""
    d = check_definition(data, source)
    tasks = tuple(
        Task(
            name=t["name"],
            classes=tuple("+".join(g) for g in t["groups"]),
            base_to_class={c: i for i, g in enumerate(t["groups"]) for c in g},
        )
        for t in d["tasks"]
    )
    return LabelScheme(
        name=d["name"],
        base_labels=tuple(d["classes"]),
        tasks=tasks,
        level=d["level"],
        selection=d["selection"],
        class_descriptions=d["descriptions"],
        definition=d,
    )


def load_scheme_file(path: str | Path) -> LabelScheme:
    """A custom scheme from its TOML file; SchemeFileError (one line naming the file and the key)
    when bad."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise SchemeFileError(
            f"{p}: cannot read the label scheme file ({e.strerror or e})"
        ) from None
    except UnicodeDecodeError:
        raise SchemeFileError(f"{p}: not UTF-8; save the label scheme file as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SchemeFileError(f"{p}: not valid TOML ({e})") from None
    return scheme_from_definition(data, str(p))


def resolve_scheme(value: str | LabelScheme, base: Path | None = None) -> LabelScheme:
    """A dataset's ``label_scheme`` option: a built-in name, or a ``.toml`` file (as given, else
    relative to ``base``, the dataset folder)."""
    if isinstance(value, LabelScheme):
        return value
    value = str(value)
    if value in SCHEMES:
        return SCHEMES[value]
    p = Path(value).expanduser()
    if p.suffix.lower() == ".toml" or p.is_file():
        if not p.is_file() and base is not None and not p.is_absolute() and (base / p).is_file():
            p = base / p
        if not p.is_file():
            raise SchemeFileError(
                f"{value}: no such label scheme file (label_scheme / --label-scheme)"
            )
        return load_scheme_file(p)
    raise SchemeFileError(
        f"label_scheme: unknown label scheme {value!r}; valid: {', '.join(SCHEMES)}, or a "
        'FILE.toml of your own (README, "Label schemes")'
    )


def scheme_from_record(name: str, definition: dict | None = None) -> LabelScheme:
    """The scheme a store or a run's config.json names: its stored definition (a custom scheme),
    else the built-in ``name``. KeyError (one line) when the name is unknown or the stored
    definition is not valid. Predict and training read schemes only through this and
    :attr:`CacheStore.scheme`."""
    if definition is None:
        return get_scheme(name)
    try:
        scheme = scheme_from_definition(definition, f"stored label scheme {name!r}")
    except SchemeFileError as e:
        raise KeyError(str(e)) from None
    if scheme.name != name:
        raise KeyError(f"stored label scheme {name!r}: its definition is named {scheme.name!r}")
    return scheme


def scheme_record(scheme: LabelScheme) -> dict:
    """What a run's config.json keeps of a scheme besides its name: a custom scheme's definition
    (read back with :func:`scheme_from_record`); nothing for a built-in one (its config.json is as
    before)."""
    return {"label_scheme_def": scheme.definition} if scheme.definition is not None else {}
