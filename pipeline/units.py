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
4. consecutive units are merged while the merged span (first start to last end) stays within
   ``max_seconds``; a unit longer than that stays one unit, which the caller splits as any long
   segment (equal pieces, its text shared out).
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


def turn_units(
    spans: Sequence[tuple[float, float]], speakers: Sequence[str], max_seconds: float
) -> list[list[int]]:
    """The utterances' indices, grouped into units (the module's rules 1–4). ``spans``: each
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
    for unit in units:
        if merged:
            start, end = spans[merged[-1][0]][0], spans[unit[-1]][1]
            open_before = not math.isfinite(spans[merged[-1][-1]][1])
            if not open_before and math.isfinite(end) and end - start <= max_seconds + 1e-9:
                merged[-1].extend(unit)
                continue
        merged.append(list(unit))
    return merged


def join_texts(texts: Sequence[str]) -> str:
    """A unit's text: its utterances' texts in order, one space between (a space is neutral to the
    Chinese tokenizers, which read CJK characters one by one)."""
    return " ".join(t for t in texts if t)
