"""``--device`` names shared by every command: auto | cpu | cuda | cuda:N, checked the same way
everywhere: one line saying what to pass instead of torch's 50-line ``AssertionError: Torch not
compiled with CUDA enabled`` deep inside model loading.

torch is imported only for ``cuda``/``mps``/``auto``, so checking ``cpu`` costs nothing.
"""

from __future__ import annotations

import re

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: cuda when available)"

DEVICE_FORM = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


class DeviceError(ValueError):
    """The device cannot be used here; the message says what to pass instead."""


def check_device(name: str, *, allow_auto: bool = True) -> str:
    """``name`` normalised (``CUDA:0`` → ``cuda:0``) when this machine has that device, else
    :class:`DeviceError`.

    ``auto`` (where ``allow_auto``) is kept as it is; :func:`resolve_device` turns it into cuda or
    cpu.
    """
    value = str(name).strip().lower()
    forms = ("auto, " if allow_auto else "") + "cpu, cuda or cuda:N"
    if value == "auto" and allow_auto:
        return value
    m = DEVICE_FORM.fullmatch(value)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise DeviceError(f"unknown device {name!r}; use {forms}")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise DeviceError(
                f"device {name!r}: CUDA is not available on this machine ({why}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise DeviceError(
                f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    if kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"device {name!r}: Apple's MPS is not available on this machine; use --device cpu"
            )
    return value


def resolve_device(name: str):
    """A checked ``torch.device``; ``auto`` = cuda when available, else cpu."""
    import torch

    value = check_device(name, allow_auto=True)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)
