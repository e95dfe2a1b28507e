"""The MSMT-FN fusion network on cached encoder hidden states (diagram and every choice:
docs/model.md).

Per segment (all segments of a batch at once), with text as the backbone:

    text (T×Dt) ─proj─► t0 = [CLS_t; text] ─► TEXT BRANCH: self-attention ×text_branch_layers ──────┐
                                          └─► CROSS-MODAL BRANCH: ×cross_layers, CHAINED:          │
    audio (A×Da) ─proj─► [CLS_a; audio] ──────► cross-attention (queries = branch, K/V = audio),    │
                                                self-attention, FFN ────────────────────────────────┤
         BOTTLENECK FUSION ×bottleneck_layers (Nagrani et al. 2021): each branch attends over        │
         [its tokens; B] (B = bottleneck_tokens learned tokens); B ← mean of the two updates of B ◄──┘
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

The parts, chosen by name (train/variants.py; the ``TrainConfig`` flags name them; each "both"
variant still reads audio):
* second branch ``cross`` (default) | ``audio`` (``--no-cross-attention``: the audio sequence itself,
  self-attention + FFN ×cross_layers, no text queries) | ``none`` (``--modality text`` or ``audio``:
  the backbone alone; ``audio`` makes [CLS_a; audio] the backbone and ``flatten`` pooling CLS);
* fusion ``bottleneck`` (default) | ``concat`` (``--no-bottleneck``: the pooled second branch, masked
  mean or CLS under ``--pooling cls``, joins the pooled backbone);
* pooling ``mean`` (default) | ``cls`` | ``flatten`` (the paper's; needs every text row).
``bigru=False`` mean-pools the segment vectors over the call; ``mtl=False`` keeps one head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import ConfigError, TrainConfig
from .variants import ModelConfig


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

    # Heads narrower than this are computed zero-padded to it (the same result): torch's CPU flash
    # kernel is slower on heads of 4-12 than of 16 (docs/benchmarks.md, --head-width); CUDA takes any
    # multiple of 8.
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
    """``nn.Dropout`` whose CPU mask is drawn as ``uniform < 1 - p``: the same Bernoulli(1 - p) mask
    and 1 / (1 - p) scale as torch's CPU ``bernoulli_``, which draws one number at a time and is
    slower (docs/benchmarks.md, --dropout). On CUDA, and in eval mode, torch's own."""

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


def _layer_args(c: ModelConfig, d: int) -> tuple:
    """(width, heads, FFN width, dropout, attention dropout) of every transformer layer."""
    return d, c.heads, c.ffn or 4 * d, c.dropout, c.attn_dropout


# ------------------------------------------------------- the parts, by their train/variants.py names
class CrossModalBranch(nn.ModuleList):
    """ "cross": starts from the projected text, each layer's queries attend over the audio."""

    def __init__(self, c: ModelConfig, d: int):
        super().__init__(CrossModalLayer(*_layer_args(c, d)) for _ in range(c.cross_layers))

    def forward(self, x, x_valid, audio, audio_valid):
        y = x
        for layer in self:  # chained: each takes the previous output
            y = layer(y, x_valid, audio, audio_valid)
        return y, x_valid


class AudioBranch(nn.ModuleList):
    """ "audio": the audio sequence itself, self-attention + FFN per layer."""

    def __init__(self, c: ModelConfig, d: int):
        super().__init__(SelfBlock(*_layer_args(c, d)) for _ in range(c.cross_layers))

    def forward(self, x, x_valid, audio, audio_valid):
        y = audio
        for layer in self:
            y = layer(y, audio_valid)
        return y, audio_valid


