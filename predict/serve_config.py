"""``msmtfn-serve``'s settings: one frozen dataclass whose fields are the command's options
(predict/serve_cli.py generates them). torch-free, so ``--help`` and bad options answer at once."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from pipeline.cli import option_field

from .config import ASR_CHANNELS

API_KEY_ENV = "MSMTFN_API_KEY"


class ServeError(Exception):
    """A setting the server cannot start with (one line saying what to fix)."""


@dataclass(frozen=True)
class ServeConfig:
    run: str = option_field(
        help="msmtfn-train run folder (or a msmtfn-sweep folder: the trial it selected).",
        required=True,
    )
    host: str = option_field(
        "127.0.0.1", "Address to listen on; any other than loopback needs an API key."
    )
    port: int = option_field(8000, "Port (0: any free one, named in the start-up line).")
    device: str = option_field("auto", "auto | cpu | cuda | cuda:N (auto = cuda when available)")
    max_upload_mb: float = option_field(
        200.0, "Largest request body; refused with 413 while it streams in."
    )
    asr: str | None = option_field(
        None, "Speech recognition model for requests that send no transcript (else 422)."
    )
    asr_channels: str = option_field(
        "split",
        "With --asr, an upload of 2+ channels: split = each channel transcribed on its own, each "
        "utterance named by its channel (customer/agent where the customer's channel is known: the "
        "request's customer_channel or the run's --channel), as msmtfn-predict does; mix = the "
        "channels mixed, one transcript.",
        choices=ASR_CHANNELS,
    )
    batch_window_ms: float = option_field(
        20.0,
        "How long the first waiting call waits for others to share its model batch (0: none).",
    )
    api_key_file: str | None = option_field(
        None, f"File holding the API key (else ${API_KEY_ENV}); clients send 'Bearer KEY'."
    )
    insecure: bool = option_field(
        False, "Allow a non-loopback --host without an API key (anyone who reaches it may use it)."
    )
    max_audio_minutes: float = option_field(240.0, "Longest recording accepted.")
    decode_timeout_s: float = option_field(60.0, "Time one recording's decoding may take.")
    decode_memory_mb: int = option_field(
        4096, "Memory one recording's decoding may take (its worker process's cap)."
    )
    decode_workers: int = option_field(2, "Processes that decode uploads.")
    batch_calls: int = option_field(0, "Calls per model batch (0 = the run's).")
    threads: int = option_field(
        0, "CPU threads for torch (0 = the run's --threads, else torch's default)."
    )
    trust_remote_code: bool = option_field(False, "Allow model code from the hub (encoders, ASR).")

    def __post_init__(self):
        for name in ("max_upload_mb", "max_audio_minutes", "decode_timeout_s", "decode_memory_mb"):
            if getattr(self, name) <= 0:
                raise ServeError(f"--{name.replace('_', '-')} must be above 0")
        if self.batch_window_ms < 0 or self.decode_workers < 1 or self.batch_calls < 0:
            raise ServeError("--batch-window-ms ≥ 0, --decode-workers ≥ 1, --batch-calls ≥ 0")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port {self.port}: give 0-65535")


def read_api_key(cfg: ServeConfig) -> str | None:
    """The key clients must send: --api-key-file's first line, else $MSMTFN_API_KEY, else None."""
    if cfg.api_key_file:
        try:
            with open(cfg.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        except OSError as e:
            raise ServeError(
                f"{cfg.api_key_file}: cannot read the API key ({e.strerror})"
            ) from None
        if not key:
            raise ServeError(f"{cfg.api_key_file}: the first line is empty; write the key there")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``localhost`` resolved)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def check_exposure(cfg: ServeConfig, key: str | None) -> None:
    """Refuse to listen beyond this machine without a key, unless --insecure says so."""
    if key is None and not cfg.insecure and not is_loopback(cfg.host):
        raise ServeError(
            f"--host {cfg.host} is reachable from other machines and no API key is set: set "
            f"${API_KEY_ENV} or --api-key-file (or pass --insecure to serve without one)"
        )
