"""Conversation units (``--units turns``): a call's timed, diarized utterances grouped as the paper
cut its calls, an agent turn plus the customer's reply, then merged up to the segment limit.

One rule for extraction (the generic CSV's timed rows of a long recording) and for
``msmtfn-predict`` (a transcripts CSV with a speaker column), so that new calls are cut as the
training calls were. The rule, on utterances in time order:

1. a *turn* is a run of consecutive utterances by one speaker;
2. a speaker named ``customer``, ``client`` or ``caller`` (any case) is the customer and every other
   speaker an agent; in a call naming no customer, the call's first speaker is the agent and the
   others are customers (agents open marketing calls);
3. a *unit* starts at every agent turn and takes the customer turns that follow it (a call opening
   with the customer starts with a unit of the customer's turn alone);
4. a unit longer than ``max_seconds`` is split between its utterances, where the transcript says
   someone stopped speaking: each piece takes as many whole utterances, in order, as fit the limit;
   the pieces are never merged with other units. Only a single utterance over the limit is left
   whole, and the caller splits it as any long segment (equal pieces, its text shared out);
5. consecutive units are merged while the merged span (first start to last end) stays within
   ``max_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

UNITS = ("rows", "turns")
CUSTOMER_NAMES = frozenset({"customer", "client", "caller"})


def speaker_roles(speakers: Sequence[str]) -> list[str]:
    """``agent`` or ``customer`` for each utterance's speaker (rule 2 of the module)."""
    named = any(s.strip().lower() in CUSTOMER_NAMES for s in speakers)
    first = speakers[0] if speakers else ""
    if named:
        return ["customer" if s.strip().lower() in CUSTOMER_NAMES else "agent" for s in speakers]
    return ["agent" if s == first else "customer" for s in speakers]


def _span(spans: Sequence[tuple[float, float]], unit: Sequence[int]) -> float:
    return spans[unit[-1]][1] - spans[unit[0]][0]


def split_long_unit(
    spans: Sequence[tuple[float, float]], unit: list[int], max_seconds: float
) -> list[list[int]]:
    """Rule 4: ``unit`` cut between utterances into pieces of whole utterances within
    ``max_seconds`` (an utterance longer than that is a piece of its own)."""
    pieces = [[unit[0]]]
    for i in unit[1:]:
        if _span(spans, [pieces[-1][0], i]) <= max_seconds + 1e-9:
            pieces[-1].append(i)
        else:
            pieces.append([i])
    return pieces


def turn_units(
    spans: Sequence[tuple[float, float]], speakers: Sequence[str], max_seconds: float
) -> list[list[int]]:
    """The utterances' indices, grouped into units (the module's rules 1–5). ``spans``: each
    utterance's (start, end) in seconds, in time order (an open end is ``inf``, and nothing is
    merged after it); ``speakers``: each one's speaker. Every index is in exactly one unit, in
    order."""
    if len(spans) != len(speakers):
        raise ValueError("one speaker per utterance")
    roles = speaker_roles(speakers)
    units: list[list[int]] = []
    for i, role in enumerate(roles):
        same_turn = i > 0 and speakers[i] == speakers[i - 1]
        # a new unit at each agent turn; a customer's turn joins the agent's unit before it
        if not units or (role == "agent" and not same_turn):
            units.append([i])
        else:
            units[-1].append(i)
    merged: list[list[int]] = []
    closed = True  # the last entry takes no more units (a piece of a split unit)
    for unit in units:
        span = _span(spans, unit)
        if math.isfinite(span) and span > max_seconds + 1e-9:  # an open end's length is unknown
            merged.extend(split_long_unit(spans, unit, max_seconds))
            closed = True
            continue
        if merged and not closed:
            start, end = spans[merged[-1][0]][0], spans[unit[-1]][1]
            open_before = not math.isfinite(spans[merged[-1][-1]][1])
            if not open_before and math.isfinite(end) and end - start <= max_seconds + 1e-9:
                merged[-1].extend(unit)
                continue
        merged.append(list(unit))
        closed = False
    return merged


def join_texts(texts: Sequence[str]) -> str:
    """A unit's text: its utterances' texts in order, one space between (a space is neutral to the
    Chinese tokenizers, which read CJK characters one by one)."""
    return " ".join(t for t in texts if t)
