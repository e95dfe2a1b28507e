"""Training data from the cache, never from the encoders.

A sample is a whole call: all of its segments, in order, however many (the paper's code cut calls
into chunks of 3 segments and dropped calls over 21; we do neither). When the used rows fit on the
device they are loaded once as float16 and indexed there; otherwise batches are read from the store
by a prefetching thread.

Resident features are packed: each modality is one (valid rows of all segments, d) tensor plus
per-segment offsets and lengths, never the store's (segments, 999, d) padded block, so memory is the
sum of valid rows (a MarketCalls-shape cache holds 64 % of its padded size,
bench/packed_features.py; CMU-MOSEI's utterances of a few seconds far less). Padded batches are
assembled from it on the device; since the store's padding rows are zeros (the extractor's writer
zeroes them), a batch holds exactly the numbers the padded layout gave (tests/test_train_packed.py).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.labels import LabelScheme
from pipeline.manifest import SPLITS
from pipeline.store import CacheStore, StoreError

log = logging.getLogger(__name__)


class TrainError(Exception):
    """A cache or setting the trainer cannot use; the message says why and what to do."""


@dataclass
class Batch:
    # (S, A, Da) float16, S = all segments of the batch's calls, in call order; None
    audio: torch.Tensor | None
    # (S,)                                      when the model does not use audio
    audio_len: torch.Tensor
    text: torch.Tensor | None  # (S, T, Dt) (None when the model does not use text)
    text_len: torch.Tensor  # (S,)
    seg_counts: torch.Tensor  # (B,) segments per call
    labels: dict[str, torch.Tensor]  # task -> (B,) call-level labels, or (S,) segment-level ones
    calls: list[int]  # indices into CallData.calls
    # (S,) segment-level: True where the segment has a label (others: context)
    mask: torch.Tensor | None = None
    rows: np.ndarray | None = None  # (S,) store rows of the batch's segments


@dataclass
class LeftOut:
    """What :class:`CallData` leaves out of a cache, for the log."""

    unlabelled: int = 0
    held_out_variants: int = 0
    skipped_segments: int = 0
    dropped: list[str] = field(default_factory=list)

    def log(self, path, scheme: str) -> None:
        if self.skipped_segments:
            log.warning(
                "%s: %d segments were skipped at extraction (bad input; see skip_reason in the "
                "store) and are left out of their calls",
                path,
                self.skipped_segments,
            )
        if self.dropped:
            log.warning(
                "%d calls have no usable segment and are dropped: %s",
                len(self.dropped),
                ", ".join(self.dropped[:20]) + (" …" if len(self.dropped) > 20 else ""),
            )
        if self.unlabelled:
            log.info(
                "%d calls without a %s label or a train/valid/test split are not used",
                self.unlabelled,
                scheme,
            )
        if self.held_out_variants:
            log.info(
                "%d augmented variants of validation/test calls are not used (evaluation is on "
                "originals)",
                self.held_out_variants,
            )


class CallData:
    """Calls of one cache with their row indices (segment order), labels and splits.

    Each (call id, variant) is an entry; :meth:`indices` lists the original recordings only.
    Augmented variants of training calls are alternatives that :meth:`variant_choices` offers the
    training batches (one version of each call per epoch); validation and test never see them.
    """

    def __init__(self, store: CacheStore, scoring: bool = False):
        """``scoring=True`` (``msmtfn-predict --cache``): calls without a label or a
        train/valid/test split are kept too (``labelled`` says which are), and no split is required;
        training never uses this."""
        self.store, self.scoring = store, scoring
        done, skipped = store.done(), store.skipped()
        pending = int((~done & ~skipped).sum())
        if pending:
            raise TrainError(
                f"{store.path}: {pending} of {store.n} segments are not extracted yet; re-run the "
                "same msmtfn-extract command to resume it first"
            )
        try:  # the store's own scheme: a custom one is defined in the store, not in a file
            self.scheme: LabelScheme = store.scheme
        except StoreError as e:
            raise TrainError(str(e)) from None
        # "call": one label per call | "segment": one per segment (utterance)
        self.level = self.scheme.level
        table = store.table()
        # each row's audio row: itself, or a text variant's original (whose rows must be usable too)
        self.audio_row = store.audio_source()
        usable = done & ~skipped
        base = self._collect_calls(table, usable & usable[self.audio_row])
        # unlabelled calls (scoring only) carry any valid label as a stand-in, never scored against
        stand_in = (
            next((b for b, ok in zip(base, self.labelled) if ok), None)
            or next((x for x in table["label"] if self.scheme.is_valid(x)), None)
            or (self.scheme.base_labels[0] if self.scheme.base_labels else "0")
        )
        self.base_labels = [b if ok else stand_in for b, ok in zip(base, self.labelled)]
        if self.level == "segment":
            self._segment_labels(table["label"], stand_in)
        else:
            self.mask = None
            encoded = self.scheme.encode_all(self.base_labels)
            self.labels = {k: torch.as_tensor(v) for k, v in encoded.items()}
        for s in ("train", "valid") if not scoring else ():
            if s not in self.split:
                raise TrainError(
                    f"{store.path}: no calls in the {s} split; the trainer needs train and valid"
                )
        shape = store.shape
        self.audio_frames, self.audio_dim = shape.audio_frames, shape.audio_dim
        self.text_tokens, self.text_dim = shape.text_tokens, shape.text_dim
        self.audio_len = torch.as_tensor(store.lengths("audio")[self.audio_row])
        self.text_len = torch.as_tensor(store.lengths("text"))

    def _call_label(self, cid: str, labels: set, splits: set) -> tuple[str, str]:
        """The one (label, split) of a call's segments; mixed ones are a dataset error."""
        path = self.store.path
        # each segment its own label; the call needs one labelled segment
        if self.level == "segment":
            if len(splits) > 1:
                raise TrainError(
                    f"{path}: call {cid!r} has segments in different splits "
                    f"({', '.join(sorted(splits))}); a call (video, dialogue) belongs to one "
                    "split: fix the dataset and re-run msmtfn-extract"
                )
            labels = {next((lab for lab in labels if self.scheme.is_valid(lab)), "")}
        if len(labels) > 1 or len(splits) > 1:
            raise TrainError(
                f"{path}: call {cid!r} has segments with different labels or splits "
                f"({', '.join(sorted(labels))} / {', '.join(sorted(splits))}); a label belongs to "
                "a whole call: fix the dataset and re-run msmtfn-extract"
            )
        return labels.pop(), splits.pop()

    def _collect_calls(self, table: dict, usable: np.ndarray) -> list[str]:
        """Fill calls, variants, rows, split and labelled with the calls training (or scoring)
        uses; returns their base labels. What is left out is logged."""
        rows_by_call: dict[tuple[str, str], list[int]] = {}
        for i, (cid, var) in enumerate(zip(table["call_id"], table["variant"])):
            rows_by_call.setdefault((cid, var or "orig"), []).append(i)
        self.calls, self.variants, self.split = [], [], []
        self.rows: list[np.ndarray] = []
        self.labelled: list[bool] = []
        base: list[str] = []
        left_out = LeftOut()
        for (cid, variant), rows in rows_by_call.items():
            rows = sorted(rows, key=lambda r: (table["segment_index"][r], r))
            label, split = self._call_label(
                cid, {table["label"][r] for r in rows}, {table["split"][r] for r in rows}
            )
            has_label = split in SPLITS and self.scheme.is_valid(label)
            if not has_label and not (self.scoring and variant == "orig"):
                left_out.unlabelled += 1
                continue  # unlabelled calls (e.g. new calls to predict) are not training data
            if variant != "orig" and split != "train":
                left_out.held_out_variants += 1
                continue
            keep = [r for r in rows if usable[r]]
            left_out.skipped_segments += len(rows) - len(keep)
            if not keep:
                left_out.dropped.append(cid if variant == "orig" else f"{cid} ({variant})")
                continue
            self.calls.append(cid)
            self.variants.append(variant)
            self.rows.append(np.asarray(keep, dtype=np.int64))
            self.split.append(split if split in SPLITS else "")
            base.append(label)
            self.labelled.append(self.scheme.is_valid(label))
        left_out.log(self.store.path, self.scheme.name)
        if not self.calls:
            raise TrainError(
                f"{self.store.path}: no labelled calls in train/valid/test"
                if not self.scoring
                else f"{self.store.path}: no call with a usable segment"
            )
        return base

    def _segment_labels(self, row_labels: list[str], stand_in: str) -> None:
        """Per store row: labels, and the mask of rows that are scored. A row without a valid
        label stays in its call as context but is never scored (nor trained on)."""
        valid = np.array([self.scheme.is_valid(x) for x in row_labels], dtype=bool)
        mask = valid.copy()
        for c, ok in enumerate(self.labelled):  # a call with no label at all: every segment
            if not ok:
                mask[self.rows[c]] = True
        self.labelled_row = torch.as_tensor(valid)
        self.mask = torch.as_tensor(mask)
        filled = [x if self.scheme.is_valid(x) else stand_in for x in row_labels]
        self.labels = {k: torch.as_tensor(v) for k, v in self.scheme.encode_all(filled).items()}
        n_scored = int(self.mask[torch.as_tensor(self.used_rows())].sum())
        if n_scored < len(self.used_rows()):
            log.info(
                "%d segments without a %s label are used as context only",
                len(self.used_rows()) - n_scored,
                self.scheme.name,
            )

    def indices(self, split: str) -> list[int]:
        """Calls of ``split`` ("all": every call), original recordings only."""
        return [
            i
            for i, s in enumerate(self.split)
            if (split == "all" or s == split) and self.variants[i] == "orig"
        ]

    @property
    def variant_names(self) -> list[str]:
        return sorted({v for v in self.variants if v != "orig"})

    def variant_choices(self, calls: list[int], names: tuple[str, ...]) -> list[list[int]] | None:
        """For each original call, [itself, its cached variants named in ``names``], or None when no
        variant is asked for. A name is "all", a variant ("noise-2") or an augmentation ("noise":
        all of its copies)."""
        if not names:
            return None
        valid = self.variant_names
        wanted: set[str] = set()
        unknown = []
        # "all", an exact variant ("noise-2") or a family ("noise" = noise-1, noise-2, …)
        for n in names:
            hit = set(valid) if n == "all" else {v for v in valid if n in (v, v.rsplit("-", 1)[0])}
            wanted |= hit
            if not hit:
                unknown.append(n)
        if unknown:
            raise TrainError(
                f"{self.store.path}: no augmentation variant {', '.join(map(repr, unknown))} in this "
                f"cache; cached variants: {', '.join(valid) or 'none (extract with --augment)'}"
            )
        by_call: dict[str, list[int]] = {}
        for i, (cid, var) in enumerate(zip(self.calls, self.variants)):
            if var in wanted and self.split[i] == "train":
                by_call.setdefault(cid, []).append(i)
        return [[c] + by_call.get(self.calls[c], []) for c in calls]

    def targets(
        self, group: list[int], rows: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Labels of a batch: per call (B,), or per segment (S,) with the mask of labelled
        segments."""
        if self.level == "segment":
            idx = torch.as_tensor(rows)
            return {k: v[idx] for k, v in self.labels.items()}, self.mask[idx]
        return {k: v[group] for k, v in self.labels.items()}, None

    def used_rows(self, calls: list[int] | None = None) -> np.ndarray:
        """Store rows of ``calls`` (default: every entry, variants included)."""
        return np.concatenate(
            [self.rows[c] for c in (range(len(self.rows)) if calls is None else calls)]
        )

    def packed_bytes(
        self, modalities: tuple[str, ...] = ("audio", "text"), calls: list[int] | None = None
    ) -> int:
        """float16 bytes of the valid rows of ``calls`` (what packed resident features hold, offsets
        aside)."""
        rows = torch.as_tensor(self.used_rows(calls))
        n = 0
        if "audio" in modalities:  # each audio row once, however many text variants share it
            own = torch.as_tensor(self.audio_rows(calls))
            n += int(self.audio_len[own].clamp(max=self.audio_frames).sum()) * self.audio_dim
        if "text" in modalities:
            n += int(self.text_len[rows].clamp(max=self.text_tokens).sum()) * self.text_dim
        return 2 * n

    def used_bytes(
        self, modalities: tuple[str, ...] = ("audio", "text"), calls: list[int] | None = None
    ) -> int:
        audio = ("audio" in modalities) * len(self.audio_rows(calls)) * self.audio_frames
        text = ("text" in modalities) * len(self.used_rows(calls)) * self.text_tokens
        return int(2 * (audio * self.audio_dim + text * self.text_dim))

    def audio_rows(self, calls: list[int] | None = None) -> np.ndarray:
        """The distinct store rows holding the audio of ``calls`` (text variants share their
        original's)."""
        return np.unique(self.audio_row[self.used_rows(calls)])


def pad_packed(
    packed: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    idx: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """(S, width, d) zero-padded batch of the packed segments ``idx``: the one place batches are
    padded, for training, evaluation and msmtfn-predict alike. ``packed`` (rows, d) holds each
    segment's valid rows in order, segment i from ``offsets[i]`` for ``lengths[i]`` rows."""
    lengths = lengths[idx].clamp(max=width)
    out = torch.zeros((len(idx), width, packed.shape[1]), dtype=packed.dtype, device=packed.device)
    at = torch.arange(width, device=packed.device)[None, :]
    valid = at < lengths[:, None]  # row-major: the packed order of each row
    out[valid] = packed[(offsets[idx][:, None] + at)[valid]]
    return out


def training_calls(data: CallData, fraction: float = 1.0, seed: int = 0) -> list[int]:
    """The training split's calls, or a ``fraction`` of them: whole calls, drawn per label (the
    call's label where labels belong to calls; one draw over all calls where they belong to
    segments) so each label keeps its share, at least one call of each label, from ``seed``."""
    calls = data.indices("train")
    if fraction >= 1:
        return calls
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for c in calls:
        key = (data.base_labels[c] if data.labelled[c] else "") if data.level == "call" else ""
        groups.setdefault(key, []).append(c)
    keep = []
    for key in sorted(groups):
        members = groups[key]
        n = max(1, round(fraction * len(members)))
        keep.extend(int(c) for c in rng.choice(members, size=n, replace=False))
    return sorted(keep)


def training_priors(data: CallData, calls: list[int] | None = None) -> dict:
    """Per task, the training items' class frequencies (a regression: their mean): what a call
    with nothing to leave out is compared with (train/explain.py), kept in config.json.
    ``calls``: the training calls used (default: the whole training split)."""
    calls = [c for c in (data.indices("train") if calls is None else calls) if data.labelled[c]]
    if data.level == "segment":
        rows = torch.as_tensor(data.used_rows(calls))
        idx = rows[data.labelled_row[rows]]
    else:
        idx = torch.as_tensor(calls, dtype=torch.long)
    out = {}
    for t in data.scheme.tasks:
        y = data.labels[t.name][idx].numpy()
        if t.is_regression:
            out[t.name] = float(y.mean()) if len(y) else 0.0
        else:
            counts = np.bincount(y.astype(np.int64), minlength=t.num_classes)
            out[t.name] = (counts / max(1, counts.sum())).round(6).tolist()
    return out


def batch_widths(audio_len, text_len, text_tokens: int, full_text: bool) -> tuple[int, int]:
    """The widths a batch is padded to: its longest audio, and its longest text (every text row
    where the model needs them all, e.g. flatten pooling). Training, evaluation and predict."""
    return int(audio_len.max()), text_tokens if full_text else int(text_len.max())


def segments_batch(calls, model, text_tokens: int, device: torch.device) -> Batch:
    """A model batch of in-memory segments (msmtfn-predict: ``calls`` lists each call's features,
    ``.audio`` (rows, Da) and ``.text`` (rows, Dt)), assembled as training's batches are: the same
    widths, padding and per-call counts; modalities the model does not read are None."""
    segs = [s for call in calls for s in call]
    a_len = torch.as_tensor([len(s.audio) for s in segs], dtype=torch.int32)
    t_len = torch.as_tensor([len(s.text) for s in segs], dtype=torch.int32)
    a_max, t_max = batch_widths(a_len, t_len, text_tokens, model.needs_every_text_row)
    reads = model.modalities
    return Batch(
        audio=pad_segments([s.audio for s in segs], a_max, device) if "audio" in reads else None,
        audio_len=a_len.to(device),
        text=pad_segments([s.text for s in segs], t_max, device) if "text" in reads else None,
        text_len=t_len.to(device),
        seg_counts=torch.as_tensor([len(c) for c in calls], device=device),
        labels={},
        calls=list(range(len(calls))),
    )


def pad_segments(rows: list[np.ndarray], width: int, device: torch.device) -> torch.Tensor:
    """(S, width, d) float16 batch of in-memory segments (each (valid rows, d)), through
    :func:`pad_packed`."""
    lengths = torch.as_tensor([len(r) for r in rows], dtype=torch.long)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    packed = torch.from_numpy(np.concatenate(rows).astype(np.float16, copy=False)).to(device)
    return pad_packed(
        packed,
        offsets.to(device),
        lengths.to(device),
        torch.arange(len(rows), device=device),
        width,
    )


class FeatureSource:
    """Rows of hidden states by index: resident on the device (float16, loaded once), or read from
    the store per batch. Only the modalities the model uses are ever read (``--modality text`` never
    touches audio).

    Resident features are packed (valid rows only, see the module doc); ``packed=False`` keeps the
    padded (segments, rows, d) layout, for comparison (tests, bench/packed_features.py)."""

    LOAD_ROWS = 256  # rows per read while loading (bounds host memory)

    def __init__(
        self,
        data: CallData,
        device: torch.device,
        max_gb: float = 0.0,
        modalities: tuple[str, ...] = ("audio", "text"),
        calls: list[int] | None = None,
        packed: bool = True,
    ):
        self.data, self.device, self.modalities, self.packed = (
            data,
            device,
            tuple(modalities),
            packed,
        )
        need = (data.packed_bytes if packed else data.used_bytes)(self.modalities, calls)
        budget = max_gb * 2**30 if max_gb else self._auto_budget(device)
        self.resident = need <= budget
        self._map = self._amap = None
        self.audio = self.text = None
        # packed: modality -> (rows + 1,) start of each row's block
        self._offsets: dict[str, torch.Tensor] = {}
        # packed: modality -> (rows,) valid rows of each
        self._lengths: dict[str, torch.Tensor] = {}
        if self.resident:
            rows = np.sort(data.used_rows(calls))
            log.info(
                "loading %.2f GB of cached features (%s, %s) onto %s",
                need / 2**30,
                "+".join(self.modalities),
                "valid rows packed" if packed else "padded",
                device,
            )
            self._map = torch.full((data.store.n,), -1, dtype=torch.long)
            self._map[torch.as_tensor(rows)] = torch.arange(len(rows))
            # each audio row once; text variants index their source's
            if "audio" in self.modalities:
                audio_rows = data.audio_rows(calls)
                at = torch.full((data.store.n,), -1, dtype=torch.long)
                at[torch.as_tensor(audio_rows)] = torch.arange(len(audio_rows))
                self._amap = at[torch.as_tensor(data.audio_row)]
                self.audio = self._load("audio/hidden", audio_rows)
            if "text" in self.modalities:
                self.text = self._load("text/hidden", rows)
        else:
            log.info(
                "streaming features from %s (%.2f GB does not fit the %.2f GB budget)",
                data.store.path,
                need / 2**30,
                budget / 2**30,
            )

    @staticmethod
    def _auto_budget(device: torch.device) -> float:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return 0.5 * free  # leave room for activations
        try:
            import os

            return 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 4 * 2**30

    def _load(self, name: str, rows: np.ndarray) -> torch.Tensor:
        """All ``rows`` of one array into one float16 tensor on the device, read a few hundred rows
        at a time: packed (valid rows only, with offsets and lengths kept aside) or padded as
        stored."""
        arr = self.data.store.array(name)
        if not self.packed:
            out = torch.empty(
                (len(rows),) + tuple(arr.shape[1:]), dtype=torch.float16, device=self.device
            )
            for i in range(0, len(rows), self.LOAD_ROWS):
                out[i : i + self.LOAD_ROWS] = self._read(name, rows[i : i + self.LOAD_ROWS]).to(
                    self.device
                )
            return out
        mod, width = name.split("/")[0], int(arr.shape[1])
        lengths = (self.data.audio_len if mod == "audio" else self.data.text_len)[
            torch.as_tensor(rows)
        ]
        lengths = lengths.to(torch.long).clamp(0, width)
        offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        out = torch.empty(
            (int(offsets[-1]), int(arr.shape[2])), dtype=torch.float16, device=self.device
        )
        for i in range(0, len(rows), self.LOAD_ROWS):
            x = self._read(name, rows[i : i + self.LOAD_ROWS])
            n = lengths[i : i + self.LOAD_ROWS]
            # row-major: each row's valid rows, in order
            valid = torch.arange(width)[None, :] < n[:, None]
            out[int(offsets[i]) : int(offsets[i + len(n)])] = x[valid].to(self.device)
        self._offsets[mod], self._lengths[mod] = offsets.to(self.device), lengths.to(self.device)
        return out

    def _unpack(self, mod: str, idx: torch.Tensor, width: int) -> torch.Tensor:
        """(S, width, d) zero-padded batch of the packed rows ``idx``, assembled on the device."""
        packed = self.audio if mod == "audio" else self.text
        return pad_packed(packed, self._offsets[mod], self._lengths[mod], idx, width)

    @property
    def resident_bytes(self) -> int:
        """Bytes the resident features hold on the device (offsets and lengths included); 0 when
        streaming."""
        tensors = [t for t in (self.audio, self.text) if t is not None]
        tensors += [t for m, t in self._offsets.items() if m in self.modalities]
        tensors += [t for m, t in self._lengths.items() if m in self.modalities]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def _read_rows(self, mod: str, rows: np.ndarray) -> torch.Tensor:
        """Hidden states of ``rows``, audio through each row's audio row (each read once)."""
        if mod != "audio":
            return self._read("text/hidden", rows)
        src = self.data.audio_row[rows]
        if np.array_equal(src, rows):
            return self._read("audio/hidden", rows)
        own, back = np.unique(src, return_inverse=True)
        return self._read("audio/hidden", own)[torch.as_tensor(back)]

    def _read(self, name: str, rows: np.ndarray) -> torch.Tensor:
        # a damaged chunk: one line naming the segments (pipeline.store.DamagedStore)
        return torch.from_numpy(np.ascontiguousarray(self.data.store.read_rows(name, rows)))

    def view(self, modalities: tuple[str, ...]) -> FeatureSource:
        """The same loaded features serving a model that uses fewer modalities (a sweep loads the
        cache once)."""
        missing = set(modalities) - set(self.modalities)
        if missing:
            raise ValueError(f"features loaded without {', '.join(sorted(missing))}")
        other = copy.copy(self)
        other.modalities = tuple(modalities)
        if "audio" not in modalities:
            other.audio = None
        if "text" not in modalities:
            other.text = None
        return other

    def get(
        self, rows: np.ndarray, a_max: int, t_max: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(audio (S, a_max, Da), text (S, t_max, Dt)) float16 on the device, None for an unused
        modality; rows cut to the batch's longest."""
        if self.resident:
            idx = self._map[torch.as_tensor(rows)]
            aidx = self._amap[torch.as_tensor(rows)] if self.audio is not None else idx
            # a row that was not loaded would silently read another row
            if bool((idx < 0).any()) or bool((aidx < 0).any()):
                raise TrainError("internal: batch asks for cache rows that were not loaded")
            idx, aidx = idx.to(self.device), aidx.to(self.device)
            if self.packed:
                a = self._unpack("audio", aidx, a_max) if self.audio is not None else None
                t = self._unpack("text", idx, t_max) if self.text is not None else None
                return a, t
            a = self.audio[aidx, :a_max] if self.audio is not None else None
            t = self.text[idx, :t_max] if self.text is not None else None
            return a, t
        pin = self.device.type == "cuda"
        out = []
        for mod, width in (("audio", a_max), ("text", t_max)):
            if mod not in self.modalities:
                out.append(None)
                continue
            x = self._read_rows(mod, rows)[:, :width]
            if pin:
                x = x.pin_memory()
            out.append(x.to(self.device, non_blocking=pin))
        return out[0], out[1]


class Batches:
    """Iterates batches of whole calls; streaming sources are read ahead by a background thread."""

    def __init__(
        self,
        data: CallData,
        source: FeatureSource,
        calls: list[int],
        batch_calls: int,
        shuffle: bool,
        generator: torch.Generator | None,
        full_text: bool,
        prefetch: int = 2,
        choices: list[list[int]] | None = None,
    ):
        self.data, self.source, self.calls, self.choices = data, source, calls, choices
        self.batch_calls, self.shuffle, self.generator = batch_calls, shuffle, generator
        self.full_text, self.prefetch = full_text, prefetch

    def __len__(self) -> int:
        return (len(self.calls) + self.batch_calls - 1) // self.batch_calls

    def _groups(self) -> list[list[int]]:
        order = self.calls
        # one version of each call this epoch: the original or a cached variant
        if self.choices is not None:
            pick = torch.randint(0, 2**31 - 1, (len(order),), generator=self.generator).tolist()
            order = [ch[p % len(ch)] for ch, p in zip(self.choices, pick)]
        if self.shuffle:
            perm = torch.randperm(len(order), generator=self.generator).tolist()
            order = [order[i] for i in perm]
        return [order[i : i + self.batch_calls] for i in range(0, len(order), self.batch_calls)]

    def make(self, group: list[int]) -> Batch:
        d = self.data
        rows = np.concatenate([d.rows[c] for c in group])
        a_len, t_len = d.audio_len[rows], d.text_len[rows]
        a_max, t_max = batch_widths(a_len, t_len, d.text_tokens, self.full_text)
        audio, text = self.source.get(rows, a_max, t_max)
        dev = self.source.device
        labels, mask = d.targets(group, rows)
        return Batch(
            audio=audio,
            audio_len=a_len.to(dev),
            text=text,
            text_len=t_len.to(dev),
            seg_counts=torch.as_tensor([len(d.rows[c]) for c in group], device=dev),
            labels={k: v.to(dev) for k, v in labels.items()},
            calls=group,
            mask=mask.to(dev) if mask is not None else None,
            rows=rows,
        )

    def __iter__(self):
        groups = self._groups()
        if self.source.resident or self.prefetch <= 0:
            for g in groups:
                yield self.make(g)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)

        def work():
            try:
                for g in groups:
                    q.put(self.make(g))
            except BaseException as e:  # surfaced in the consumer
                q.put(e)
            q.put(None)

        threading.Thread(target=work, daemon=True, name="batch-prefetch").start()
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def open_cache(path: str, storage_options: dict | None = None) -> CacheStore:
    """A store path or URL (s3://bucket/NAME.zarr: fsspec options from MSMTFN_STORAGE_OPTIONS,
    AWS_ENDPOINT_URL)."""
    try:
        return CacheStore.open(path, storage_options=storage_options)
    except StoreError as e:
        raise TrainError(str(e)) from None


@dataclass
class LoadedCache:
    """A cache opened, checked and its features loaded once, so that many runs (a sweep) train from
    it."""

    store: CacheStore
    data: CallData
    source: FeatureSource

    @property
    def device(self) -> torch.device:
        return self.source.device


def load_cache(
    path: str,
    device: torch.device,
    max_gb: float = 0.0,
    modalities: tuple[str, ...] = ("audio", "text"),
    packed: bool = True,
) -> LoadedCache:
    store = open_cache(path)
    data = CallData(store)
    return LoadedCache(
        store, data, FeatureSource(data, device, max_gb, modalities=modalities, packed=packed)
    )
