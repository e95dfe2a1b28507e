"""Tiny encoders with random weights, saved like real checkpoints.

They exist so that tests, the demo and CPU benchmarks run the exact loading path of real models
(``from_pretrained`` on a folder with config, weights, feature extractor / tokenizer) without any
download. Their outputs are meaningless: a run on them is a smoke run, not the paper's models.
``size="base"`` builds HuBERT-base / BERT-base shapes (random weights cost the same FLOPs as the
real ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    # Every CJK unified ideograph is its own token for BERT-Chinese tokenizers; add ASCII for mixed
    # text.
    ascii_tokens = [chr(c) for c in range(33, 127)]
    cjk = [chr(c) for c in range(0x4E00, 0x9FA6)]
    return SPECIAL + ascii_tokens + cjk


def build_tiny_audio_encoder(
    folder: str | Path, *, norm: str = "group", size: str = "tiny", seed: int = 0
) -> Path:
    """A HuBERT-style encoder. ``norm="group"`` is HuBERT-base's front end (GroupNorm over time in
    the first conv: padding changes the outputs); ``norm="layer"`` is the large models' (per-frame
    LayerNorm)."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    folder = Path(folder)
    if norm not in ("group", "layer"):
        raise ValueError(f"norm must be group or layer, not {norm!r}")
    torch.manual_seed(seed)
    if size == "base":
        cfg = HubertConfig(
            feat_extract_norm=norm,
            do_stable_layer_norm=(norm == "layer"),
            conv_bias=(norm == "layer"),
        )
    else:
        cfg = HubertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            conv_dim=(16,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2),
            conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            feat_extract_norm=norm,
            do_stable_layer_norm=(norm == "layer"),
            conv_bias=(norm == "layer"),
        )
    model = HubertModel(cfg).eval()
    model.save_pretrained(folder)
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=(norm == "layer"),
    )
    fe.save_pretrained(folder)
    return folder


def build_tiny_text_encoder(folder: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """A BERT-style encoder with a character vocabulary, like hfl/chinese-roberta-wwm-ext (a BERT
    model)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    if size == "base":
        cfg = BertConfig(vocab_size=len(vocab))
    else:
        cfg = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=512,
        )
    BertModel(cfg).eval().save_pretrained(folder)
    tok = BertTokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, tokenize_chinese_chars=True
    )
    tok.save_pretrained(folder)
    return folder


def build_tiny_encoders(
    folder: str | Path,
    *,
    norm: str = "group",
    size: str = "tiny",
    seed: int = 0,
) -> tuple[Path, Path]:
    """Build (or reuse) both encoders under ``folder``; returns (audio_dir, text_dir)."""
    folder = Path(folder)
    audio, text = folder / f"audio-{size}-{norm}", folder / f"text-{size}"
    if not (audio / "config.json").is_file():
        build_tiny_audio_encoder(audio, norm=norm, size=size, seed=seed)
    if not (text / "config.json").is_file():
        build_tiny_text_encoder(text, size=size, seed=seed)
    return audio, text
