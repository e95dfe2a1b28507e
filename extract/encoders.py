"""Frozen encoders: a HuBERT-family audio model and a BERT/RoBERTa-family text model, loaded with
``transformers`` Auto classes from a hub id or a local folder.

Batching must not change the numbers. Text models mask padding exactly. HuBERT-base's front end does
not: its first conv is followed by a GroupNorm over *time*, so zero padding shifts every frame of a
padded segment. But that GroupNorm is the only place where time steps mix in the front end (the
convs are unpadded, so a valid frame only ever sees valid samples). ``AudioEncoder.encode``
therefore runs the whole padded batch through the convs and takes that one GroupNorm's statistics
over each segment's valid frames only ("masked group norm"), then runs projection + transformer with
an attention mask, which HF wav2vec2/HuBERT encoders honour exactly (padded frames are zeroed before
the positional conv). Layer-norm front ends (large models) normalise per frame and are padding-safe
as they are. Unknown front ends fall back to running equal-length groups separately.
``tests/test_extract.py`` proves stored rows == each segment through the plain HF model alone, for
both norms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cache_settings import MAX_TEXT_TOKENS, CacheSettings, EncoderFacts, resolve_dtype
from pipeline.fingerprint import hash_state_dict

from .audio import AudioPolicy

# the path checks live in the light extract/paths.py (the CLI runs them before torch is imported)
from .paths import (  # noqa: F401
    ModelFolderError,
    check_model_folders,
    hint,
    looks_like_path,
    require_model_folder,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _Captured(Exception):
    """Raised from a forward hook to stop the encoder once the wanted layer has run (saves the
    rest)."""

    def __init__(self, value):
        self.value = value


def _select_layer(layers, run, layer: int):
    """Run ``run()`` and return the hidden states HF would list as ``hidden_states[layer]``.

    0 is the input to the first block, i the output of block i, -1 (or len) the model's
    ``last_hidden_state`` (for pre-LN models that includes the final LayerNorm, which transformers 5
    leaves out of hidden_states[-1]).
    """
    n = len(layers)
    idx = layer + n + 1 if layer < 0 else layer
    if not 0 <= idx <= n:
        raise ValueError(f"layer {layer} out of range for a {n}-layer encoder")
    if idx == n:
        return run()

    def grab_in(_m, args, kwargs=None):
        raise _Captured(args[0] if args else kwargs["hidden_states"])

    def grab_out(_m, _args, out):
        raise _Captured(out[0] if isinstance(out, tuple) else out)

    handle = (
        layers[0].register_forward_pre_hook(grab_in, with_kwargs=True)
        if idx == 0
        else layers[idx - 1].register_forward_hook(grab_out)
    )
    try:
        run()
    except _Captured as c:
        return c.value
    finally:
        handle.remove()
    raise RuntimeError("layer hook did not fire")


class EncoderLoadError(ValueError):
    """An encoder that cannot be loaded; one line saying why and what to pass instead."""


def _needs(auto_cls) -> str:
    return {"AutoTokenizer": "tokenizer", "AutoFeatureExtractor": "feature extractor"}.get(
        auto_cls.__name__, ""
    )


def hub_reachable(timeout: float = 5.0) -> bool:
    """One request to the hub (no retries): transformers would otherwise retry for a minute without
    a network."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def _load(
    auto_cls,
    model_id: str,
    revision: str | None,
    trust_remote_code: bool,
    option: str = "--audio-model",
):
    """``from_pretrained`` of a folder or a hub id, with one-line errors for a missing folder and an
    unreachable hub. A hub id already in the local cache loads without any network."""
    from huggingface_hub import constants

    path = Path(model_id).expanduser()
    if path.is_dir() or looks_like_path(model_id):
        require_model_folder(model_id, option, needs=_needs(auto_cls))
        try:
            return auto_cls.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:  # ValueError: transformers' tokenizer messages
            raise EncoderLoadError(
                f"{option} {model_id}: not a usable model folder ({_first_line(e)}); save the "
                "model there with save_pretrained, or download it with `hf download ID "
                "--local-dir DIR`"
            ) from None
    kw = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        return auto_cls.from_pretrained(model_id, local_files_only=True, **kw)
    except OSError:
        pass  # not in the local cache (or not complete there): download
    offline = constants.HF_HUB_OFFLINE
    if offline or not hub_reachable():
        why = (
            "downloads are off (HF_HUB_OFFLINE=1)"
            if offline
            else f"{constants.ENDPOINT} cannot be reached"
        )
        raise EncoderLoadError(
            f"{option} {model_id}: not in the local Hugging Face cache and {why}; download it "
            f"where there is internet (`hf download {model_id} --local-dir DIR`), copy DIR here "
            f"and pass {option} DIR"
        )
    try:
        return auto_cls.from_pretrained(model_id, **kw)
    except OSError as e:
        raise EncoderLoadError(
            f"{option} {model_id}: cannot load it from the hub ({_first_line(e)}); check the id "
            f"(and {option.replace('model', 'revision')}), or {hint(option)}"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_frozen(
    spec, device: torch.device, dtype: torch.dtype, trust_remote_code: bool, option: str
):
    """(frozen eval model on the device, hash of its weights as loaded — the encoder's identity)."""
    from transformers import AutoModel

    model = _load(AutoModel, spec.model, spec.revision, trust_remote_code, option)
    weights_hash = hash_state_dict(model.state_dict())
    return model.eval().requires_grad_(False).to(device, dtype), weights_hash


class Tokenize:
    """Token ids (special tokens included) cut to ``max_tokens``, and whether the text was cut.
    Picklable, so loader workers tokenise."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, text: str) -> tuple[list[int], bool]:
        enc = self.tokenizer(
            text, truncation=True, max_length=self.max_tokens, return_overflowing_tokens=True
        )
        ids = enc["input_ids"]
        if ids and isinstance(ids[0], list):
            return list(ids[0]), len(ids) > 1
        return list(ids), False


@dataclass(frozen=True)
class EncoderSpec:
    model: str
    revision: str | None = None
    layer: int = -1


class AudioEncoder:
    def __init__(
        self,
        spec: EncoderSpec,
        device: str = "cpu",
        dtype: str = "float32",
        pool: int = 2,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoFeatureExtractor

        self.spec, self.device, self.pool = spec, torch.device(device), pool
        self.dtype = DTYPES[dtype]
        self.feature_extractor = _load(
            AutoFeatureExtractor, spec.model, spec.revision, trust_remote_code, "--audio-model"
        )
        self.model, self.weights_hash = _load_frozen(
            spec, self.device, self.dtype, trust_remote_code, "--audio-model"
        )
        cfg = self.model.config
        self.hidden_size = int(cfg.hidden_size)
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        self.group_norm = getattr(cfg, "feat_extract_norm", "layer") == "group"
        # wav2vec2/HuBERT/WavLM/data2vec-audio expose these three parts; other models take the plain
        # path
        self.split = all(
            hasattr(self.model, a) for a in ("feature_extractor", "feature_projection", "encoder")
        )
        self.layers = self.model.encoder.layers if hasattr(self.model, "encoder") else None
        self.masked_group_norm = self.split and self.group_norm and self._front_end_is_standard()
        if self.layers is None and spec.layer != -1:
            raise ValueError(f"{spec.model}: cannot select layer {spec.layer} (no encoder.layers)")

    def _front_end_is_standard(self) -> bool:
        """GroupNorm in the first conv layer only, plain unpadded convs after it
        (wav2vec2/HuBERT-base)."""
        layers = getattr(self.model.feature_extractor, "conv_layers", None)
        if not layers:
            return False
        first = layers[0]
        if not isinstance(getattr(first, "layer_norm", None), torch.nn.GroupNorm):
            return False
        convs_ok = all(
            isinstance(getattr(lay, "conv", None), torch.nn.Conv1d)
            and lay.conv.padding in ((0,), 0)
            for lay in layers
        )
        no_other_norm = all(not hasattr(lay, "layer_norm") for lay in layers[1:])
        return convs_ok and no_other_norm

    def frames(self, samples) -> np.ndarray:
        """Encoder frames for inputs of ``samples`` samples (before pooling)."""
        t = torch.as_tensor(np.atleast_1d(samples), dtype=torch.long)
        return (
            np.asarray(self.model._get_feat_extract_output_lengths(t)).astype(np.int64).clip(min=0)
        )

    def min_samples(self) -> int:
        """Fewest samples that give one stored (pooled) frame."""
        lo, hi = 1, 1 << 16
        while lo < hi:
            mid = (lo + hi) // 2
            if self.frames(mid)[0] >= self.pool:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        """Per-segment normalisation by the model's own feature extractor (runs in loader workers).

        The audio has already been brought to the policy's input rate; under ``paper-8k`` that is on
        purpose not the extractor's rate, so we pass the extractor its own rate to get the same
        normalisation.
        """
        out = self.feature_extractor(wave, sampling_rate=self.sampling_rate, return_tensors="np")
        return np.asarray(out["input_values"][0], dtype=np.float32)

    @torch.inference_mode()
    def encode(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, np.ndarray]:
        """Encode preprocessed 1-D waves (CPU tensors, pinned when on GPU). Returns (hidden (B, F,
        H) on the device in the compute dtype, pooled valid lengths (B,))."""
        n = np.array([len(w) for w in waves])
        frames = self.frames(n)
        if self.split:
            hidden = self._encode_split(waves, n, frames)
        else:
            hidden = self._encode_plain(waves, n, frames)
        p = self.pool
        if p > 1:
            fp = hidden.shape[1] // p
            hidden = (
                hidden[:, : fp * p].reshape(hidden.shape[0], fp, p, hidden.shape[2]).mean(dim=2)
            )
        return hidden, (frames // p).astype(np.int32)

    def _groups(self, n: np.ndarray) -> list[list[int]]:
        if not self.group_norm:
            return [list(range(len(n)))]
        groups: dict[int, list[int]] = {}
        for i, length in enumerate(n):
            groups.setdefault(int(length), []).append(i)
        return list(groups.values())

    def _stack(self, waves, idx: list[int], length: int) -> torch.Tensor:
        x = torch.zeros(
            len(idx), length, dtype=torch.float32, pin_memory=self.device.type == "cuda"
        )
        for j, i in enumerate(idx):
            x[j, : len(waves[i])] = waves[i]
        return x.to(self.device, non_blocking=True).to(self.dtype)

    def _encode_split(self, waves, n, frames) -> torch.Tensor:
        m = self.model
        fmax = int(frames.max())
        if self.masked_group_norm:
            feats = self._masked_front_end(
                self._stack(waves, list(range(len(waves))), int(n.max())), n
            )
            feats = feats.transpose(1, 2)[:, :fmax]
        else:
            feats = None
            for idx in self._groups(n):
                f = m.feature_extractor(self._stack(waves, idx, int(n[idx].max()))).transpose(1, 2)
                if feats is None:
                    feats = torch.zeros(
                        len(waves), fmax, f.shape[2], device=self.device, dtype=f.dtype
                    )
                for j, i in enumerate(idx):
                    feats[i, : frames[i]] = f[j, : frames[i]]
        mask = (
            torch.arange(fmax, device=self.device)[None, :]
            < torch.as_tensor(frames, device=self.device)[:, None]
        )
        hs = m.feature_projection(feats)
        hs = hs[0] if isinstance(hs, tuple) else hs  # wav2vec2 returns (hidden, normed features)

        def run():
            return m.encoder(hs, attention_mask=mask).last_hidden_state

        return _select_layer(self.layers, run, self.spec.layer)

    def _masked_front_end(self, x: torch.Tensor, n: np.ndarray) -> torch.Tensor:
        """The conv feature encoder on a zero-padded batch, with the first layer's GroupNorm
        statistics taken over each segment's valid frames only: the same numbers as each segment
        alone."""
        layers = self.model.feature_extractor.conv_layers
        first = layers[0]
        h = first.conv(x[:, None, :])
        t_valid = (
            torch.as_tensor(n, device=h.device) - first.conv.kernel_size[0]
        ) // first.conv.stride[0] + 1
        gn: torch.nn.GroupNorm = first.layer_norm
        b, c, t = h.shape
        g = gn.num_groups
        mask = (torch.arange(t, device=h.device)[None, :] < t_valid[:, None]).view(b, 1, 1, t)
        hg = h.float().view(b, g, c // g, t)
        count = (t_valid.view(b, 1, 1, 1) * (c // g)).float()
        mean = (hg * mask).sum(dim=(2, 3), keepdim=True) / count
        var = (((hg - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
        hn = ((hg - mean) * torch.rsqrt(var + gn.eps)).view(b, c, t)
        hn = hn * gn.weight.float()[None, :, None] + gn.bias.float()[None, :, None]
        h = first.activation(hn.to(h.dtype))
        for layer in layers[1:]:
            h = layer(h)
        return h

    def _encode_plain(self, waves, n, frames) -> torch.Tensor:
        fmax = int(frames.max())
        out = None
        for idx in [[i] for i in range(len(waves))] if self.group_norm else self._groups(n):
            x = self._stack(waves, idx, int(n[idx].max()))

            def run():
                return self.model(x).last_hidden_state  # noqa: B023 (called at once)

            h = run() if self.layers is None else _select_layer(self.layers, run, self.spec.layer)
            if out is None:
                out = torch.zeros(len(waves), fmax, h.shape[2], device=self.device, dtype=h.dtype)
            for j, i in enumerate(idx):
                out[i, : frames[i]] = h[j, : frames[i]]
        return out


def tokenizer_hash(tokenizer) -> str:
    """The hash of a tokenizer's vocabulary and settings that a cache records (``text.tokenizer``)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_tokenizer(model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """A text encoder's tokenizer alone (a folder or a hub id), as :class:`TextEncoder` loads it."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, model_id, revision, trust_remote_code, "--text-model")


class TextEncoder:
    def __init__(
        self,
        spec: EncoderSpec,
        device: str = "cpu",
        dtype: str = "float32",
        max_tokens: int = MAX_TEXT_TOKENS,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoTokenizer

        self.spec, self.device, self.max_tokens = spec, torch.device(device), max_tokens
        self.dtype = DTYPES[dtype]
        self.tokenizer = _load(
            AutoTokenizer, spec.model, spec.revision, trust_remote_code, "--text-model"
        )
        self.model, self.weights_hash = _load_frozen(
            spec, self.device, self.dtype, trust_remote_code, "--text-model"
        )
        self.tokenize = Tokenize(self.tokenizer, max_tokens)
        self.hidden_size = int(self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and max_tokens > limit:
            raise ValueError(
                f"--max-text-tokens {max_tokens} exceeds {spec.model}'s {limit} positions"
            )
        self.tokenizer_hash = self._tokenizer_hash()

    def _tokenizer_hash(self) -> str:
        return tokenizer_hash(self.tokenizer)

    @torch.inference_mode()
    def encode(self, ids: list[list[int]]) -> tuple[torch.Tensor, np.ndarray]:
        lengths = np.array([len(x) for x in ids], dtype=np.int32)
        pad = self.tokenizer.pad_token_id or 0
        t = torch.full((len(ids), int(lengths.max())), pad, dtype=torch.long)
        for i, x in enumerate(ids):
            t[i, : len(x)] = torch.as_tensor(x)
        mask = (torch.arange(t.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]).long()
        t, mask = t.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)

        def run():
            return self.model(input_ids=t, attention_mask=mask).last_hidden_state

        if layers is None:
            if self.spec.layer != -1:
                raise ValueError(f"{self.spec.model}: cannot select layer {self.spec.layer}")
            return run(), lengths
        return _select_layer(layers, run, self.spec.layer), lengths


@dataclass
class Encoders:
    """Both encoders loaded for one :class:`CacheSettings`, with what they imply for the audio front
    end."""

    audio: AudioEncoder
    text: TextEncoder
    policy: AudioPolicy
    max_samples: int  # input samples of a segment of max_seconds
    facts: EncoderFacts  # recorded next to the settings (weights, tokenizer, rates, frames, dtype)


def load_encoders(
    cache: CacheSettings, device: str, *, trust_remote_code: bool = False
) -> Encoders:
    """The audio and text encoders ``cache`` names, on ``device`` in its compute dtype: the one
    loader of extraction, the dask workers and msmtfn-predict."""
    dtype = resolve_dtype(cache.dtype, device)
    audio = AudioEncoder(
        EncoderSpec(cache.audio_model, cache.audio_revision, cache.audio_layer),
        device,
        dtype,
        pool=cache.pool,
        trust_remote_code=trust_remote_code,
    )
    text = TextEncoder(
        EncoderSpec(cache.text_model, cache.text_revision, cache.text_layer),
        device,
        dtype,
        max_tokens=cache.max_text_tokens,
        trust_remote_code=trust_remote_code,
    )
    policy = AudioPolicy(cache.rate_policy, audio.sampling_rate, cache.channel)
    max_samples = int(round(cache.max_seconds * policy.input_rate))
    facts = EncoderFacts(
        audio_weights=audio.weights_hash,
        text_weights=text.weights_hash,
        tokenizer=text.tokenizer_hash,
        encoder_rate=audio.sampling_rate,
        input_rate=policy.input_rate,
        audio_frames=int(audio.frames(max_samples)[0]) // cache.pool,
        normalize=bool(getattr(audio.feature_extractor, "do_normalize", False)),
        compute_dtype=dtype,
    )
    return Encoders(audio, text, policy, max_samples, facts)
