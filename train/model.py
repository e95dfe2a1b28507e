"""The MSMT-FN fusion network on cached encoder hidden states.

Per segment (all segments of a batch at once):

    text (T×Dt) ─proj─► [CLS_t; text] ─► text self-attention ×text_layers
                       ─► cross-modal layers ×cross_layers, CHAINED: cross-attention (text queries audio),
                          self-attention, FFN — each layer takes the previous layer's output
                       ─► bottleneck fusion ×bottleneck_layers: the text stream attends over [text; B] and the
                          audio stream over [audio; B]; B = mean of both updates, so audio reaches the text
                          stream through B in the next layer (and through cross-attention above)
                       ─► segment vector: masked mean (default) | CLS | flatten (T+1)·d → d (paper)
    audio (A×Da) ─proj─► [CLS_a; audio] ───────────────┘ (keys/values of cross-attention; bottleneck stream)

Per call: Bi-GRU (packed, 2 layers × 128 per direction) over the call's segment vectors → call vector →
one head per task (dropout, d → 512 → k). Where labels belong to segments (``ModelDims.level == "segment"``:
CMU-MOSI/MOSEI utterances in a video, MELD utterances in a dialogue) the heads read each segment's vector joined
with the Bi-GRU's output at that segment (its context in the call) instead. A regression task has a width-1
head. Unlike the paper's public code, audio changes the output: nothing
masks it out, and the fused text stream *is* what the heads read.

Ablations (``TrainConfig``): ``cross_attention=False`` drops the cross-attention sub-layers (self-attention and
FFN stay, same depth); ``bottleneck=False`` drops the bottleneck layers; ``bigru=False`` mean-pools the segment
vectors over the call; ``mtl=False`` keeps one head; ``modality='text'`` never reads audio; ``modality='audio'``
makes the audio stream the main stream (text never read; ``flatten`` pooling becomes CLS, a 1000-row flatten
being absurd).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import ConfigError, TrainConfig


@dataclass(frozen=True)
class ModelDims:
    audio_dim: int
    text_dim: int
    text_tokens: int
    tasks: dict            # task name -> number of classes (1 for a regression)
    level: str = "call"    # "call": one output per call | "segment": one output per segment


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (fused flash/memory-efficient kernels)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            raise ConfigError(f"d_model {d} is not divisible by heads {heads}")
        self.h, self.dropout = heads, dropout
        self.q, self.kv, self.o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, lq, d = x.shape
        lk = ctx.shape[1]
        q = self.q(x).view(b, lq, self.h, d // self.h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, lk, 2, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Sequential):
    def __init__(self, d: int, ffn: int, dropout: float):
        super().__init__(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))


class SelfBlock(nn.Module):
    """Pre-LN transformer layer: self-attention + FFN."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.n1, self.att, self.n2, self.ff = nn.LayerNorm(d), Attention(d, heads, attn_dropout), nn.LayerNorm(d), \
            FeedForward(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, valid):
        h = self.n1(x)
        x = x + self.drop(self.att(h, h, valid))
        return x + self.drop(self.ff(self.n2(x)))


