"""Training settings: one frozen dataclass; the CLI and config files (TOML/JSON) map onto its
fields.

Config files use the option names as keys (``batch-calls`` or ``batch_calls``; ``no-bigru = true``
works too); options given on the command line override the file. Defaults are explained in
``train/__init__.py``."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from pipeline.cli import option_field

MODALITIES = ("both", "text", "audio")
POOLINGS = ("flatten", "cls", "mean")


class ConfigError(ValueError):
    pass


def available_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the machine's
    count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None) -> int:
    """torch CPU threads for training when ``--threads`` is 0 (measured: docs/benchmarks.md,
    bench/threads.py).

    On 2 shared cores torch's default (one thread per core) made a first epoch 1.3-2.6x slower than
    1 thread (5x in issue 23; 2.1x faster only on an idle machine): OpenMP threads spin-wait for a
    core another process holds. So 1 thread up to 2 cores; above that half the cores (the rest stay
    free for the batch prefetch thread and other work), at most 8 (the fusion model's per-call
    matrices are too small to gain from more). Fixed by the core count, not the momentary load, so a
    command's CPU sums repeat run after run."""
    cores = available_cores() if cores is None else cores
    return 1 if cores <= 2 else min(cores // 2, 8)


def store_path_problem(cache: str) -> str | None:
    """Why a local ``--cache`` path cannot be a store, in the trainer's own words, or None (URLs are
    left to the store code). The command lines ask it before importing torch, so a typo is answered
    at once."""
    if "://" in cache:
        return None
    if not (Path(cache) / "zarr.json").is_file():
        return f"{cache}: no cache store here (run msmtfn-extract to build one)"
    return None


def effective_threads(threads: int) -> int:
    """The thread count a run uses: ``threads`` when set, else :func:`default_threads`."""
    return threads or default_threads()


# older run folders' config.json; not the extractor's --text-layer
RENAMED = {"text_layers": "text_branch_layers"}


def normalise_keys(data: dict) -> dict:
    """Option names → field names: dashes to underscores, ``no-bigru = true`` → ``bigru =
    False``."""
    out = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k.startswith("no_") and k[3:] in NEGATABLE:
            # only a real true/false is negated: no-bigru = "false" stays a string, which the field
            # refuses
            k, value = k[3:], (not value) if isinstance(value, bool) else value
        k = RENAMED.get(k, k)
        out[k] = value
    return out


# a field's annotation (a string: ``from __future__ import annotations``) -> the values it takes.
# Checked when a config is made, because TOML, JSON and --set hand over whatever was written: bigru
# = "false" is a true string
_TYPES = {
    "bool": ((bool,), "true or false"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "dict": ((dict,), "a table"),
}


def _type_problem(annotation: str, value) -> str | None:
    """Why ``value`` does not fit the field ``annotation``, or None."""
    if annotation == "str | None":
        if value is None:
            return None
        annotation = "str"
    # tuple fields normalise themselves (augment_variants: a name or names)
    if annotation not in _TYPES:
        return None
    types, words = _TYPES[annotation]
    if isinstance(value, types) and (annotation == "bool" or not isinstance(value, bool)):
        return None
    quoted = (
        " (write it without quotes)"
        if isinstance(value, str) and _parses(value, annotation)
        else ""
    )
    return f"expected {words}, not {value!r}{quoted}"


def _parses(text: str, annotation: str) -> bool:
    if annotation == "bool":
        return text.strip().lower() in ("true", "false")
    try:
        (int if annotation == "int" else float)(text)
    except ValueError:
        return False
    return annotation in ("int", "float")


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; each field is a ``msmtfn-train`` option of the same name (help and
    default here, train/cli.py generates the options)."""

    cache: str = option_field(
        help="Cache store made by msmtfn-extract (required here or in --config)."
    )
    out: str | None = option_field(
        None, "Run folder (default runs/<dataset>/<time>-<flags>-s<seed>)."
    )
    device: str = option_field("auto", "auto | cpu | cuda | cuda:N (auto = cuda when available)")
    seed: int = option_field(0, "Seed of the initial weights, the batch order and dropout.")
    epochs: int = option_field(60, "Training epochs at most.")
    patience: int = option_field(
        8, "Stop after this many epochs without a better validation score."
    )
    # the paper's 1e-5 is too slow for layers trained from scratch (docs/model.md)
    lr: float = option_field(3e-4, "AdamW learning rate (paper: 1e-5).")
    weight_decay: float = option_field(0.01, "AdamW weight decay.")
    warmup: float = option_field(0.05, "Warm-up fraction of all steps (linear, then cosine decay).")
    batch_calls: int = option_field(8, "Calls per step.")
    grad_accum: int = option_field(1, "Steps accumulated.")
    clip_norm: float = option_field(1.0, "Gradient norm clipped to this before each step.")
    amp: bool = option_field(True, "bf16 autocast on CUDA.")
    task: str = option_field(
        "",
        "Task that selects the checkpoint and is reported first: 5|4|3|2 for MarketCalls, "
        "score|2|5|7 for CMU-MOSI/MOSEI, emotion|sentiment for MELD (default: the first).",
        show_default=False,
    )
    modality: str = option_field("both", "Which inputs the model reads.", choices=MODALITIES)
    mtl: bool = option_field(True, "--no-mtl: only the --task head trains.")
    bigru: bool = option_field(True, "--no-bigru: segment vectors are mean-pooled over the call.")
    cross_attention: bool = option_field(
        True, "--no-cross-attention: the second branch is the audio itself (no text queries)."
    )
    bottleneck: bool = option_field(
        True, "--no-bottleneck: the pooled text and second branches are joined directly."
    )
    d_model: int = option_field(0, "0 = text encoder width.")
    heads: int = option_field(12, "Attention heads.")
    ffn: int = option_field(0, "FFN width; 0 = 4 x d_model.")
    dropout: float = option_field(0.3, "Residual/FFN/segment-vector/head dropout.")
    attn_dropout: float = option_field(0.0, "Dropout on attention weights (slow on CPU).")
    cross_layers: int = option_field(
        4,
        "Chained layers of the cross-modal branch (cross-attention to audio, self-attention, FFN).",
    )
    audio_stride: int = option_field(
        1,
        "Audio frames stacked side by side into one row before the model reads them: 4 makes "
        "HuBERT's 20 ms frames 80 ms rows and the attention over audio ~4x cheaper (1 = every "
        "frame, the paper's; docs/model.md has its measured cost).",
    )
    text_branch_layers: int = option_field(
        1, "Self-attention layers of the text branch (the backbone the heads read)."
    )
    bottleneck_tokens: int = option_field(
        4, "Learned tokens B through which the branches exchange."
    )
    bottleneck_layers: int = option_field(
        2, "Bottleneck fusion layers (each branch attends over [its tokens; B])."
    )
    pooling: str = option_field(
        "mean", "Segment vector: flatten (paper), CLS or mean (masked).", choices=POOLINGS
    )
    gru_hidden: int = option_field(128, "Bi-GRU width per direction.")
    gru_layers: int = option_field(2, "Bi-GRU layers.")
    head_hidden: int = option_field(512, "Hidden width of each task head.")
    loss_weights: dict = option_field(
        help="Weight of a task's loss (repeatable; default 1 each).", factory=dict
    )
    augment_variants: tuple = option_field(
        (),
        "Cached augmentation variants to sample for training calls (repeatable or "
        "comma-separated; default none). Validation and test always use the original recordings.",
    )
    max_cache_gb: float = option_field(
        0.0,
        "Features kept on the device at most (0 = auto); beyond it they stream from the store.",
    )
    train_fraction: float = option_field(
        1.0,
        "Fraction of the training calls used: whole calls, the same fraction of each label, "
        "drawn by --seed (a learning curve; validation and test stay whole).",
    )
    plots: bool = option_field(True, "PNG plots in <run>/plots.")
    threads: int = option_field(
        0,
        "CPU threads for torch; 0 = by core count: 1 up to 2 cores, else half the cores, at most "
        "8 (docs/benchmarks.md).",
    )
    state_every: int = option_field(
        1, "Epochs between resumable training states (model + optimizer + RNGs); 0 = none."
    )
    progress: bool = option_field(True, "Progress bars and per-epoch log lines.")

    @classmethod
    def help(cls, name: str) -> str:
        return cls.__dataclass_fields__[name].metadata["help"]

    @classmethod
    def default(cls, name: str):
        return cls.__dataclass_fields__[name].default

    def __post_init__(self):
        if isinstance(self.task, int) and not isinstance(self.task, bool):
            object.__setattr__(self, "task", str(self.task))  # task = 5 in TOML: the task named "5"
        for f in fields(self):
            problem = _type_problem(f.type, getattr(self, f.name))
            if problem:
                raise ConfigError(f"{f.name}: {problem}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality {self.modality!r}: valid are {', '.join(MODALITIES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling {self.pooling!r}: valid are {', '.join(POOLINGS)}")
        for name in (
            "epochs",
            "batch_calls",
            "grad_accum",
            "heads",
            "bottleneck_tokens",
            "audio_stride",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("cross_layers", "text_branch_layers", "bottleneck_layers", "ffn", "d_model"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.state_every < 0:
            raise ConfigError(
                f"state_every must be 0 (no resumable states) or positive, not {self.state_every}"
            )
        for name in ("patience", "gru_hidden", "gru_layers", "head_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be positive, not {getattr(self, name)}"
                    + (
                        " (for no early stopping pass --patience equal to --epochs)"
                        if name == "patience"
                        else ""
                    )
                )
        if not 0 <= self.warmup <= 1:  # 1: the whole run warms up
            raise ConfigError(
                f"warmup is the fraction of the steps that warm up, from 0 to 1, not {self.warmup}"
            )
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(
                f"train_fraction is the fraction of training calls used, above 0 and at most 1, "
                f"not {self.train_fraction}"
            )
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} is a fraction from 0 up to (not including) 1, not {getattr(self, name)}"
                )
        for name in (
            "lr",
            "weight_decay",
            "clip_norm",
            "max_cache_gb",
            "threads",
        ):  # lr 0: nothing moves
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        for task, w in self.loss_weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(
                    f"loss_weights: the weight of task {task!r} must be a number ≥ 0, not {w!r}"
                )
        av = self.augment_variants
        names = [av] if isinstance(av, str) else list(av or ())
        names = [n.strip() for part in names for n in str(part).split(",") if n.strip()]
        object.__setattr__(self, "augment_variants", tuple(names))

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        valid = cls.keys()
        clean = normalise_keys(data)
        for key in clean:
            if key not in valid:
                raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        try:
            return cls(**clean)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def read_file(cls, path: str | Path) -> dict:
        """Keys of a TOML or JSON file (option names, with - or _; ``no-bigru = true`` works
        too)."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
            else:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a table of settings")
        if isinstance(data.get("train"), dict) and "dims" in data:
            # a run folder's config.json: train again with that run's settings (its folder and cache
            # path aside)
            data = {k: v for k, v in data["train"].items() if k not in ("out", "cache")}
        return data

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        return cls.from_dict({**cls.read_file(path), **overrides}, source=str(path))


# the settings a config file may negate (``no-bigru = true``): every true-by-default switch
NEGATABLE = tuple(f.name for f in fields(TrainConfig) if f.default is True)
