"""The cache contract in code: every setting that changes the numbers in a cache store
(docs/cache-format.md).

:class:`CacheSettings` is the one place where such a setting is defined. ``msmtfn-extract`` makes
one click option per field (name, default, choices and help come from here),
``extract.ExtractConfig`` and the dask workers carry it whole, the store keeps it in its
``settings`` attribute (:meth:`CacheSettings.to_attrs`, together with what the loaded encoders
report about themselves, :class:`EncoderFacts`), and ``msmtfn-predict`` reads it back
(:meth:`CacheSettings.from_attrs`) to rebuild the run's encoders. The fingerprint is the hash of
that attribute plus the manifest digest (pipeline/fingerprint.py), so a new field here is in the
fingerprint as soon as :meth:`to_attrs` writes it.

Adding an extraction option: one field below (with its ``_opt`` help), the line of :meth:`to_attrs`
that records it (and :meth:`from_attrs` that reads it back, with the old default for stores written
before it existed), one row in README's option table. The CLI option appears by itself.

Stores written before this module existed hold the very same attribute: the fingerprint of a store
made with the same settings is unchanged (pinned by tests/test_fingerprint.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .units import UNITS

# --------------------------------------------------------------------------- constants used in
# several stages
PAPER_AUDIO_MODEL = "TencentGameMate/chinese-hubert-base"
PAPER_TEXT_MODEL = "hfl/chinese-roberta-wwm-ext"
RATE_POLICIES = ("encoder", "paper-8k")
PAPER_RATE = 8000  # Hz fed to the encoder under the paper-8k policy
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
STORE_DTYPE = "float16"  # hidden states are always stored as float16
MAX_SECONDS = 40.0  # the paper's segment length: longer segments are split into equal pieces
MAX_TEXT_TOKENS = 199  # the paper's text length (CLS + 197 + SEP at most)
SHARD_SIZE = 16  # segments per shard file (one file per shard of each hidden-state array)
MAX_BATCH = 64  # segments per encoder batch at most
BATCH_SECONDS_CUDA = 1280.0  # padded audio seconds per encoder batch on a GPU ...
BATCH_SECONDS_CPU = 160.0  # ... and on a CPU (bench/extract_throughput.py)

# keys of the settings attribute that say where the models were read from, not what they are (the
# weight and tokenizer hashes say that), and keys that do not change the features of one segment:
# predict may differ there
LOCATION_KEYS = ("audio.model", "audio.revision", "text.model", "text.revision")
ENCODER_KEYS_MAY_DIFFER = ("dataset", "augmentation", "compute_dtype")


def batch_seconds_for(batch_seconds: float, device: str) -> float:
    """Padded audio seconds per encoder batch: the given value, or the device's default when it is
    0."""
    return batch_seconds or (
        BATCH_SECONDS_CUDA if str(device).startswith("cuda") else BATCH_SECONDS_CPU
    )


def resolve_dtype(name: str, device: str) -> str:
    """The compute dtype a name means on ``device`` (auto: float16 on CUDA, float32 elsewhere)."""
    if name == "auto":
        return "float16" if str(device).startswith("cuda") else "float32"
    if name not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_CHOICES)}")
    return name


CHANNELS = ("mix", "left", "right", "customer")  # or a 0-based channel number
ROLES = ("none", "prefix")


def channel_problem(value: str) -> str | None:
    """What is wrong with a channel setting no recording can have (None: nothing)."""
    if value in CHANNELS or str(value).isdigit():
        return None
    return "give mix, left, right, a channel number (0, 1, …) or customer"


def _opt(default, help: str, **cli):
    """A field that is also a ``msmtfn-extract`` option (``cli``: flag=, choices=, metavar=,
    cli_default=)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class CacheSettings:
    """Every chosen setting that changes the cached numbers. Frozen: one value per cache."""

    audio_model: str = _opt(PAPER_AUDIO_MODEL, "Hub id or local folder.")
    text_model: str = _opt(PAPER_TEXT_MODEL, "Hub id or local folder.")
    audio_revision: str | None = _opt(
        None, "Hub revision (branch, tag or commit) of the audio model."
    )
    text_revision: str | None = _opt(None, "Hub revision of the text model.")
    audio_layer: int = _opt(-1, "Hidden-state layer (HF index; -1 = last).")
    text_layer: int = _opt(-1, "Hidden-state layer (HF index; -1 = last).")
    dtype: str = _opt(
        "auto",
        "Compute dtype (auto: float16 on CUDA, float32 on CPU). Stored as float16.",
        choices=DTYPE_CHOICES,
    )
    max_seconds: float = _opt(MAX_SECONDS, "Longer segments are split into equal pieces.")
    rate_policy: str = _opt(
        "encoder",
        "encoder: resample to the encoder's rate; paper-8k: 8 kHz fed unresampled (paper parity).",
        choices=RATE_POLICIES,
    )
    audio_pool: int = _opt(
        0, "Audio frames averaged per stored row (0: 2 for 'encoder', 1 for 'paper-8k')."
    )
    max_text_tokens: int = _opt(
        MAX_TEXT_TOKENS, "Text rows stored per segment (longer transcripts are cut)."
    )
    roles: str = _opt(
        "none",
        "prefix: the speaker's name (a speaker column) is written before each utterance in the "
        "text the text encoder reads ('customer: 我想了解一下'); none: the text as it is.",
        choices=ROLES,
    )
    units: str = _opt(
        "rows",
        "turns: a recording's timed rows with speakers are grouped into conversation units (an "
        "agent turn and the customer's reply), merged up to --max-seconds; rows: each row is a "
        "segment.",
        choices=UNITS,
    )
    channel: str = _opt(
        "mix",
        "Which channel of a multi-channel recording is encoded: mix (their mean), left, right, "
        "N (0-based), or customer (each call's customer_channel column: left/right/0/1).",
        metavar="mix|left|right|N|customer",
        problem=channel_problem,
    )
    # augmented copies of the training rows (extract/augment.py validates the names)
    augment: tuple[str, ...] = _opt(
        (),
        "Augmented copies of the training rows, cached as extra rows",
        metavar="NAME,…",
        cli_default="",
    )
    # text copies pointing at the original's audio rows (extract/text_augment.py validates them)
    augment_text: tuple[str, ...] = _opt(
        (),
        "Text-augmented copies of the training rows, cached as text rows that use the original's "
        "audio: pinyin-swap (same-pinyin character swaps, p 0.3; pinyin-swap:0.2 sets p), "
        "word-dropout (p 0.1).",
        metavar="NAME[:P],…",
        cli_default="",
    )
    variants: int = _opt(1, "Copies per training row and augmentation.")
    variants_per_class: str = _opt(
        "",
        "Copies per call label instead of --variants for the labels named (D=1,A=3: the paper "
        "gave its class D fewer).",
        metavar="LABEL=K,…",
    )
    # also seeds a dataset's generated train/valid/test split (which the manifest digest covers)
    seed: int = _opt(0, "Seed of a generated train/valid/test split and of the augmentation draws.")

    @property
    def pool(self) -> int:
        """Audio frames averaged per stored row, resolved (0 means the rate policy's default)."""
        return self.audio_pool or (1 if self.rate_policy == "paper-8k" else 2)

    def input_rate(self, encoder_rate: int) -> int:
        """Rate of the samples handed to an audio encoder trained at ``encoder_rate``."""
        return PAPER_RATE if self.rate_policy == "paper-8k" else int(encoder_rate)

    def check(self) -> None:
        """One clear error for a value no extraction can use."""
        if self.rate_policy not in RATE_POLICIES:
            raise ValueError(
                f"unknown --rate-policy {self.rate_policy!r}; valid: {', '.join(RATE_POLICIES)}"
            )
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"unknown --dtype {self.dtype!r}; valid: {', '.join(DTYPE_CHOICES)}")
        if self.roles not in ROLES:
            raise ValueError(f"--roles {self.roles!r}: valid are {', '.join(ROLES)}")
        if self.units not in UNITS:
            raise ValueError(f"--units {self.units!r}: valid are {', '.join(UNITS)}")
        if problem := channel_problem(self.channel):
            raise ValueError(f"--channel {self.channel!r}: {problem}")
        if (self.augment or self.augment_text) and self.variants < 1:
            raise ValueError(f"--variants must be at least 1, not {self.variants}")
        if self.variants_per_class and not (self.augment or self.augment_text):
            raise ValueError("--variants-per-class needs --augment or --augment-text")

    # ------------------------------------------------------------------ the store's ``settings``
    # attribute
    def to_attrs(self, dataset: str, facts: EncoderFacts, augmentation: dict) -> dict:
        """The store's ``settings`` attribute, which the fingerprint hashes (key names and value
        types are the contract: changing either changes every fingerprint). ``augmentation`` is
        extract/augment.py's description of ``augment``/``variants``/``seed`` (with each transform's
        parameters)."""
        return {
            "dataset": dataset,
            "audio": {
                "model": self.audio_model,
                "revision": self.audio_revision,
                "weights": facts.audio_weights,
                "layer": self.audio_layer,
                "rate_policy": self.rate_policy,
                "input_rate": facts.input_rate,
                "encoder_rate": facts.encoder_rate,
                "pool": self.pool,
                "frames": facts.audio_frames,
                "normalize": facts.normalize,
                # only when chosen: stores made before the setting (all mixed) keep their fingerprint
                **({"channel": self.channel} if self.channel != "mix" else {}),
            },
            "text": {
                "model": self.text_model,
                "revision": self.text_revision,
                "weights": facts.text_weights,
                "tokenizer": facts.tokenizer,
                "layer": self.text_layer,
                "max_tokens": self.max_text_tokens,
                **({"roles": self.roles} if self.roles != "none" else {}),
            },
            "compute_dtype": facts.compute_dtype,
            "store_dtype": STORE_DTYPE,
            "segmentation": {
                "max_seconds": self.max_seconds,
                "long_segments": "equal pieces",
                **(
                    {"units": self.units, "long_units": "split between utterances"}
                    if self.units != "rows"
                    else {}
                ),
            },
            "augmentation": augmentation,
        }

    @classmethod
    def from_attrs(cls, settings: dict) -> tuple[CacheSettings, EncoderFacts]:
        """The settings and encoder facts a store (or a run's ``config.json`` → ``cache.settings``)
        was made with; the inverse of :meth:`to_attrs` (``dtype`` and ``audio_pool`` come back
        resolved)."""
        a, t = settings["audio"], settings["text"]
        seg, aug = settings.get("segmentation", {}), settings.get("augmentation", {}) or {}
        transforms = tuple((aug.get("transforms") or {}).keys())
        text = tuple(f"{n}:{v['p']:g}" for n, v in (aug.get("text_transforms") or {}).items())
        families = len(transforms) + len(text)
        d = {f.name: f.default for f in fields(cls)}
        chosen = cls(
            audio_model=a["model"],
            text_model=t["model"],
            audio_revision=a.get("revision"),
            text_revision=t.get("revision"),
            audio_layer=int(a.get("layer", d["audio_layer"])),
            text_layer=int(t.get("layer", d["text_layer"])),
            dtype=settings.get("compute_dtype", "float32"),
            max_seconds=float(seg.get("max_seconds", d["max_seconds"])),
            rate_policy=a.get("rate_policy", d["rate_policy"]),
            audio_pool=int(a.get("pool", d["audio_pool"])),
            max_text_tokens=int(t.get("max_tokens", d["max_text_tokens"])),
            channel=str(a.get("channel", d["channel"])),
            roles=str(t.get("roles", d["roles"])),
            units=str(seg.get("units", d["units"])),
            augment=transforms,
            augment_text=text,
            # "copies" where text or per-class variants are recorded; before them, names / families
            variants=int(aug["copies"])
            if "copies" in aug
            else len(aug.get("variants", ())) // families
            if families
            else d["variants"],
            variants_per_class=",".join(
                f"{k}={v}" for k, v in (aug.get("per_class") or {}).items()
            ),
            seed=int(aug.get("seed", d["seed"])),
        )
        facts = EncoderFacts(
            audio_weights=a.get("weights", ""),
            text_weights=t.get("weights", ""),
            tokenizer=t.get("tokenizer", ""),
            encoder_rate=int(a.get("encoder_rate", 0)),
            input_rate=int(a.get("input_rate", 0)),
            audio_frames=int(a.get("frames", 0)),
            normalize=bool(a.get("normalize", False)),
            compute_dtype=settings.get("compute_dtype", "float32"),
        )
        return chosen, facts


