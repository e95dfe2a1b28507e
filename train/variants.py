"""The fusion network's parts, chosen by name (docs/model.md has the diagram).

A segment vector is made by three parts: the **second branch** beside the backbone (the text branch,
or the audio for ``--modality audio``), the **fusion** that lets the two branches exchange, and the
**pooling** that reads the backbone's rows into one vector. Each registry entry below declares what
its part needs (audio, every text row), which layer counts would cut audio off from the heads, and
what the run folder's name says when it is chosen. The modules themselves are in ``train/model.py``
(``SECOND_BRANCH_MODULES``, ``FUSION_MODULES``, ``POOLING_MODULES``), keyed by the same names.

Adding a variant: an entry here and its module there (and a test in tests/test_train_model.py).
This module does not import torch, so the command lines and run names read it at no cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from .config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Part:
    """One choice of a part. ``audio_path_problem(cfg)``: why this choice would keep audio away from
    the heads under ``cfg``'s layer counts, or None. ``run_name``: the word the run folder's name
    carries when this part is chosen ("" for the default)."""

    name: str
    summary: str
    reads_audio: bool = False
    needs_every_text_row: bool = False
    run_name: str = ""
    audio_path_problem: Callable[[ModelConfig], str | None] | None = None


def _no_cross_layers(c: ModelConfig) -> str | None:
    if c.cross_layers:
        return None
    return (
        "--cross-layers 0 leaves the cross-modal branch without cross-attention, so no audio "
        "enters it; use --cross-layers 1 or more, or --no-cross-attention (the second branch is "
        "then the audio)"
    )


def _no_bottleneck_layers(c: ModelConfig) -> str | None:
    if c.bottleneck_layers:
        return None
    return (
        "--bottleneck-layers 0 never updates the bottleneck tokens, so audio never reaches them; "
        "use --bottleneck-layers 1 or more, or --no-bottleneck (the two branches are then joined "
        "directly)"
    )


SECOND_BRANCHES = {
    p.name: p
    for p in (
        Part(
            "cross",
            "text queries the audio: cross-attention, self-attention, FFN ×cross_layers, chained",
            reads_audio=True,
            audio_path_problem=_no_cross_layers,
        ),
        Part(
            "audio",
            "the audio sequence itself: self-attention + FFN ×cross_layers (no text queries)",
            reads_audio=True,
            run_name="no-xattn",
        ),
        Part("none", "no second branch: the backbone alone (--modality text or audio)"),
    )
}

FUSIONS = {
    p.name: p
    for p in (
        Part(
            "bottleneck",
            "each branch attends over its tokens and shared bottleneck tokens (Nagrani et al.)",
            audio_path_problem=_no_bottleneck_layers,
        ),
        Part(
            "concat",
            "no exchange: the pooled second branch joins the pooled backbone",
            run_name="no-bottleneck",
        ),
        Part("none", "nothing to fuse (no second branch)"),
    )
}

POOLINGS = {
    p.name: p
    for p in (
        Part("mean", "the masked mean of the backbone's rows"),
        Part("cls", "the backbone's CLS row"),
        Part(
            "flatten",
            "every row side by side, then a Linear to d (the paper's; (T+1)·d → d)",
            needs_every_text_row=True,
        ),
    )
}


@dataclass(frozen=True)
class ModelConfig:
    """What the model is made of, and nothing of how it is trained (whisper's ``ModelDimensions``
    is the example); built from a :class:`TrainConfig` by :meth:`from_train`."""

    backbone: str = "text"  # text | audio: the branch the heads read
    second_branch: str = "cross"  # SECOND_BRANCHES
    fusion: str = "bottleneck"  # FUSIONS
    pooling: str = "mean"  # POOLINGS
    d_model: int = 0  # 0 = the backbone encoder's width
    heads: int = 12
    ffn: int = 0  # 0 = 4 × d_model
    dropout: float = 0.3
    attn_dropout: float = 0.0
    cross_layers: int = 4  # layers of the second branch
    text_branch_layers: int = 1  # layers of the backbone
    bottleneck_tokens: int = 4
    bottleneck_layers: int = 2
    audio_stride: int = 1
    bigru: bool = True
    gru_hidden: int = 128
    gru_layers: int = 2
    head_hidden: int = 512
    mtl: bool = True  # False: one head, for ``task``
    task: str = ""  # the selected task ("" until build_model names the dataset's first)

    def __post_init__(self):
        for value, table, what in (
            (self.second_branch, SECOND_BRANCHES, "second branch"),
            (self.fusion, FUSIONS, "fusion"),
            (self.pooling, POOLINGS, "pooling"),
            (self.backbone, {"text": 0, "audio": 0}, "backbone"),
        ):
            if value not in table:
                raise ConfigError(f"{what} {value!r}: valid are {', '.join(table)}")
        if self.backbone == "audio" and self.pooling == "flatten":
            raise ConfigError("pooling 'flatten' reads text rows; an audio backbone pools by cls")
        if (self.second_branch == "none") != (self.fusion == "none"):
            raise ConfigError(
                f"fusion {self.fusion!r} with second branch {self.second_branch!r}: a second "
                "branch needs a fusion, and fusion 'none' needs no second branch"
            )

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> ModelConfig:
        """The model part of ``cfg``: ``--modality``, ``--no-cross-attention`` and
        ``--no-bottleneck`` name the parts."""
        both = cfg.modality == "both"
        pooling = cfg.pooling
        if cfg.modality == "audio" and pooling == "flatten":
            pooling = "cls"  # flattening ~1000 audio rows into one Linear would be absurd
        names = {f.name for f in fields(cls)} & {f.name for f in fields(cfg)}
        return cls(
            backbone="audio" if cfg.modality == "audio" else "text",
            second_branch=("cross" if cfg.cross_attention else "audio") if both else "none",
            fusion=("bottleneck" if cfg.bottleneck else "concat") if both else "none",
            **{**{n: getattr(cfg, n) for n in names}, "pooling": pooling},
        )

    @property
    def parts(self) -> tuple[Part, Part, Part]:
        return (
            SECOND_BRANCHES[self.second_branch],
            FUSIONS[self.fusion],
            POOLINGS[self.pooling],
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        """The cached inputs the model reads, in the cache's order (audio, text)."""
        audio = self.backbone == "audio" or any(p.reads_audio for p in self.parts)
        text = self.backbone == "text"
        return tuple(m for m, on in (("audio", audio), ("text", text)) if on)

    @property
    def needs_every_text_row(self) -> bool:
        """True when batches must keep every text row (padding too), not cut to the longest."""
        return self.backbone == "text" and any(p.needs_every_text_row for p in self.parts)

    def audio_path_problem(self) -> str | None:
        """Why audio would never reach the heads, or None (tests/test_train_model.py checks this
        rule against real gradients over every layer count a user can type)."""
        for part in self.parts:
            problem = part.audio_path_problem and part.audio_path_problem(self)
            if problem:
                return problem
        return None

    def with_(self, **kw) -> ModelConfig:
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **kw})


def run_name_parts(cfg: TrainConfig) -> list[str]:
    """The words a run folder's name carries for ``cfg``'s model: the modality, then each chosen
    part's word and the switched-off call-level parts."""
    model = ModelConfig.from_train(cfg)
    words = [cfg.modality, "no-mtl" if not cfg.mtl else "", "no-bigru" if not cfg.bigru else ""]
    words += [p.run_name for p in model.parts]
    return [w for w in words if w]
