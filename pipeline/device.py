"""``--device`` names shared by every command: auto | cpu | cuda | cuda:N (torch is imported only to resolve).

Issue 14 adds the one-line checks of unusable devices here (``check_device``); this module's ``resolve_device``
has the same signature and result, so a merge keeps either body.
"""
from __future__ import annotations

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: cuda when available)"


def resolve_device(name: str):
    """A ``torch.device``; ``auto`` = cuda when torch sees a GPU, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