@dataclass(frozen=True)
class EncoderFacts:
    """What the loaded encoders say about themselves (measured, not chosen); recorded next to the
    settings so that a cache names exactly which weights made it."""

    # hash of the audio model's state dict (pipeline.fingerprint.hash_state_dict)
    audio_weights: str
    text_weights: str
    tokenizer: str  # hash of the tokenizer's vocabulary and settings
    encoder_rate: int  # Hz the audio encoder was trained on
    input_rate: int  # Hz of the samples handed to it (the rate policy's choice)
    audio_frames: int  # stored audio rows per segment (after pooling)
    normalize: bool  # the feature extractor's zero-mean/unit-variance step
    compute_dtype: str  # the resolved compute dtype

    @property
    def identity(self) -> tuple[str, str, str]:
        return self.audio_weights, self.text_weights, self.tokenizer


def encoder_identity(settings: dict) -> dict:
    """``settings`` without the keys that may differ between two caches whose segments have equal
    features (LOCATION_KEYS, ENCODER_KEYS_MAY_DIFFER): what a run and the encoders predict loads
    must agree on."""
    drop = set(LOCATION_KEYS) | set(ENCODER_KEYS_MAY_DIFFER)
    out = {}
    for k, v in settings.items():
        if k in drop:
            continue
        if isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if f"{k}.{kk}" not in drop}
        out[k] = v
    return out


def cache_fields() -> tuple[str, ...]:
    """Names of the :class:`CacheSettings` fields (each is a ``msmtfn-extract`` option)."""
    return tuple(f.name for f in fields(CacheSettings))
