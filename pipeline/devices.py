"""``--device`` names shared by every command: auto | cpu | cuda | cuda:N (torch is imported only to resolve)."""
from __future__ import annotations

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: cuda when available)"


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; any other name is returned as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
