"""Label schemes: the one place where task label maps are defined.

MarketCalls segments carry a five-class purchase-intent label A–E. The derived tasks are fixed maps
(DESIGN.md): 4-class A|B|C|D+E, 3-class A|B+C|D+E, 2-class A+B+C|D+E. Training, metrics and prediction all
read these maps from here, so the 2-class metric can never use a different grouping than the 2-class head
(a defect of the paper's public code).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Task:
    """One classification task derived from a base label set."""

    name: str                      # "5", "4", "3", "2" for MarketCalls
    classes: tuple[str, ...]       # display names of the task's classes, in index order
    base_to_class: dict[str, int]  # base label -> class index

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class LabelScheme:
    """A base label set and the tasks derived from it."""

    name: str
    base_labels: tuple[str, ...]
    tasks: tuple[Task, ...] = field(default_factory=tuple)

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
        return label in self.base_labels

    def encode(self, labels, task: str | int) -> np.ndarray:
        """Map base labels to class indices of ``task`` (int64 array)."""
        t = self.task(task)
        try:
            return np.array([t.base_to_class[lab] for lab in labels], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} is not one of {', '.join(self.base_labels)}") from None

    def encode_all(self, labels) -> dict[str, np.ndarray]:
        return {t.name: self.encode(labels, t.name) for t in self.tasks}

    def class_map(self, source: str | int, target: str | int) -> np.ndarray | None:
        """Index map from ``source`` task classes to ``target`` classes when every source class falls inside
        one target class (5 → 4, 3, 2; 4 → 3, 2; 3 → 2), else None. Lets a single-head model (no MTL) report
        the coarser tasks with the same maps the heads use."""
        s, t = self.task(source), self.task(target)
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

SCHEMES: dict[str, LabelScheme] = {MARKETCALLS.name: MARKETCALLS}


def get_scheme(name: str) -> LabelScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown label scheme {name!r}; valid: {', '.join(SCHEMES)}") from None
