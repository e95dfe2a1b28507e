"""Checkpoints: safetensors weights + JSON config, written atomically (temp file + rename); loading
never unpickles code.

``train_state.pt`` (the last finished epoch: model, optimizer, scheduler, RNG states, history) is
what ``--resume`` continues from; it is read with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers, and is removed when the run finishes."""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.atomic import atomic_path, atomic_write_bytes, atomic_write_json  # noqa: F401 — re-exported

from .config import TrainConfig
from .model import MSMTFN, ModelDims, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"
METRICS = "metrics.json"  # written last: its presence marks a finished run
HISTORY = "history.csv"


class CheckpointError(Exception):
    pass


def save_weights(model: torch.nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp)
        )


# state-dict names in runs written before the fusion parts were modules of their own
LEGACY_KEYS = (
    ("second_layers.", "second_branch."),
    ("bottleneck_tokens", "fusion.tokens"),
    ("bottleneck_layers.", "fusion.layers."),
    ("second_norm.", "fusion.norm."),
    ("flatten.", "pool."),
)


def renamed_keys(state: dict) -> dict:
    """``state`` with the names of older runs (LEGACY_KEYS) in today's spelling."""
    out = {}
    for key, value in state.items():
        for old, new in LEGACY_KEYS:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def load_weights(model: torch.nn.Module, path: Path, device: torch.device) -> None:
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({e}); retrain or restore the file"
        ) from None
    missing, unexpected = model.load_state_dict(renamed_keys(state), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match the model (missing {list(missing)[:3]}, unexpected "
            f"{list(unexpected)[:3]})"
        )


def write_run_config(run_dir: Path, cfg: TrainConfig, dims: ModelDims, extra: dict) -> None:
    atomic_write_json(run_dir / CONFIG, {"train": cfg.to_dict(), "dims": asdict(dims), **extra})


def read_run_config(run_dir: str | Path) -> dict:
    """The whole config.json of a run: ``train`` (the TrainConfig), ``dims``, ``cache`` (path,
    fingerprint, settings, label scheme) and ``parameters``."""
    run_dir = Path(run_dir)
    try:
        return json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{run_dir}: no readable {CONFIG} ({e}); is this a msmtfn-train run folder?"
        ) from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MSMTFN, TrainConfig]:
    """Rebuild a trained model from its run folder: (model in eval mode on ``device``, its
    TrainConfig). The rest of config.json (dims, cache fingerprint, label scheme) is
    :func:`read_run_config`."""
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir)
    try:
        cfg = TrainConfig.from_dict(meta["train"])
        dims = ModelDims(**meta["dims"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / CONFIG}: not a msmtfn-train config ({e})") from None
    model = build_model(cfg, dims).to(device)
    load_weights(model, run_dir / WEIGHTS, torch.device(device))
    return model.eval(), cfg


# --------------------------------------------------------------------------- training state
# (--resume)
def save_train_state(
    path: Path,
    *,
    epoch: int,
    model,
    opt,
    sched,
    gen: torch.Generator,
    history: list[dict],
    best_score,
    best_epoch: int,
    bad: int,
    stopped: bool,
) -> None:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "format": 1,
        "epoch": epoch,
        "stopped": stopped,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "generator": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
        },
        "history": history,
        "best_score": list(best_score) if best_score is not None else None,
        "best_epoch": best_epoch,
        "bad": bad,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_train_state(path: Path) -> dict:
    """The saved state, read without unpickling code; a damaged file is one clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError("unknown layout")
        for key in (
            "epoch",
            "model",
            "optimizer",
            "scheduler",
            "rng",
            "history",
            "best_epoch",
            "bad",
        ):
            state[key]  # noqa: B018 — KeyError if the file is not a whole state
    except Exception as e:  # torch raises many types for damaged zip/pickle data
        raise CheckpointError(
            f"{path}: not a readable training state ({type(e).__name__}: {str(e)[:120]}); delete it "
            "to restart the run from epoch 1, or train into a new --out"
        ) from None
    return state


def restore_train_state(state: dict, model, opt, sched, gen: torch.Generator, path: Path) -> int:
    """Put model, optimizer, scheduler and every RNG back as they were after ``state['epoch']``;
    returns it."""
    try:
        model.load_state_dict(renamed_keys(state["model"]))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path}: does not match this model ({str(e)[:160]}); delete it to restart the run, "
            "or train into a new --out"
        ) from None
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["generator"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    return int(state["epoch"])
