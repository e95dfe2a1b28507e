"""The encode loop shared by the single-process path (extract/run.py), the dask workers
(extract/distributed.py) and msmtfn-predict: decode/tokenise in loader processes, length-bucketed
batches, encoders, rows to a writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.manifest import Segment

from .audio import AudioError, load_segment
from .augment import Augmenter
from .encoders import AudioEncoder, TextEncoder
from .writer import ShardWriter


def segment_channel(seg: Segment, setting: str) -> str:
    """The channel a segment's audio is read from: the setting's, or with ``customer`` its call's
    ``customer_channel`` (an AudioError where the call has none)."""
    if setting != "customer":
        return setting
    if not seg.channel:
        raise AudioError(
            "--channel customer: this call has no customer_channel (left/right/0/1) in its CSV row"
        )
    return seg.channel


class SegmentSource(torch.utils.data.Dataset):
    """Decodes, resamples, normalises and tokenises one planned row; runs in DataLoader workers."""

    def __init__(
        self,
        rows: list[Segment],
        rate: int,
        max_samples: int,
        min_samples: int,
        feature_extractor,
        text_encoder: TextEncoder,
        augmenter: Augmenter | None = None,
        channel: str = "mix",
    ):
        self.rows, self.rate, self.max_samples, self.min_samples = (
            rows,
            rate,
            max_samples,
            min_samples,
        )
        self.augmenter = augmenter
        self.channel = channel
        self.fe = feature_extractor
        self.tokenize = text_encoder.tokenize

    @classmethod
    def for_encoders(cls, segments, encoders, augmenter=None) -> SegmentSource:
        """A source for ``encoders`` (anything with ``policy``, ``max_samples``, ``audio`` and
        ``text``, as extract's Encoders and predict's RunEncoders have)."""
        return cls(
            segments,
            encoders.policy.input_rate,
            encoders.max_samples,
            encoders.audio.min_samples(),
            encoders.audio.feature_extractor,
            encoders.text,
            augmenter,
            getattr(encoders.policy, "channel", "mix"),
        )

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        seg = self.rows[i]
        item = {"row": i, "warnings": []}
        if seg.audio_of:  # a text variant: its audio rows are its original's, never read here
            item["ids"], item["truncated"] = self.tokenize(seg.text)
            return item
        try:
            x, warnings = load_segment(
                seg.audio_path, seg.start, seg.end, self.rate, segment_channel(seg, self.channel)
            )
            if seg.variant != "orig":
                x = self.augmenter(x, self.rate, seg)
                # a slowed-down copy of a full-length segment: cut, as planned
                if len(x) > self.max_samples:
                    x = x[: self.max_samples]
            item["warnings"] += warnings
            if len(x) < self.min_samples:
                raise AudioError(
                    f"too short ({len(x)} samples at {self.rate} Hz; the encoder needs "
                    f"{self.min_samples})"
                )
            if len(x) > self.max_samples:
                item["warnings"].append(
                    f"{(len(x) - self.max_samples) / self.rate:.3f}s longer than planned; end cut"
                )
                x = x[: self.max_samples]
            wave = self.fe(x, sampling_rate=self.fe.sampling_rate, return_tensors="np")[
                "input_values"
            ][0]
            item["wave"] = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        except AudioError as e:
            item["error"] = str(e)
            return item
        if not seg.text.strip():
            item["warnings"].append("empty transcript (encoded as special tokens only)")
        item["ids"], item["truncated"] = self.tokenize(seg.text)
        return item


def _collate(items):
    return items


def make_loader(source: SegmentSource, batches: list[list[int]], num_workers: int):
    """The DataLoader of ``source`` over the planned ``batches`` (items stay a list: rows can fail
    one by one)."""
    return torch.utils.data.DataLoader(
        source,
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )


def make_batches(
    lengths: np.ndarray, blocks: list[range], budget: int, max_batch: int
) -> list[list[int]]:
    """Length-bucketed batches: within each block of rows, longest first, filled up to ``budget``
    padded samples and ``max_batch`` rows. Depends only on the planned lengths, never on what is
    already done."""
    batches: list[list[int]] = []
    for block in blocks:
        order = sorted(block, key=lambda i: (-lengths[i], i))
        cur: list[int] = []
        for i in order:
            padded = (len(cur) + 1) * max(lengths[cur[0]] if cur else 0, lengths[i])
            if cur and (padded > budget or len(cur) >= max_batch):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    return batches


@dataclass
class EncodeStats:
    """What an encode loop reports besides the rows it wrote (small: it travels back from dask
    workers)."""

    warnings: list[dict] = field(default_factory=list)
    truncated: int = 0
    audio_seconds: float = 0.0
    computed: int = 0


@dataclass
class EncodedBatch:
    """One loader batch through both encoders: every item (errors included), the items kept, and
    their hidden states as float16 arrays (as the store keeps them and training reads them)."""

    items: list[dict]
    kept: list[dict]
    audio: np.ndarray | None = None  # (kept, A, Da)
    audio_len: np.ndarray | None = None
    text: np.ndarray | None = None  # (kept, T, Dt)
    text_len: np.ndarray | None = None


def encode_loader(loader, audio: AudioEncoder, text: TextEncoder, keep=None):
    """The one encode loop of extraction and prediction: for each batch the loader yields, the
    readable items through both frozen encoders; ``keep(row)`` chooses whose states are returned
    (default all)."""
    for items in loader:
        ok = [it for it in items if "error" not in it]
        if not ok:
            yield EncodedBatch(items, [])
            continue
        a_hidden, a_len = _encode_audio(audio, ok)
        t_hidden, t_len = text.encode([it["ids"] for it in ok])
        idx = [j for j, it in enumerate(ok) if keep is None or keep(it["row"])]
        yield EncodedBatch(
            items,
            [ok[j] for j in idx],
            a_hidden[idx],
            a_len[idx],
            t_hidden[idx].to(torch.float16).cpu().numpy(),
            np.asarray(t_len[idx]),
        )


def _encode_audio(audio: AudioEncoder, ok: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """float16 (items, frames, Da) and lengths; rows of text variants (no ``wave``) stay zero with
    length 0, and the audio encoder never sees them."""
    with_audio = [j for j, it in enumerate(ok) if "wave" in it]
    if len(with_audio) == len(ok):
        hidden, lengths = audio.encode([it["wave"] for it in ok])
        return hidden.to(torch.float16).cpu().numpy(), np.asarray(lengths)
    lengths = np.zeros(len(ok), dtype=np.int32)
    if not with_audio:
        return np.zeros((len(ok), 1, audio.hidden_size), np.float16), lengths
    hidden, n = audio.encode([ok[j]["wave"] for j in with_audio])
    out = np.zeros((len(ok),) + tuple(hidden.shape[1:]), np.float16)
    out[with_audio] = hidden.to(torch.float16).cpu().numpy()
    lengths[with_audio] = n
    return out, lengths


def encode_batches(
    loader,
    rows,
    todo: np.ndarray,
    audio: AudioEncoder,
    text: TextEncoder,
    writer: ShardWriter,
    input_rate: int,
    bar=None,
) -> EncodeStats:
    """Encode every batch the loader yields and hand the rows still to do to ``writer`` (which does
    not wait)."""
    stats = EncodeStats()
    for batch in encode_loader(loader, audio, text, keep=lambda row: todo[row]):
        for it in batch.items:
            for w in it["warnings"]:
                stats.warnings.append(
                    {"row": it["row"], "segment_id": rows[it["row"]].segment_id, "warning": w}
                )
            if "error" in it and todo[it["row"]]:
                writer.skip(it["row"], it["error"])
        if batch.kept:
            kept = batch.kept
            writer.put(
                [it["row"] for it in kept], batch.audio, batch.audio_len, batch.text, batch.text_len
            )
            stats.truncated += sum(1 for it in kept if it["truncated"])
            stats.audio_seconds += float(sum(len(it.get("wave", ())) for it in kept)) / input_rate
            stats.computed += len(kept)
        if bar is not None:
            bar.update(sum(1 for it in batch.items if todo[it["row"]]))
            bar.set_postfix(skipped=len(writer.skipped), refresh=False)
    return stats
