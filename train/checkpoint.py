"""Checkpoints: safetensors weights + JSON config, written atomically (temp file + rename); loading never
unpickles code."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import TrainConfig
from .model import MSMTFN, ModelDims, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(Exception):
    pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8"))


def save_weights(model: torch.nn.Module, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(model: torch.nn.Module, path: Path, device: torch.device) -> None:
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e}); retrain or restore the file") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match the model (missing {list(missing)[:3]}, unexpected "
                              f"{list(unexpected)[:3]})")


def write_run_config(run_dir: Path, cfg: TrainConfig, dims: ModelDims, extra: dict) -> None:
    atomic_write_json(run_dir / CONFIG, {"train": cfg.to_dict(), "dims": asdict(dims), **extra})


def read_run_config(run_dir: str | Path) -> dict:
    """The whole config.json of a run: ``train`` (the TrainConfig), ``dims``, ``cache`` (path, fingerprint,
    settings, label scheme) and ``parameters``."""
    run_dir = Path(run_dir)
    try:
        return json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{run_dir}: no readable {CONFIG} ({e}); is this a msmtfn-train run folder?") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MSMTFN, TrainConfig]:
    """Rebuild a trained model from its run folder: (model in eval mode on ``device``, its TrainConfig).
    The rest of config.json (dims, cache fingerprint, label scheme) is :func:`read_run_config`."""
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
