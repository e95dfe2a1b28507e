"""Stage 1 of msmtfn: encode a dataset's calls with frozen audio and text encoders into a resumable
Zarr cache.

Public API (what predict/ and other callers use; the submodules are internal)::

    ExtractConfig, ExtractResult     what to extract and how (extract/config.py)
    extract(cfg, progress=True, client=None) -> ExtractResult     the whole run (extract/run.py)
    CacheSettings                    every setting that changes the numbers (pipeline/)
    load_encoders(cache, device) -> Encoders     both frozen encoders for a CacheSettings
    SegmentSource, make_batches, make_loader     decode/tokenise one segment, length-bucketed
                                     batches, their loader
    encode_loader(loader, audio, text)   the one encode loop (extraction and predict)
    AudioError, load_segment         one segment's audio, decoded and resampled (extract/audio.py)
    load_channels(path, rate)        every channel of a recording on its own (predict --asr)
    build_tiny_encoders(folder)      small random encoders for tests and the demo (extract/tiny.py)
    main                             the ``msmtfn-extract`` click command

Names are imported on first use (PEP 562), so ``import extract`` (and ``msmtfn-extract --help``)
does not load torch, transformers or dask.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ExtractConfig": "config",
    "ExtractResult": "config",
    "extract": "run",
    "CacheSettings": "config",
    "Encoders": "encoders",
    "load_encoders": "encoders",
    "SegmentSource": "encode",
    "make_batches": "encode",
    "make_loader": "encode",
    "encode_loader": "encode",
    "AudioError": "audio",
    "load_segment": "audio",
    "load_channels": "audio",
    "build_tiny_encoders": "tiny",
    "main": "cli",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
