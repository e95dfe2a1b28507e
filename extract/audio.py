"""Audio front end: decode, mix to mono, resample, and validate one segment.

Two sample-rate policies (both recorded in the cache fingerprint):

* ``encoder`` (default): resample every file to the encoder's rate (read from its feature
  extractor).
* ``paper-8k``: the paper's public code fed 8 kHz phone audio to a 16 kHz HuBERT unresampled. For
  parity, audio is brought to 8 kHz and fed as if it were at the encoder's rate (a 40 s segment →
  999 frames).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from pipeline.cache_settings import PAPER_RATE, RATE_POLICIES  # noqa: F401 — re-exported
from pipeline.remote_files import file_size, opened


class AudioError(Exception):
    """A segment whose audio cannot be used; the message is the reason shown in the report."""


@dataclass(frozen=True)
class AudioPolicy:
    rate_policy: str  # "encoder" | "paper-8k"
    encoder_rate: int  # the rate the encoder was trained on
    channel: str = "mix"  # which channel is encoded (CacheSettings.channel)

    @property
    def input_rate(self) -> int:
        """Rate of the samples handed to the encoder."""
        return PAPER_RATE if self.rate_policy == "paper-8k" else self.encoder_rate

    def __post_init__(self):
        if self.rate_policy not in RATE_POLICIES:
            raise ValueError(
                f"unknown rate policy {self.rate_policy!r}; valid: {', '.join(RATE_POLICIES)}"
            )


def probe_duration(path: str) -> float | None:
    """Seconds of audio in a file from its header, or None when it cannot be read (reported at
    extraction).

    Containers soundfile cannot read (mp4, m4a, webm, …, by extension) are asked through PyAV.
    """
    try:
        if _is_container(path):
            return _av_duration(path)
        with opened(path) as src:  # a URL: read through fsspec, its header only
            info = sf.info(src)
    except Exception:
        return None
    if info.samplerate <= 0:
        return None
    return info.frames / info.samplerate


# Extensions that soundfile (libsndfile) cannot read: decoded with PyAV (FFmpeg). Everything else
# stays with soundfile, so a corrupt WAV is still refused rather than half-decoded by FFmpeg.
CONTAINER_EXTS = frozenset(
    {".mp4", ".m4a", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".flv", ".aac", ".wma", ".3gp"}
)


# seconds decoded before ``start`` after a seek (codec warm-up, e.g. AAC's overlapping frames)
PREROLL = 0.2


def _is_container(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in CONTAINER_EXTS


def _av():
    try:
        import av
    except ImportError:
        raise AudioError(
            "cannot decode this container: PyAV is not installed (pip install av)"
        ) from None
    return av


def _av_duration(path: str) -> float | None:
    av = _av()
    with opened(path) as src, av.open(src) as c:
        if not c.streams.audio:
            return None
        st = c.streams.audio[0]
        if st.duration is not None and st.time_base is not None:
            return float(st.duration * st.time_base)
        return c.duration / av.time_base if c.duration is not None else None


def _read_av(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """[start, end) of the first audio track of a container as (samples × channels float32, rate).

    Seeks near ``start`` (to the key frame before it) and decodes only up to ``end``; sample
    positions are counted from the first decoded frame's timestamp, so encoder priming (negative
    timestamps) and the padding of the last AAC frame (past the stream's duration) are cut off.
    """
    av = _av()
    with opened(path) as src, av.open(src) as c:
        if not c.streams.audio:
            raise AudioError("no audio track in the file (a video without sound)")
        st = c.streams.audio[0]
        duration = (
            float(st.duration * st.time_base) if st.duration is not None and st.time_base else None
        )
        t0 = max(0.0, start or 0.0)
        if duration is not None and t0 >= duration > 0:
            raise AudioError(f"start {start}s is past the end of the file ({duration:.2f}s)")
        t1 = end if end is not None else duration
        if duration is not None and t1 is not None:
            t1 = min(t1, duration)
        # a little early: the frames right after a seek can be incomplete
        if t0 > PREROLL and st.time_base:
            c.seek(int((t0 - PREROLL) / st.time_base), stream=st, backward=True)
        # format conversion only (planar float, same layout and rate): the resampler adds no delay
        conv = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        first: float | None = None
        sr = 0
        n = 0
        for frame in c.decode(st):
            if first is None:
                first = float(frame.time) if frame.time is not None else 0.0
                sr = frame.sample_rate
            for out in conv.resample(frame):
                a = out.to_ndarray()
                chunks.append(a.reshape(-1, out.samples))
                n += out.samples
            if t1 is not None and first + n / sr >= t1:
                break
        else:
            for out in conv.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1, out.samples))
        if not chunks:
            raise AudioError("empty audio (0 samples)")
    data = np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)
    skip = max(0, int(round((t0 - first) * sr)))
    stop = data.shape[0] if t1 is None else max(skip, int(round((t1 - first) * sr)))
    if skip >= data.shape[0] and start:
        raise AudioError(f"start {start}s is past the end of the file")
    return data[skip:stop], sr


def _read_sf(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    with opened(path) as src, sf.SoundFile(src) as f:
        sr = f.samplerate
        first = 0 if start is None else max(0, int(round(start * sr)))
        last = f.frames if end is None else min(f.frames, int(round(end * sr)))
        if first >= f.frames and f.frames > 0:
            raise AudioError(f"start {start}s is past the end of the file ({f.frames / sr:.2f}s)")
        f.seek(min(first, f.frames))
        return f.read(frames=max(0, last - first), dtype="float32", always_2d=True), sr


def _first_line(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:  # FFmpeg errors: the reason without errno and path
        return e.strerror
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


CHANNEL_INDEX = {"left": 0, "right": 1}


def pick_channel(data: np.ndarray, channel: str) -> tuple[np.ndarray, list[str]]:
    """(frames × channels) → (frames × 1): their mean (``mix``), or the one channel named (left =
    0, right = 1, or its number). A mono recording is used as it is, with a warning."""
    if channel == "mix" or not channel:
        return (data.mean(axis=1, keepdims=True) if data.shape[1] > 1 else data), []
    if data.shape[1] == 1:
        return data, [f"mono recording: --channel {channel} has nothing to choose (used as it is)"]
    k = CHANNEL_INDEX.get(channel)
    if k is None:
        if not str(channel).isdigit():
            raise AudioError(
                f"channel {channel!r}: give left, right or a channel number (0, 1, …); for "
                "--channel customer, the call's customer_channel"
            )
        k = int(channel)
    if k >= data.shape[1]:
        raise AudioError(f"has {data.shape[1]} channels; channel {channel} is not one of them")
    return data[:, k : k + 1], []


def load_segment(
    path: str, start: float | None, end: float | None, rate: int, channel: str = "mix"
) -> tuple[np.ndarray, list[str]]:
    """Decode [start, end) of ``path`` as mono float32 at ``rate`` (the channels mixed, or the one
    ``channel`` names: :func:`pick_channel`). Returns (samples, warnings).

    Raises AudioError for what cannot be encoded: unreadable, empty, non-finite samples.
    Silence is kept (the paper found silent stretches informative) but named as a warning.
    """
    data, sr = _decoded(path, start, end)
    data, warnings = pick_channel(data, channel)
    x = np.ascontiguousarray(data[:, 0])
    del data  # a view of it remains in x until the resampled copy replaces it
    return _at_rate(x, sr, rate, warnings)


def load_channels(path: str, rate: int) -> tuple[list[np.ndarray], list[str]]:
    """Every channel of ``path`` on its own, as mono float32 at ``rate`` (one array for a mono
    file): what ``msmtfn-predict --asr`` transcribes channel by channel. AudioError as
    :func:`load_segment`."""
    data, sr = _decoded(path, None, None)
    out, warnings = [], []
    for k in range(data.shape[1]):
        x, w = _at_rate(np.ascontiguousarray(data[:, k]), sr, rate, [])
        out.append(x)
        warnings += [f"channel {k}: {m}" for m in w] if data.shape[1] > 1 else w
    return out, warnings


STREAM_FRAMES = 1 << 20  # native-rate frames per block of stream_recording (~2 min at 8 kHz)


def _av_blocks(path: str, size: int):
    """(frames × channels float32, rate) blocks of about ``size`` frames of a container's first
    audio track: the samples :func:`_read_av` gives for the whole file (encoder priming before 0 s
    and the padding past the stated duration cut off alike), decoded a packet at a time."""
    av = _av()
    with opened(path) as src, av.open(src) as c:
        if not c.streams.audio:
            raise AudioError("no audio track in the file (a video without sound)")
        st = c.streams.audio[0]
        t1 = float(st.duration * st.time_base) if st.duration is not None and st.time_base else None
        conv = av.AudioResampler(format="fltp")  # as _read_av: format conversion only
        first, sr, n, skip, stop = None, 0, 0, 0, None
        pending: list[np.ndarray] = []
        held = 0

        def keep(outs):
            nonlocal n, held
            for out in outs:
                a = out.to_ndarray().reshape(-1, out.samples)
                lo, n = n, n + out.samples
                hi = n if stop is None else min(n, stop)
                if hi > max(lo, skip):
                    pending.append(a[:, max(lo, skip) - lo : hi - lo])
                    held += hi - max(lo, skip)

        for frame in c.decode(st):
            if first is None:
                first = float(frame.time) if frame.time is not None else 0.0
                sr = frame.sample_rate
                skip = max(0, int(round(-first * sr)))
                stop = None if t1 is None else max(skip, int(round((t1 - first) * sr)))
            keep(conv.resample(frame))
            if held >= size:
                yield np.concatenate(pending, axis=1).T, sr
                pending, held = [], 0
            if t1 is not None and first + n / sr >= t1:
                break
        else:
            keep(conv.resample(None))  # flush
        if pending:
            yield np.concatenate(pending, axis=1).T, sr


def _native_blocks(path: str, size: int):
    """(frames × channels float32, native rate) blocks of the whole of ``path``: soundfile's blocks,
    or a container's decoded packets gathered into blocks."""
    if _is_container(path):
        yield from _av_blocks(path, size)
        return
    with opened(path) as src, sf.SoundFile(src) as f:
        for data in f.blocks(blocksize=size, dtype="float32", always_2d=True):
            yield data, f.samplerate


def stream_recording(path: str, rate: int, channel: str = "mix", block_frames: int = 0):
    """The whole of ``path`` as :func:`load_segment` gives it (mono float32 at ``rate``, the same
    samples), yielded in blocks, so that a 3-hour recording never sits in memory (msmtfn-predict
    cuts it at pauses from its frame levels); WAV, FLAC… and containers (mp3, m4a, video) alike.
    AudioError as load_segment: a NaN anywhere, counted over the file, is raised after the last
    block."""
    size = file_size(path)
    if size is None:
        raise AudioError("audio file not found")
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        stream, sr, frames, bad = None, 0, 0, 0
        for data, sr in _native_blocks(path, block_frames or STREAM_FRAMES):
            if stream is None and sr != rate:
                stream = soxr.ResampleStream(sr, rate, 1, dtype="float32", quality="HQ")
            frames += data.shape[0]
            bad += int((~np.isfinite(data)).sum())
            data, _ = pick_channel(data, channel)
            x = np.ascontiguousarray(data[:, 0])
            yield stream.resample_chunk(x) if stream is not None else x
        if stream is not None:  # the resampler's tail
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
    except (AudioError, GeneratorExit):
        raise
    except FileNotFoundError:
        raise AudioError("audio file not found") from None
    except Exception as e:  # as load_segment: a corrupt or non-audio file is one line
        raise AudioError(f"cannot decode audio ({_first_line(e)})") from None
    if frames == 0:
        raise AudioError("empty audio (0 samples)")
    if bad:
        raise AudioError(f"audio has {bad} NaN/inf samples")


def _decoded(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """[start, end) of ``path`` as (frames × channels float32, rate), checked: present, not empty,
    decodable, finite."""
    size = file_size(path)  # a local file, or an object at a URL
    if size is None:
        raise AudioError("audio file not found")
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        data, sr = _read_av(path, start, end) if _is_container(path) else _read_sf(path, start, end)
    except AudioError:
        raise
    except FileNotFoundError:
        raise AudioError("audio file not found") from None
    # LibsndfileError/RuntimeError or FFmpeg errors for corrupt or non-audio files
    except Exception as e:
        raise AudioError(f"cannot decode audio ({_first_line(e)})") from None
    if data.shape[0] == 0:
        raise AudioError("empty audio (0 samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"audio has {bad} NaN/inf samples")
    return data, sr


def _at_rate(x: np.ndarray, sr: int, rate: int, warnings: list[str]):
    """Mono samples at ``rate`` (soxr), with a warning for a silent recording."""
    if sr != rate:
        x = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32, copy=False)
    # max/min, not abs(x): no temporary the size of the recording (hours of audio in predict)
    if not (x.max() > 1e-6 or x.min() < -1e-6):
        warnings.append("silent audio (encoded as is)")
    return x, warnings