class CrossModalLayer(nn.Module):
    """Cross-attention (queries from the main stream, keys/values from the other), then self-attention, FFN."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, cross: bool, attn_dropout: float = 0.0):
        super().__init__()
        self.cross = Attention(d, heads, attn_dropout) if cross else None
        if cross:
            self.nq, self.nkv = nn.LayerNorm(d), nn.LayerNorm(d)
        self.block = SelfBlock(d, heads, ffn, dropout, attn_dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, x_valid, other=None, other_valid=None):
        if self.cross is not None:
            x = x + self.drop(self.cross(self.nq(x), self.nkv(other), other_valid))
        return self.block(x, x_valid)


class BottleneckLayer(nn.Module):
    """Attention-bottleneck fusion (Nagrani et al. 2021): each stream attends over its tokens and the shared
    bottleneck tokens; the bottleneck's new value is the mean of the streams' updates of it."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, two_streams: bool, attn_dropout: float = 0.0):
        super().__init__()
        self.main = SelfBlock(d, heads, ffn, dropout, attn_dropout)
        self.other = SelfBlock(d, heads, ffn, dropout, attn_dropout) if two_streams else None

    def forward(self, x, x_valid, b, other=None, other_valid=None):
        nb = b.shape[1]
        ones = torch.ones(b.shape[:2], dtype=torch.bool, device=b.device)
        y = self.main(torch.cat([x, b], 1), torch.cat([x_valid, ones], 1))
        x, b_main = y[:, :-nb], y[:, -nb:]
        if self.other is None:
            return x, b_main, other
        z = self.other(torch.cat([other, b], 1), torch.cat([other_valid, ones], 1))
        other, b_other = z[:, :-nb], z[:, -nb:]
        return x, (b_main + b_other) / 2, other


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[CLS] + rows: (S, 1 + width) bool, True where a row is real."""
    ar = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    return torch.cat([torch.ones_like(ar[:, :1]), ar], 1)


class MSMTFN(nn.Module):
    def __init__(self, cfg: TrainConfig, dims: ModelDims):
        super().__init__()
        self.cfg, self.dims = cfg, dims
        main_is_audio = cfg.modality == "audio"
        d = cfg.d_model or (dims.audio_dim if main_is_audio else dims.text_dim)
        self.d = d
        self.uses_text = cfg.modality in ("both", "text")
        self.uses_audio = cfg.modality in ("both", "audio")
        self.modalities = tuple(m for m, on in (("audio", self.uses_audio), ("text", self.uses_text)) if on)
        two = cfg.modality == "both"
        self.pooling = "cls" if (main_is_audio and cfg.pooling == "flatten") else cfg.pooling
        if self.uses_text:
            self.text_proj = nn.Linear(dims.text_dim, d) if dims.text_dim != d else nn.Identity()
            self.cls_text = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        if self.uses_audio:
            self.audio_proj = nn.Linear(dims.audio_dim, d) if dims.audio_dim != d else nn.Identity()
            self.cls_audio = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        h, f, p, pa = cfg.heads, cfg.ffn, cfg.dropout, cfg.attn_dropout
        self.main_layers = nn.ModuleList(SelfBlock(d, h, f, p, pa) for _ in range(cfg.text_layers))
        self.cross_layers = nn.ModuleList(CrossModalLayer(d, h, f, p, cross=two and cfg.cross_attention,
                                                          attn_dropout=pa) for _ in range(cfg.cross_layers))
        if cfg.bottleneck:
            self.bottleneck_tokens = nn.Parameter(torch.randn(1, cfg.bottleneck_tokens, d) * 0.02)
            self.bottleneck_layers = nn.ModuleList(BottleneckLayer(d, h, f, p, two_streams=two, attn_dropout=pa)
                                                   for _ in range(cfg.bottleneck_layers))
        self.final_norm = nn.LayerNorm(d)
        if self.pooling == "flatten":
            self.flatten = nn.Linear((dims.text_tokens + 1) * d, d)
        self.seg_drop = nn.Dropout(p)
        if cfg.bigru:
            self.gru = nn.GRU(d, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True, bidirectional=True,
                              dropout=p if cfg.gru_layers > 1 else 0.0)
            if dims.level == "segment":   # the segment itself + its context: the GRU output at its position
                self.seg_proj = nn.Sequential(nn.Linear(d + 2 * cfg.gru_hidden, d), nn.GELU())
            else:
                self.call_proj = nn.Sequential(nn.Linear(4 * cfg.gru_hidden, d), nn.GELU())
        tasks = dims.tasks if cfg.mtl else {cfg.task: dims.tasks[cfg.task]}
        self.heads = nn.ModuleDict({name: nn.Sequential(nn.Dropout(p), nn.Linear(d, cfg.head_hidden), nn.GELU(),
                                                        nn.Dropout(p), nn.Linear(cfg.head_hidden, k))
                                    for name, k in tasks.items()})

    # --------------------------------------------------------------- segments
    def _stream(self, x, lengths, proj, cls):
        x = proj(x.to(cls.dtype))
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], 1), _valid(lengths, x.shape[1])

    def segment_vectors(self, audio, audio_len, text, text_len) -> torch.Tensor:
        """(S, d): one vector per segment. ``audio`` (S, A, Da) / ``text`` (S, T, Dt) in any float dtype (cast to
        the model's), rows past ``audio_len`` / ``text_len`` are masked; an unused modality may be None."""
        t = a = t_valid = a_valid = None
        if self.uses_text:
            t, t_valid = self._stream(text, text_len, self.text_proj, self.cls_text)
        if self.uses_audio:
            a, a_valid = self._stream(audio, audio_len, self.audio_proj, self.cls_audio)
        if self.cfg.modality == "audio":
            x, x_valid, other, other_valid = a, a_valid, None, None
        else:
            x, x_valid, other, other_valid = t, t_valid, a, a_valid
        for layer in self.main_layers:
            x = layer(x, x_valid)
        for layer in self.cross_layers:          # chained: each takes the previous output
            x = layer(x, x_valid, other, other_valid)
        if self.cfg.bottleneck:
            b = self.bottleneck_tokens.expand(x.shape[0], -1, -1)
            for layer in self.bottleneck_layers:
                x, b, other = layer(x, x_valid, b, other, other_valid)
        x = self.final_norm(x)
        if self.pooling == "flatten":
            v = self.flatten((x * x_valid[..., None]).flatten(1))
        elif self.pooling == "cls":
            v = x[:, 0]
        else:
            m = x_valid[..., None].to(x.dtype)
            v = (x * m).sum(1) / m.sum(1)
        return self.seg_drop(v)

    # ------------------------------------------------------------------ calls
    def call_vectors(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> torch.Tensor:
        """(B, d) from the (S, d) segment vectors of B calls (``seg_counts`` segments each, in order)."""
        counts = seg_counts.tolist()
        padded = nn.utils.rnn.pad_sequence(list(torch.split(seg, counts)), batch_first=True)   # (B, Smax, d)
        mask = (torch.arange(padded.shape[1], device=seg.device)[None, :] < seg_counts[:, None])[..., None]
        if not self.cfg.bigru:
            return (padded * mask).sum(1) / seg_counts[:, None].to(padded.dtype)
        packed = pack_padded_sequence(padded, seg_counts.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        mean = (out * mask).sum(1) / seg_counts[:, None].to(out.dtype)
        # last layer's final states: forward direction after the last segment, backward after the first
        return self.call_proj(torch.cat([mean, h_n[-2], h_n[-1]], dim=1))

    def context_vectors(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> torch.Tensor:
        """(S, d): each segment vector joined with the Bi-GRU's output at its place in its call (segment-level
        labels); without the Bi-GRU, the segment vectors alone (no context)."""
        if not self.cfg.bigru:
            return seg
        counts = seg_counts.tolist()
        padded = nn.utils.rnn.pad_sequence(list(torch.split(seg, counts)), batch_first=True)   # (B, Smax, d)
        packed = pack_padded_sequence(padded, seg_counts.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        mask = torch.arange(padded.shape[1], device=seg.device)[None, :] < seg_counts[:, None]
        return self.seg_proj(torch.cat([seg, out[mask]], dim=1))   # mask keeps call order, segments in order

    def forward(self, audio, audio_len, text, text_len, seg_counts) -> dict[str, torch.Tensor]:
        """{task: (B, k)} for call-level labels, {task: (S, k)} for segment-level ones (k = 1: a regression)."""
        seg = self.segment_vectors(audio, audio_len, text, text_len)
        if self.dims.level == "segment":
            x = self.context_vectors(seg, seg_counts)
        else:
            x = self.call_vectors(seg, seg_counts)
        return {name: head(x) for name, head in self.heads.items()}


def build_model(cfg: TrainConfig, dims: ModelDims) -> MSMTFN:
    if not cfg.task:   # the dataset's main task
        cfg = cfg.with_(task=next(iter(dims.tasks)))
    if cfg.task not in dims.tasks:
        raise ConfigError(f"task {cfg.task!r} is not one of this dataset's tasks: {', '.join(dims.tasks)}")
    if cfg.modality == "both" and not cfg.cross_attention and not cfg.bottleneck:
        raise ConfigError("without cross-attention and without bottleneck nothing fuses audio into the text "
                          "stream; use --modality text for a text-only model")
    return MSMTFN(cfg, dims)
