"""The MSMT-FN fusion network on cached encoder hidden states (diagram and every choice:
docs/model.md).

Per segment (all segments of a batch at once), with text as the backbone:

    text (T×Dt) ─proj─► t0 = [CLS_t; text] ─► TEXT BRANCH: self-attention ×text_branch_layers
    ──────┐
                                          └─► CROSS-MODAL BRANCH: ×cross_layers, CHAINED:          │
    audio (A×Da) ─proj─► [CLS_a; audio] ──────► cross-attention (queries = branch, K/V = audio),
    │
                                                self-attention, FFN
                                                ────────────────────────────────┤
         BOTTLENECK FUSION ×bottleneck_layers (Nagrani et al. 2021): each branch attends over
         │
         [its tokens; B] (B = bottleneck_tokens learned tokens); B ← mean of the two updates of B
         ◄──┘
    segment vector = join(pool(text branch), mean(B after the last layer))

Audio reaches the text branch only through B: from layer 2 on the text branch attends over a B that
the cross-modal branch wrote, and the final B (written by both branches in the last layer) joins the
pooled text branch, so even one bottleneck layer carries audio to every head. In the last layer the
cross-modal branch computes only its update of B (its own tokens would be read by nothing).

Per call: Bi-GRU (packed, 2 layers × 128 per direction) over the call's segment vectors → call
vector → one head per task (dropout, d → 512 → k). Where labels belong to segments
(``ModelDims.level == "segment"``: CMU-MOSI/MOSEI utterances in a video, MELD utterances in a
dialogue) the heads read each segment's vector joined with the Bi-GRU's output at that segment (its
context in the call) instead. A regression task has a width-1 head. Unlike the paper's public code,
audio changes the output (nothing masks it out; see :func:`audio_path_problem`).

``audio_stride=N`` stacks N audio frames side by side into one row before the projection (N× fewer
audio keys; default 1, every frame). The segments of a batch run in length groups where that saves
padded work (:meth:`MSMTFN.length_groups`); the result is that of one padded batch.

Ablations (``TrainConfig``), each "both" variant still reads audio:
* ``cross_attention=False``: the second branch is the audio sequence itself ([CLS_a; audio],
self-attention
  + FFN ×cross_layers, no text queries); the bottleneck then fuses text and audio as in Nagrani et
  al.
* ``bottleneck=False``: no bottleneck tokens; the segment vector joins the pooled text branch with
the pooled
  second branch (masked mean, or CLS under ``pooling="cls"``).
* ``bigru=False`` mean-pools the segment vectors over the call; ``mtl=False`` keeps one head.
* ``modality="text"``: the text branch alone (audio never read); ``modality="audio"``: the same
single branch on
  [CLS_a; audio] (text never read; ``flatten`` pooling becomes CLS, a 1000-row flatten being
  absurd).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    tasks: dict  # task name -> number of classes (1 for a regression)
    level: str = "call"  # "call": one output per call | "segment": one output per segment


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (fused flash/memory-efficient
    kernels)."""

    # Heads narrower than this are computed zero-padded to it (same result: zeros add nothing to
    # q·k, and the output's padded columns are dropped). Torch's CPU flash kernel is slower on a
    # head of 4-12 than on one of 16 (8-wide heads padded: the attention 1.4x, a training step at
    # width 32 1.2x faster; bench/fusion_speed.py --head-width). CUDA kernels take any multiple of
    # 8: no padding there.
    KERNEL_HEAD_DIM = {"cpu": 16}

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            fits = [h for h in (1, 2, 4, 8, 12, 16) if d % h == 0]
            raise ConfigError(
                f"d_model {d} is not divisible by --heads {heads}: pass --heads "
                f"{' or '.join(map(str, fits[-3:]))} (or another --d-model; the tiny demo encoders "
                "are 32 wide)"
            )
        self.h, self.dropout = heads, dropout
        self.q, self.kv, self.o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, lq, d = x.shape
        lk = ctx.shape[1]
        q = self.q(x).view(b, lq, self.h, d // self.h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, lk, 2, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        hd, width = d // self.h, self.KERNEL_HEAD_DIM.get(x.device.type, 0)
        if hd < width:
            q, k, v = (F.pad(t, (0, width - hd)) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=key_valid[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
            scale=hd**-0.5,
        )
        return self.o(out[..., :hd].transpose(1, 2).reshape(b, lq, d))


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask, on CPU, is drawn as ``uniform < 1 - p``: the same Bernoulli(1 - p)
    mask and 1 / (1 - p) scale, but torch's CPU ``bernoulli_`` draws one number at a time, 1.9x
    slower than this draw (10 % of a training step at width 32; steps took 0.94-0.95x the time with
    this mask, bench/fusion_speed.py --dropout). Elsewhere (CUDA's fused kernel), and in eval mode,
    torch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        keep = 1.0 - self.p
        return x * torch.empty_like(x).uniform_().lt_(keep).div_(keep)


class FeedForward(nn.Sequential):
    def __init__(self, d: int, ffn: int, dropout: float):
        super().__init__(nn.Linear(d, ffn), nn.GELU(), Dropout(dropout), nn.Linear(ffn, d))


class SelfBlock(nn.Module):
    """Pre-LN transformer layer: self-attention + FFN. ``last_rows=n`` computes only the last n
    rows' outputs (they still attend over every row): what a layer whose other rows nobody reads
    needs."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.n1, self.att, self.n2, self.ff = (
            nn.LayerNorm(d),
            Attention(d, heads, attn_dropout),
            nn.LayerNorm(d),
            FeedForward(d, ffn, dropout),
        )
        self.drop = Dropout(dropout)

    def forward(self, x, valid, last_rows: int = 0):
        h = self.n1(x)
        if last_rows:
            x, q = x[:, -last_rows:], h[:, -last_rows:]
        else:
            q = h
        x = x + self.drop(self.att(q, h, valid))
        return x + self.drop(self.ff(self.n2(x)))


class CrossModalLayer(nn.Module):
    """Cross-attention (queries from this branch, keys/values from the audio), then self-attention,
    FFN."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.cross = Attention(d, heads, attn_dropout)
        self.nq, self.nkv = nn.LayerNorm(d), nn.LayerNorm(d)
        self.block = SelfBlock(d, heads, ffn, dropout, attn_dropout)
        self.drop = Dropout(dropout)

    def forward(self, x, x_valid, audio, audio_valid):
        x = x + self.drop(self.cross(self.nq(x), self.nkv(audio), audio_valid))
        return self.block(x, x_valid)


class BottleneckLayer(nn.Module):
    """Attention-bottleneck fusion (Nagrani et al. 2021): each branch attends over its tokens and
    the shared bottleneck tokens B; B's new value is the mean of the two branches' updates of it.
    ``last=True``: the second branch's own tokens are read by nothing after this layer, so only its
    update of B is computed."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.text = SelfBlock(d, heads, ffn, dropout, attn_dropout)
        self.second = SelfBlock(d, heads, ffn, dropout, attn_dropout)

    def forward(self, x, x_valid, y, y_valid, b, last: bool = False):
        nb = b.shape[1]
        ones = torch.ones(b.shape[:2], dtype=torch.bool, device=b.device)
        xt = self.text(torch.cat([x, b], 1), torch.cat([x_valid, ones], 1))
        x, b_text = xt[:, :-nb], xt[:, -nb:]
        ys = self.second(
            torch.cat([y, b], 1), torch.cat([y_valid, ones], 1), last_rows=nb if last else 0
        )
        y, b_second = (None, ys) if last else (ys[:, :-nb], ys[:, -nb:])
        return x, y, (b_text + b_second) / 2


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[CLS] + rows: (S, 1 + width) bool, True where a row is real."""
    ar = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    return torch.cat([torch.ones_like(ar[:, :1]), ar], 1)


def stack_frames(
    x: torch.Tensor, lengths: torch.Tensor, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each run of ``stride`` frames → one row of their features side by side (frame stacking),
    padding frames past ``lengths`` zeroed (a last, partial run is zero-filled). (S, A, D), (S,) →
    (S, ceil(A/stride), stride·D), ceil(lengths/stride). Nothing is lost: the projection after it
    sees every frame."""
    if stride == 1:
        return x, lengths
    s, a, d = x.shape
    real = torch.arange(a, device=x.device)[None, :] < lengths[:, None]
    x = F.pad(x * real[..., None].to(x.dtype), (0, 0, 0, -a % stride))
    return x.reshape(s, -1, stride * d), (lengths + stride - 1) // stride


def cheapest_split(
    lens: np.ndarray, other: np.ndarray, overhead: float, most: int, units: int = 512
) -> list[tuple[int, int]]:
    """The split of items sorted by ``lens`` (ascending) into at most ``most`` contiguous parts with
    the least Σ_part size · lens_max · (other_max + lens_max) + overhead · parts, as (start, end)
    pairs: an exact dynamic programme over the sorted order (O(most · n²)). Over ``units`` items the
    order is first cut into ``units`` equal runs, so the tables stay small."""
    n = len(lens)
    # unit u = items cuts[u]:cuts[u + 1]
    cuts = np.linspace(0, n, min(n, units) + 1).round().astype(int)
    u = len(cuts) - 1
    last = cuts[1:] - 1
    ulen = lens[last]  # sorted: a unit's longest is its last
    uoth = np.maximum.reduceat(other, cuts[:-1])
    i, e = np.arange(u)[:, None], np.arange(u)[None, :]  # part = units i..e
    omax = np.maximum.accumulate(np.where(e >= i, uoth[None, :], 0.0), axis=1)  # lengths are ≥ 0
    size = cuts[1:][None, :] - cuts[:-1][:, None]
    cost = np.where(e >= i, size * ulen[None, :] * (omax + ulen[None, :]) + overhead, np.inf)
    prev = np.full(u + 1, np.inf)
    prev[0] = 0.0  # prev[i]: the least cost of units[:i] in the parts so far
    starts, best, best_k = [], np.inf, 1
    for k in range(1, min(most, u) + 1):
        total = prev[:u, None] + cost  # [i, e]: units[:i] in k - 1 parts, units i..e the k-th
        start = total.argmin(0)
        prev = np.concatenate([[np.inf], total[start, np.arange(u)]])
        starts.append(start)
        if prev[u] < best:  # ties keep fewer parts
            best, best_k = prev[u], k
    parts, end = [], u
    for k in range(best_k, 0, -1):
        s = int(starts[k - 1][end - 1])
        parts.append((int(cuts[s]), int(cuts[end])))
        end = s
    return parts[::-1]


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    m = valid[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1)


def audio_path_problem(cfg: TrainConfig) -> str | None:
    """Why a ``modality="both"`` configuration would never let audio reach the heads, or None when
    it does.

    By structure (tests/test_train_model.py checks the rule against real gradients over a grid of
    settings): audio enters the second branch through cross-attention, or is that branch under
    ``--no-cross-attention``; the second branch reaches the text branch's segment vector through the
    final bottleneck tokens, or directly under ``--no-bottleneck``."""
    if cfg.modality != "both":
        return None
    if cfg.cross_attention and cfg.cross_layers == 0:
        return (
            "--cross-layers 0 leaves the cross-modal branch without cross-attention, so no audio enters it; "
            "use --cross-layers 1 or more, or --no-cross-attention (the second branch is then the audio)"
        )
    if cfg.bottleneck and cfg.bottleneck_layers == 0:
        return (
            "--bottleneck-layers 0 never updates the bottleneck tokens, so audio never reaches them; use "
            "--bottleneck-layers 1 or more, or --no-bottleneck (the two branches are then joined directly)"
        )
    return None


class MSMTFN(nn.Module):
    def __init__(self, cfg: TrainConfig, dims: ModelDims):
        super().__init__()
        self.cfg, self.dims = cfg, dims
        main_is_audio = cfg.modality == "audio"
        d = cfg.d_model or (dims.audio_dim if main_is_audio else dims.text_dim)
        self.d = d
        self.uses_text = cfg.modality in ("both", "text")
        self.uses_audio = cfg.modality in ("both", "audio")
        self.modalities = tuple(
            m for m, on in (("audio", self.uses_audio), ("text", self.uses_text)) if on
        )
        self.two = cfg.modality == "both"
        self.pooling = "cls" if (main_is_audio and cfg.pooling == "flatten") else cfg.pooling
        # each modality: standardised per dimension with the training rows' statistics
        # (train/normalise.py; set by set_feature_stats, saved with the weights), then projected to
        # d
        if self.uses_text:
            self.text_proj = nn.Linear(dims.text_dim, d)
            self.cls_text = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.register_buffer("text_mean", torch.zeros(dims.text_dim))
            self.register_buffer("text_std", torch.ones(dims.text_dim))
        if self.uses_audio:
            self.audio_proj = nn.Linear(dims.audio_dim * cfg.audio_stride, d)
            self.cls_audio = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.register_buffer("audio_mean", torch.zeros(dims.audio_dim))
            self.register_buffer("audio_std", torch.ones(dims.audio_dim))
        h, f, p, pa = cfg.heads, cfg.ffn or 4 * d, cfg.dropout, cfg.attn_dropout
        # the text branch (the audio branch when modality == "audio"): the backbone the heads read
        self.main_layers = nn.ModuleList(
            SelfBlock(d, h, f, p, pa) for _ in range(cfg.text_branch_layers)
        )
        self.final_norm = nn.LayerNorm(d)
        # the second branch: text querying audio, or (no cross-attention) the audio itself
        if self.two:
            self.second_layers = nn.ModuleList(
                CrossModalLayer(d, h, f, p, pa)
                if cfg.cross_attention
                else SelfBlock(d, h, f, p, pa)
                for _ in range(cfg.cross_layers)
            )
            if cfg.bottleneck:
                self.bottleneck_tokens = nn.Parameter(
                    torch.randn(1, cfg.bottleneck_tokens, d) * 0.02
                )
                self.bottleneck_layers = nn.ModuleList(
                    BottleneckLayer(d, h, f, p, pa) for _ in range(cfg.bottleneck_layers)
                )
            self.second_norm = nn.LayerNorm(d)
            self.join = nn.Sequential(nn.Linear(2 * d, d), nn.GELU())
        if self.pooling == "flatten":
            self.flatten = nn.Linear((dims.text_tokens + 1) * d, d)
        self.seg_drop = Dropout(p)
        if cfg.bigru:
            self.gru = nn.GRU(
                d,
                cfg.gru_hidden,
                num_layers=cfg.gru_layers,
                batch_first=True,
                bidirectional=True,
                dropout=p if cfg.gru_layers > 1 else 0.0,
            )
            # the segment itself + its context: the GRU output at its position
            if dims.level == "segment":
                self.seg_proj = nn.Sequential(nn.Linear(d + 2 * cfg.gru_hidden, d), nn.GELU())
            else:
                self.call_proj = nn.Sequential(nn.Linear(4 * cfg.gru_hidden, d), nn.GELU())
        tasks = dims.tasks if cfg.mtl else {cfg.task: dims.tasks[cfg.task]}
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(
                    Dropout(p),
                    nn.Linear(d, cfg.head_hidden),
                    nn.GELU(),
                    Dropout(p),
                    nn.Linear(cfg.head_hidden, k),
                )
                for name, k in tasks.items()
            }
        )

    def set_feature_stats(self, modality: str, mean, std) -> None:
        """Per-dimension mean and std of ``modality``'s hidden states over the training rows."""
        getattr(self, f"{modality}_mean").copy_(torch.as_tensor(mean))
        getattr(self, f"{modality}_std").copy_(torch.as_tensor(std))

    # --------------------------------------------------------------- segments
    def _stream(self, x, lengths, modality):
        proj, cls = getattr(self, f"{modality}_proj"), getattr(self, f"cls_{modality}")
        mean, std = getattr(self, f"{modality}_mean"), getattr(self, f"{modality}_std")
        x = (x.to(cls.dtype) - mean.to(cls.dtype)) / std.to(cls.dtype)
        # stride frames per row: the attention over audio has stride× fewer keys
        if modality == "audio":
            x, lengths = stack_frames(x, lengths, self.cfg.audio_stride)
        x = proj(x)
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], 1), _valid(lengths, x.shape[1])

    def _pool(self, x, valid):
        if self.pooling == "flatten":
            return self.flatten((x * valid[..., None]).flatten(1))
        if self.pooling == "cls":
            return x[:, 0]
        return _masked_mean(x, valid)

    # Segments of a batch run in groups of similar text length, each padded only to its own longest
    # rows: padding rows cost as much as real ones and are then thrown away. Device type -> (most
    # groups, the fixed cost of one more group in padded row pairs): a group costs ~ its segments ×
    # T × (A + T) row pairs (attention dominates) plus that much overhead; the contiguous split of
    # the sorted order with the least total wins (exact: cheapest_split; steps 1-5 % faster than
    # equal-size parts, bench/fusion_speed.py --splits). CPU: measured at width 32 before heads were
    # padded for the kernel (a pair ~0.2 µs, a group's dispatch ~5 ms: 40 s segments gained 1.7x,
    # 1.5-1.6x after; ~1 s segments (the demo's) stay one batch, bench/fusion_speed.py
    # [--short-segments]); CUDA: launches ~2 ms vs ~2 ns a pair at 768, not measured yet
    # (bench/gpu/run.sh).
    LENGTH_GROUPS = {"cpu": (9, 30_000), "cuda": (4, 1_000_000)}

    def length_groups(self, audio_len, text_len, device_type: str) -> list[torch.Tensor] | None:
        """Index groups (runs of the segments sorted by the backbone's length) that minimise padded
        work + per-group overhead, or None when one padded batch is cheapest."""
        most, overhead = self.LENGTH_GROUPS.get(device_type, (1, 0))
        key = text_len if self.cfg.modality != "audio" else audio_len
        n = len(key)
        if most <= 1 or n < 2:
            return None
        order = torch.argsort(key, stable=True)
        at = order.cpu().numpy()
        stride = self.cfg.audio_stride
        lens = key.cpu().numpy()[at].astype(np.float64)  # ascending: a part's longest is its last
        if self.cfg.modality == "audio":
            lens = np.ceil(lens / stride)
        elif self.pooling == "flatten":  # text keeps every row: only audio is trimmed
            lens = np.full(n, lens[-1])
        other = (
            np.ceil(audio_len.cpu().numpy()[at] / stride)
            if self.cfg.modality == "both"
            else np.zeros(n)
        )
        # any split costs more than the whole batch
        if n * lens[-1] * (other.max() + lens[-1]) <= 2 * overhead:
            return None
        parts = cheapest_split(lens, other, overhead, most)
        return None if len(parts) == 1 else [order[a:b] for a, b in parts]

    def segment_vectors(self, audio, audio_len, text, text_len) -> torch.Tensor:
        """(S, d): one vector per segment. ``audio`` (S, A, Da) / ``text`` (S, T, Dt) in any float
        dtype (cast to the model's), rows past ``audio_len`` / ``text_len`` are masked; an unused
        modality may be None.

        The result does not depend on how the batch is padded or grouped (up to float rounding):
        padding rows are masked everywhere, so each group is trimmed to its own longest segment."""
        groups = self.length_groups(
            audio_len, text_len, (audio if text is None else text).device.type
        )
        if groups is None:
            return self._segment_vectors(audio, audio_len, text, text_len)
        out = None
        for idx in groups:
            a = t = None
            if audio is not None:
                a = audio[idx, : max(1, int(audio_len[idx].max()))]
            if text is not None:  # flatten pooling reads every text row (padding included, zeroed)
                t = (
                    text[idx]
                    if self.pooling == "flatten"
                    else text[idx, : max(1, int(text_len[idx].max()))]
                )
            v = self._segment_vectors(
                a,
                None if audio is None else audio_len[idx],
                t,
                None if text is None else text_len[idx],
            )
            if out is None:
                out = v.new_empty((len(audio_len if text_len is None else text_len), v.shape[1]))
            out[idx] = v
        return out

    def _segment_vectors(self, audio, audio_len, text, text_len) -> torch.Tensor:
        if self.cfg.modality == "audio":
            x, x_valid = self._stream(audio, audio_len, "audio")
        else:
            x, x_valid = self._stream(text, text_len, "text")
        y = y_valid = None
        if self.two:
            a, a_valid = self._stream(audio, audio_len, "audio")
            if self.cfg.cross_attention:
                # the cross-modal branch starts from the same projected text
                y, y_valid = x, x_valid
                for layer in self.second_layers:  # chained: each takes the previous output
                    y = layer(y, y_valid, a, a_valid)
            else:
                y, y_valid = a, a_valid
                for layer in self.second_layers:
                    y = layer(y, y_valid)
        for layer in self.main_layers:
            x = layer(x, x_valid)
        if not self.two:
            return self.seg_drop(self._pool(self.final_norm(x), x_valid))
        if self.cfg.bottleneck:
            b = self.bottleneck_tokens.expand(x.shape[0], -1, -1)
            n = len(self.bottleneck_layers)
            for i, layer in enumerate(self.bottleneck_layers):
                x, y, b = layer(x, x_valid, y, y_valid, b, last=i == n - 1)
            other = self.second_norm(b).mean(1)
        else:
            y = self.second_norm(y)
            other = y[:, 0] if self.cfg.pooling == "cls" else _masked_mean(y, y_valid)
        v = self._pool(self.final_norm(x), x_valid)
        return self.seg_drop(self.join(torch.cat([v, other], 1)))

    # ------------------------------------------------------------------ calls
    def call_vectors(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> torch.Tensor:
        """(B, d) from the (S, d) segment vectors of B calls (``seg_counts`` segments each, in
        order)."""
        counts = seg_counts.tolist()
        # (B, Smax, d)
        padded = nn.utils.rnn.pad_sequence(list(torch.split(seg, counts)), batch_first=True)
        mask = (torch.arange(padded.shape[1], device=seg.device)[None, :] < seg_counts[:, None])[
            ..., None
        ]
        if not self.cfg.bigru:
            return (padded * mask).sum(1) / seg_counts[:, None].to(padded.dtype)
        packed = pack_padded_sequence(
            padded, seg_counts.cpu(), batch_first=True, enforce_sorted=False
        )
        out, h_n = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        mean = (out * mask).sum(1) / seg_counts[:, None].to(out.dtype)
        # last layer's final states: forward direction after the last segment, backward after the
        # first. The mean of the segment vectors rides beside the GRU (a residual path): without it
        # the heads wait ~10 epochs for the GRU to pass anything on (docs/model.md,
        # bench/learning_robustness.py)
        seg_mean = (padded * mask).sum(1) / seg_counts[:, None].to(padded.dtype)
        return seg_mean + self.call_proj(torch.cat([mean, h_n[-2], h_n[-1]], dim=1))

    def context_vectors(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> torch.Tensor:
        """(S, d): each segment vector joined with the Bi-GRU's output at its place in its call
        (segment-level labels); without the Bi-GRU, the segment vectors alone (no context)."""
        if not self.cfg.bigru:
            return seg
        counts = seg_counts.tolist()
        # (B, Smax, d)
        padded = nn.utils.rnn.pad_sequence(list(torch.split(seg, counts)), batch_first=True)
        packed = pack_padded_sequence(
            padded, seg_counts.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        mask = torch.arange(padded.shape[1], device=seg.device)[None, :] < seg_counts[:, None]
        # mask keeps call order, segments in order
        return self.seg_proj(torch.cat([seg, out[mask]], dim=1))

    def forward(self, audio, audio_len, text, text_len, seg_counts) -> dict[str, torch.Tensor]:
        """{task: (B, k)} for call-level labels, {task: (S, k)} for segment-level ones (k = 1: a
        regression)."""
        seg = self.segment_vectors(audio, audio_len, text, text_len)
        if self.dims.level == "segment":
            x = self.context_vectors(seg, seg_counts)
        else:
            x = self.call_vectors(seg, seg_counts)
        return {name: head(x) for name, head in self.heads.items()}


def build_model(cfg: TrainConfig, dims: ModelDims, *, check_audio_path: bool = True) -> MSMTFN:
    """The model for ``cfg``; refuses settings that would silently drop audio
    (``check_audio_path=False`` only for the test that verifies that rule against real
    gradients)."""
    if not cfg.task:  # the dataset's main task
        cfg = cfg.with_(task=next(iter(dims.tasks)))
    if cfg.task not in dims.tasks:
        raise ConfigError(
            f"task {cfg.task!r} is not one of this dataset's tasks: {', '.join(dims.tasks)}"
        )
    problem = audio_path_problem(cfg) if check_audio_path else None
    if problem:
        raise ConfigError(f"--modality both: {problem}")
    return MSMTFN(cfg, dims)