class BottleneckFusion(nn.Module):
    """ "bottleneck": the branches exchange through learned tokens B; the final B is read."""

    def __init__(self, c: ModelConfig, d: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, c.bottleneck_tokens, d) * 0.02)
        self.layers = nn.ModuleList(
            BottleneckLayer(*_layer_args(c, d)) for _ in range(c.bottleneck_layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x, x_valid, y, y_valid):
        b = self.tokens.expand(x.shape[0], -1, -1)
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            x, y, b = layer(x, x_valid, y, y_valid, b, last=i == n - 1)
        return x, self.norm(b).mean(1)


class ConcatFusion(nn.Module):
    """ "concat": no exchange; the second branch is pooled (CLS under --pooling cls, else mean)."""

    def __init__(self, c: ModelConfig, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.cls_readout = c.pooling == "cls"

    def forward(self, x, x_valid, y, y_valid):
        y = self.norm(y)
        return x, y[:, 0] if self.cls_readout else _masked_mean(y, y_valid)


class MeanPool(nn.Module):
    def __init__(self, c: ModelConfig, d: int, dims: ModelDims):
        super().__init__()

    def forward(self, x, valid):
        return _masked_mean(x, valid)


class ClsPool(MeanPool):
    def forward(self, x, valid):
        return x[:, 0]


class FlattenPool(nn.Linear):
    """Every row (padding zeroed) side by side, then one Linear: (T + 1)·d → d."""

    def __init__(self, c: ModelConfig, d: int, dims: ModelDims):
        super().__init__((dims.text_tokens + 1) * d, d)

    def forward(self, x, valid):
        return super().forward((x * valid[..., None]).flatten(1))


SECOND_BRANCH_MODULES = {"cross": CrossModalBranch, "audio": AudioBranch}
FUSION_MODULES = {"bottleneck": BottleneckFusion, "concat": ConcatFusion}
POOLING_MODULES = {"mean": MeanPool, "cls": ClsPool, "flatten": FlattenPool}


def _model_config(cfg: TrainConfig | ModelConfig) -> ModelConfig:
    return cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_train(cfg)


def audio_path_problem(cfg: TrainConfig | ModelConfig) -> str | None:
    """Why this configuration would never let audio reach the heads, or None when it does (each
    part's rule: train/variants.py)."""
    return _model_config(cfg).audio_path_problem()


def _pad_calls(seg: torch.Tensor, seg_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (S, d) segment vectors of B calls as (B, Smax, d), and the (B, Smax) real-segment mask."""
    padded = nn.utils.rnn.pad_sequence(
        list(torch.split(seg, seg_counts.tolist())), batch_first=True
    )
    mask = torch.arange(padded.shape[1], device=seg.device)[None, :] < seg_counts[:, None]
    return padded, mask


class MSMTFN(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: ModelDims):
        super().__init__()
        self.cfg, self.dims = cfg, dims
        d = cfg.d_model or (dims.audio_dim if cfg.backbone == "audio" else dims.text_dim)
        self.d = d
        self.modalities = cfg.modalities
        self.needs_every_text_row = cfg.needs_every_text_row
        # each modality: standardised per dimension with the training rows' statistics
        # (train/normalise.py; set by set_feature_stats, saved with the weights), projected to d
        for modality, width in (("text", dims.text_dim), ("audio", dims.audio_dim)):
            if modality in self.modalities:
                stride = cfg.audio_stride if modality == "audio" else 1
                setattr(self, f"{modality}_proj", nn.Linear(width * stride, d))
                setattr(self, f"cls_{modality}", nn.Parameter(torch.randn(1, 1, d) * 0.02))
                self.register_buffer(f"{modality}_mean", torch.zeros(width))
                self.register_buffer(f"{modality}_std", torch.ones(width))
        # the backbone (the text branch, or the audio): what the heads read
        self.main_layers = nn.ModuleList(
            SelfBlock(*_layer_args(cfg, d)) for _ in range(cfg.text_branch_layers)
        )
        self.final_norm = nn.LayerNorm(d)
        self.second_branch = self.fusion = None
        if cfg.second_branch != "none":
            self.second_branch = SECOND_BRANCH_MODULES[cfg.second_branch](cfg, d)
            self.fusion = FUSION_MODULES[cfg.fusion](cfg, d)
            self.join = nn.Sequential(nn.Linear(2 * d, d), nn.GELU())
        self.pool = POOLING_MODULES[cfg.pooling](cfg, d, dims)
        self.seg_drop = Dropout(cfg.dropout)
        if cfg.bigru:
            self._build_gru(cfg, d, dims)
        tasks = dims.tasks if cfg.mtl else {cfg.task: dims.tasks[cfg.task]}
        self.heads = nn.ModuleDict({name: self._head(cfg, d, k) for name, k in tasks.items()})

    def _build_gru(self, cfg: ModelConfig, d: int, dims: ModelDims) -> None:
        self.gru = nn.GRU(
            d,
            cfg.gru_hidden,
            num_layers=cfg.gru_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,
        )
        if dims.level == "segment":  # the segment itself + its context: the GRU output there
            self.seg_proj = nn.Sequential(nn.Linear(d + 2 * cfg.gru_hidden, d), nn.GELU())
        else:
            self.call_proj = nn.Sequential(nn.Linear(4 * cfg.gru_hidden, d), nn.GELU())

    @staticmethod
    def _head(cfg: ModelConfig, d: int, k: int) -> nn.Sequential:
        p = cfg.dropout
        return nn.Sequential(
            Dropout(p),
            nn.Linear(d, cfg.head_hidden),
            nn.GELU(),
            Dropout(p),
            nn.Linear(cfg.head_hidden, k),
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
        if modality == "audio":  # stride frames per row: stride× fewer keys over audio
            x, lengths = stack_frames(x, lengths, self.cfg.audio_stride)
        x = proj(x)
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], 1), _valid(lengths, x.shape[1])

    # Segments run in groups of similar length, each padded to its own longest rows (padding rows
    # cost as much as real ones). Device type -> (most groups, the fixed cost of one more group in
    # padded row pairs); measured in docs/benchmarks.md ("Length groups", --splits). On an H200 one
    # padded batch was fastest (47 ms a step; 70 ms in 2 groups, 126 ms in 4: part train_groups).
    LENGTH_GROUPS = {"cpu": (9, 30_000), "cuda": (1, 0)}

    def length_groups(self, audio_len, text_len, device_type: str) -> list[torch.Tensor] | None:
        """Index groups (runs of the segments sorted by the backbone's length) that minimise padded
        work + per-group overhead, or None when one padded batch is cheapest."""
        most, overhead = self.LENGTH_GROUPS.get(device_type, (1, 0))
        audio_backbone = self.cfg.backbone == "audio"
        key = audio_len if audio_backbone else text_len
        n = len(key)
        if most <= 1 or n < 2:
            return None
        order = torch.argsort(key, stable=True)
        at = order.cpu().numpy()
        stride = self.cfg.audio_stride
        lens = key.cpu().numpy()[at].astype(np.float64)  # ascending: a part's longest is its last
        if audio_backbone:
            lens = np.ceil(lens / stride)
        elif self.needs_every_text_row:  # text keeps every row: only audio is trimmed
            lens = np.full(n, lens[-1])
        reads_both = len(self.modalities) == 2
        other = np.ceil(audio_len.cpu().numpy()[at] / stride) if reads_both else np.zeros(n)
        if n * lens[-1] * (other.max() + lens[-1]) <= 2 * overhead:  # no split can pay
            return None
        parts = cheapest_split(lens, other, overhead, most)
        return None if len(parts) == 1 else [order[a:b] for a, b in parts]

    def segment_vectors(self, audio, audio_len, text, text_len) -> torch.Tensor:
        """(S, d): one vector per segment. ``audio`` (S, A, Da) / ``text`` (S, T, Dt) in any float
        dtype (cast to the model's), rows past ``audio_len`` / ``text_len`` are masked; an unused
        modality may be None.

        The result does not depend on how the batch is padded or grouped (up to float rounding):
        padding rows are masked everywhere, so each group is trimmed to its own longest segment."""
        device = (audio if text is None else text).device.type
        groups = self.length_groups(audio_len, text_len, device)
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
                    if self.needs_every_text_row
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
        if self.cfg.backbone == "audio":
            x, x_valid = self._stream(audio, audio_len, "audio")
        else:
            x, x_valid = self._stream(text, text_len, "text")
        y = y_valid = None
        if self.second_branch is not None:
            a, a_valid = self._stream(audio, audio_len, "audio")
            y, y_valid = self.second_branch(x, x_valid, a, a_valid)
        for layer in self.main_layers:
            x = layer(x, x_valid)
        if self.fusion is None:
            return self.seg_drop(self.pool(self.final_norm(x), x_valid))
        x, other = self.fusion(x, x_valid, y, y_valid)
        v = self.pool(self.final_norm(x), x_valid)
        return self.seg_drop(self.join(torch.cat([v, other], 1)))

    # ------------------------------------------------------------------ calls
    def _gru(self, padded: torch.Tensor, seg_counts: torch.Tensor):
        """The Bi-GRU over each call's real segments only (packed): outputs (B, Smax, 2h), h_n."""
        packed = pack_padded_sequence(
            padded, seg_counts.cpu(), batch_first=True, enforce_sorted=False
        )
        out, h_n = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        return out, h_n

    def call_vectors(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> torch.Tensor:
        """(B, d) from the (S, d) segment vectors of B calls (``seg_counts`` segments each, in
        order)."""
        padded, mask = _pad_calls(seg, seg_counts)
        seg_mean = _masked_mean(padded, mask)
        if not self.cfg.bigru:
            return seg_mean
        out, h_n = self._gru(padded, seg_counts)
        # last layer's final states: forward direction after the last segment, backward after the
        # first. The segment mean rides beside the GRU (a residual path): without it the heads wait
        # ~10 epochs for the GRU to pass anything on (docs/model.md)
        return seg_mean + self.call_proj(
            torch.cat([_masked_mean(out, mask), h_n[-2], h_n[-1]], dim=1)
        )

    def context_vectors(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> torch.Tensor:
        """(S, d): each segment vector joined with the Bi-GRU's output at its place in its call
        (segment-level labels); without the Bi-GRU, the segment vectors alone (no context)."""
        if not self.cfg.bigru:
            return seg
        padded, mask = _pad_calls(seg, seg_counts)
        out, _ = self._gru(padded, seg_counts)
        # out[mask] keeps call order, segments in order
        return self.seg_proj(torch.cat([seg, out[mask]], dim=1))

    def forward(self, audio, audio_len, text, text_len, seg_counts) -> dict[str, torch.Tensor]:
        """{task: (B, k)} for call-level labels, {task: (S, k)} for segment-level ones (k = 1: a
        regression)."""
        seg = self.segment_vectors(audio, audio_len, text, text_len)
        return self.outputs_of(seg, seg_counts)

    def outputs_of(self, seg: torch.Tensor, seg_counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads' outputs from the (S, d) segment vectors of the calls (``forward`` after
        :meth:`segment_vectors`; msmtfn-predict runs the two apart on long calls)."""
        if self.dims.level == "segment":
            x = self.context_vectors(seg, seg_counts)
        else:
            x = self.call_vectors(seg, seg_counts)
        return {name: head(x) for name, head in self.heads.items()}


def build_model(
    cfg: TrainConfig | ModelConfig, dims: ModelDims, *, check_audio_path: bool = True
) -> MSMTFN:
    """The model for ``cfg``; refuses settings that would silently drop audio
    (``check_audio_path=False`` only for the test that verifies that rule against real
    gradients)."""
    model_cfg = _model_config(cfg)
    if not model_cfg.task:  # the dataset's main task
        model_cfg = model_cfg.with_(task=next(iter(dims.tasks)))
    if model_cfg.task not in dims.tasks:
        raise ConfigError(
            f"task {model_cfg.task!r} is not one of this dataset's tasks: {', '.join(dims.tasks)}"
        )
    problem = model_cfg.audio_path_problem() if check_audio_path else None
    if problem:
        raise ConfigError(f"--modality both: {problem}")
    return MSMTFN(model_cfg, dims)
