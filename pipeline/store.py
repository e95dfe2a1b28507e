"""The cache store: one Zarr v3 group holding encoder hidden states, their lengths, the segment
table and state.

Layout (docs/cache-format.md; the settings in pipeline/cache_settings.py):

    audio/hidden  float16 (N, A, Da)   audio/length int32 (N,)    A = audio frames per segment (999
    by default)
    audio/source  int32 (N,)           the row whose audio rows this row uses: itself, or for a
                                       text variant its original (whose own audio rows stay
                                       unwritten: no bytes); schema 3 on
    text/hidden   float16 (N, T, Dt)   text/length  int32 (N,)    T = text tokens per segment (199
    by default)
    table/<field> (N,)                 call_id, segment_index, split, label, source_path, start,
    end, variant, segment_id, seconds, text (the transcript; stores made before it lack it)
    done          bool (N,)            a row counts only once its hidden states are written
    skipped       bool (N,), skip_reason str (N,)   rows whose input was bad; the reason says why
    attrs         schema_version, fingerprint, settings, manifest_digest, package version,
    timestamps

Hidden-state arrays are chunked one segment per chunk and sharded ``shard_size`` segments per shard
file, so a store of 100k segments is ~thousands of files, and a writer that owns whole shards never
races another. ``done`` is chunked per shard too, so flipping a shard's flags is one atomic chunk
write (LocalStore writes through a temp file + rename).

A store may also live at an fsspec URL (``s3://bucket/name.zarr``, ``gs://…``, ``memory://…``): the
group is opened through zarr's ``FsspecStore`` with ``storage_options`` (given, or JSON in
``MSMTFN_STORAGE_OPTIONS``; an S3 endpoint also comes from ``AWS_ENDPOINT_URL``). Object stores
write each object whole, so a killed writer leaves no partial chunk there; the shard-ownership and
done-after-data rules are the same.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .atomic import atomic_write_text
from .cache_settings import SHARD_SIZE
from .fingerprint import diff_settings
from .labels import LabelScheme, label_counts, scheme_from_record
from .manifest import Segment
from .remote_files import is_url  # noqa: F401 — re-exported (extract/config.py, lock.py)

if TYPE_CHECKING:
    import zarr

log = logging.getLogger(__name__)

# 3: audio/source (rows that use another row's audio: text variants); 2: every chunk carries a
# CRC32C checksum (zarr's crc32c codec); 1: none. All three are read.
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
CREATING = "msmtfn_creating"  # root attribute present only while CacheStore.create is still writing
TABLE_STR_FIELDS = ("call_id", "split", "label", "source_path", "variant", "segment_id")
TABLE_FIELDS = TABLE_STR_FIELDS + ("segment_index", "start", "end")


class StoreError(Exception):
    """A store that cannot be used as asked; the message says why and what to do."""


class FingerprintMismatch(StoreError):
    pass


class DamagedStore(StoreError):
    """Chunks whose bytes fail their checksum or do not decode; ``rows``: the store rows."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def checksummed(compressors) -> tuple:
    """A chunk's codec chain ending in a CRC32C of the encoded bytes (checked on every read)."""
    import zarr.codecs

    return (*(compressors or ()), zarr.codecs.Crc32cCodec())


def _plain():
    import zarr.codecs

    return (zarr.codecs.ZstdCodec(level=0),)  # zarr's own default for these arrays


@dataclass(frozen=True)
class StoreShape:
    n: int  # segments (rows)
    audio_frames: int  # rows of audio hidden states per segment (999 in the paper's setting)
    audio_dim: int
    text_tokens: int  # rows of text hidden states per segment (MAX_TEXT_TOKENS by default)
    text_dim: int
    shard_size: int = SHARD_SIZE  # segments per shard file


CODECS = ("zstd", "blosc-zstd", "blosc-lz4", "none")


def make_compressors(codec: str):
    """Compressor chain by name. Benchmarked in bench/store_codecs.py (docs/benchmarks.md)."""
    import zarr.codecs  # here, not at import: the CLIs answer --help without loading zarr

    if codec == "blosc-zstd":
        return (zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2),)
    if codec == "blosc-lz4":
        return (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=2),)
    if codec == "zstd":
        return (zarr.codecs.ZstdCodec(level=3),)
    if codec == "none":
        return None
    raise StoreError(f"unknown codec {codec!r}; valid: {', '.join(CODECS)}")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


STORAGE_OPTIONS_ENV = "MSMTFN_STORAGE_OPTIONS"


def _location(path) -> Path | str:
    """A local store as a Path; a remote one as its URL string (a Path would fold 's3://' into
    's3:/')."""
    if is_url(path):
        return str(path).rstrip("/")
    s = str(path)
    return Path(s[len("file://") :] if s.startswith("file://") else s)


def resolve_storage_options(given: dict | None = None) -> dict:
    """fsspec options for a remote store: ``given``, else JSON from the MSMTFN_STORAGE_OPTIONS
    variable."""
    if given:
        return dict(given)
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except ValueError as e:
        raise StoreError(
            f"{STORAGE_OPTIONS_ENV} is not JSON ({e}); set it to e.g. "
            '\'{"endpoint_url": "http://host:9000"}\' or unset it'
        ) from None
    if not isinstance(opts, dict):
        raise StoreError(f"{STORAGE_OPTIONS_ENV} must be a JSON object, not {raw!r}")
    return opts


def remote_fs(url: str, opts: dict | None = None):
    """(synchronous fsspec filesystem, path inside it) for a store URL; a fresh instance, so that
    listings cached by an earlier call never hide what another process wrote since."""
    import fsspec

    return fsspec.url_to_fs(url, skip_instance_cache=True, **resolve_storage_options(opts))


def _open_zarr_group(loc: Path | str, mode: str, opts: dict | None = None, **kw) -> zarr.Group:
    import zarr

    if isinstance(loc, str):
        from zarr.storage import FsspecStore

        store = FsspecStore.from_url(
            loc, storage_options=resolve_storage_options(opts), read_only=(mode == "r")
        )
        return zarr.open_group(store, mode=mode, **kw)
    return zarr.open_group(str(loc), mode=mode, **kw)


def _remote_bytes(url: str, opts: dict | None) -> int:
    fs, root = remote_fs(url, opts)
    try:
        return int(fs.du(root))
    except (FileNotFoundError, OSError):
        return 0


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _create_feature_arrays(group, shape: StoreShape, codec: str) -> None:
    """Hidden states (one chunk per row, sharded), lengths and the row flags."""
    n, s = shape.n, max(1, min(shape.shard_size, shape.n or 1))
    comp = checksummed(make_compressors(codec))
    small = checksummed(_plain())
    for mod, rows, dim in (
        ("audio", shape.audio_frames, shape.audio_dim),
        ("text", shape.text_tokens, shape.text_dim),
    ):
        group.create_array(
            f"{mod}/hidden",
            shape=(n, rows, dim),
            chunks=(1, rows, dim),
            shards=(s, rows, dim),
            dtype="float16",
            compressors=comp,
            fill_value=0,
        )
        group.create_array(
            f"{mod}/length", shape=(n,), chunks=(s,), dtype="int32", fill_value=0, compressors=small
        )
    for flag in ("done", "skipped"):
        group.create_array(
            flag, shape=(n,), chunks=(s,), dtype="bool", fill_value=False, compressors=small
        )
    group.create_array(
        "skip_reason", shape=(n,), chunks=(max(1, n),), dtype=str, fill_value="", compressors=small
    )


def _create_table(group, n: int, segments: list[Segment], seconds) -> None:
    """The per-row table: text columns, then numbers (NaN where unknown)."""
    cols = {
        "call_id": [x.call_id for x in segments],
        "split": [x.split for x in segments],
        "label": [x.label for x in segments],
        "source_path": [x.audio_path for x in segments],
        "variant": [x.variant for x in segments],
        "segment_id": [x.segment_id for x in segments],
        "text": [x.text for x in segments],  # the transcript, for explanations (table/text)
    }
    chunk = max(1, n)
    for name, values in cols.items():
        a = group.create_array(
            f"table/{name}",
            shape=(n,),
            chunks=(chunk,),
            dtype=str,
            fill_value="",
            compressors=checksummed(_plain()),
        )
        if segments:
            a[:] = np.array(values, dtype=object).astype(str)
    num = {
        "segment_index": np.array([x.index for x in segments], dtype=np.int32),
        "start": np.array(
            [np.nan if x.start is None else x.start for x in segments], dtype=np.float64
        ),
        "end": np.array([np.nan if x.end is None else x.end for x in segments], dtype=np.float64),
        "seconds": np.full(n, np.nan) if seconds is None else np.asarray(seconds, dtype=np.float64),
    }
    group.create_array(
        "audio/source",
        shape=(n,),
        chunks=(chunk,),
        dtype="int32",
        fill_value=-1,
        compressors=checksummed(_plain()),
    )
    if segments:
        group["audio/source"][:] = audio_sources(segments)
    for name, values in num.items():
        a = group.create_array(
            f"table/{name}",
            shape=(n,),
            chunks=(chunk,),
            dtype=values.dtype,
            fill_value=0 if values.dtype.kind == "i" else np.nan,
            compressors=checksummed(_plain()),
        )
        if segments:
            a[:] = values


def audio_sources(segments: list[Segment]) -> np.ndarray:
    """Each row's audio row: its own, or the row of the segment its ``audio_of`` names (which must
    be planned, and use its own audio)."""
    at = {x.segment_id: i for i, x in enumerate(segments)}
    out = np.arange(len(segments), dtype=np.int32)
    for i, x in enumerate(segments):
        if x.audio_of:
            j = at.get(x.audio_of)
            if j is None or segments[j].audio_of:
                raise StoreError(
                    f"row {x.segment_id}: its audio is that of {x.audio_of}, which is not a planned "
                    "row with audio of its own"
                )
            out[i] = j
    return out


class CacheStore:
    """Read/write access to one cache store. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, path: str | Path, group: zarr.Group, storage_options: dict | None = None):
        self.path = _location(path)  # a Path, or the URL string of a remote store
        self.group = group
        self.storage_options = dict(storage_options or {})
        self._check_schema()

    @property
    def remote(self) -> bool:
        return isinstance(self.path, str)

    def write_text(self, name: str, text: str) -> Path | str:
        """Write a small file (report.json) inside the store; returns its path or URL."""
        if not self.remote:
            atomic_write_text(self.path / name, text)
            return self.path / name
        fs, root = remote_fs(self.path, self.storage_options)
        fs.pipe_file(f"{root}/{name}", text.encode("utf-8"))
        return f"{self.path}/{name}"

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(
        cls, path: str | Path, mode: str = "r", storage_options: dict | None = None
    ) -> CacheStore:
        path = _location(path)
        if not _has_metadata(path, storage_options):
            raise StoreError(f"{path}: no cache store here (run msmtfn-extract to build one)")
        try:
            group = _open_zarr_group(path, mode, storage_options)
        except Exception as e:  # zarr raises several types for damaged metadata
            raise StoreError(
                f"{path}: cannot open as a Zarr store ({e}); rebuild it with msmtfn-extract --overwrite"
            ) from e
        return cls(path, group, storage_options)

    @classmethod
    def create(
        cls,
        path: str | Path,
        shape: StoreShape,
        segments: list[Segment],
        *,
        fingerprint: str,
        settings: dict,
        manifest_digest: str,
        codec: str = "zstd",
        notes: dict | None = None,
        dataset: str = "",
        label_scheme: str = "marketcalls",
        storage_options: dict | None = None,
        seconds=None,
        label_scheme_def: dict | None = None,
    ) -> CacheStore:
        """``seconds``: each planned row's audio seconds as probed (NaN where unknown), kept as
        ``table/seconds`` so that stages that never read audio (training's segment-length record,
        predict's ``duration_s``) know them for whole-file segments, which have no start/end."""
        path = _location(path)
        if segments and len(segments) != shape.n:
            raise StoreError(f"{path}: {len(segments)} segments for a store of {shape.n} rows")
        # marked until the last write below, so a creation cut short (disk full, kill) is known to
        # be ours and rebuilt by the next run instead of refused as a foreign store
        group = _open_zarr_group(path, "w", storage_options, attributes={CREATING: True})
        _create_feature_arrays(group, shape, codec)
        _create_table(group, shape.n, segments, seconds)
        group.attrs.put(
            {  # replaces the CREATING mark in the same write
                "schema_version": SCHEMA_VERSION,
                "dataset": dataset,
                "label_scheme": label_scheme,
                # a custom scheme's definition: training and predict read it from here, never from
                # its file
                **({"label_scheme_def": label_scheme_def} if label_scheme_def is not None else {}),
                "fingerprint": fingerprint,
                "manifest_digest": manifest_digest,
                "settings": settings,
                "shape": asdict(shape),
                "codec": codec,
                "notes": notes or {},
                "package_version": __version__,
                "created": _now(),
                "updated": _now(),
            }
        )
        return cls(path, group, storage_options)

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        shape: StoreShape,
        segments: list[Segment],
        *,
        fingerprint: str,
        settings: dict,
        manifest_digest: str,
        codec: str = "zstd",
        overwrite: bool = False,
        notes: dict | None = None,
        dataset: str = "",
        label_scheme: str = "marketcalls",
        storage_options: dict | None = None,
        seconds=None,
        label_scheme_def: dict | None = None,
    ) -> CacheStore:
        """The extractor's entry: resume a store made with the same fingerprint, refuse any
        other."""
        path = _location(path)
        if _exists(path, storage_options) and not overwrite:
            if not _has_metadata(path, storage_options):
                if not _is_empty(path, storage_options):
                    raise StoreError(
                        f"{path}: exists and is not a cache store; choose another --out or "
                        "remove it"
                    )
            elif creation_cut_short(path, storage_options):
                log.warning(
                    "%s: its creation was cut short (no data in it yet); creating it again", path
                )
            else:
                store = cls.open(path, mode="r+", storage_options=storage_options)
                if store.fingerprint != fingerprint:
                    diffs = diff_settings(store.settings, settings)
                    if store.attrs.get("manifest_digest") != manifest_digest:
                        diffs.append(
                            "the manifest (dataset rows, labels, splits or audio files) changed"
                        )
                    what = "; ".join(diffs) or "encoder weights changed"
                    raise FingerprintMismatch(
                        f"{path}: was built with different settings ({what}); use the same settings to resume, "
                        "another --out, or --overwrite to rebuild it"
                    )
                return store
        return cls.create(
            path,
            shape,
            segments,
            fingerprint=fingerprint,
            settings=settings,
            manifest_digest=manifest_digest,
            codec=codec,
            notes=notes,
            dataset=dataset,
            label_scheme=label_scheme,
            storage_options=storage_options,
            seconds=seconds,
            label_scheme_def=label_scheme_def,
        )

    def _check_schema(self) -> None:
        v = self.group.attrs.get("schema_version")
        if v is None:
            raise StoreError(
                f"{self.path}: not an msmtfn cache (no schema_version); rebuild with msmtfn-extract"
            )
        if v > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {v} is newer than this msmtfn understands "
                f"({SCHEMA_VERSION}); upgrade msmtfn"
            )
        if v not in READABLE_SCHEMAS:
            raise StoreError(
                f"{self.path}: unknown schema version {v}; rebuild with msmtfn-extract --overwrite"
            )

    # --------------------------------------------------------------- properties
    @property
    def checksums(self) -> bool:
        """Whether the hidden states' chunks carry CRC32C checksums (schema 2 on)."""
        import zarr.codecs

        codecs = list(self.group["audio/hidden"].metadata.codecs)
        inner = [c for x in codecs for c in getattr(x, "codecs", ())]
        return any(isinstance(c, zarr.codecs.Crc32cCodec) for c in codecs + inner)

    def read_rows(self, name: str, rows) -> np.ndarray:
        """Rows of a feature array (``audio/hidden`` …), one slice read where they are contiguous.
        A chunk that fails its checksum or does not decode is a :class:`DamagedStore` naming the
        array, the segments and the fix, never the codec's traceback nor bytes used as features."""
        arr = self.group[name]
        rows = np.asarray(rows, dtype=np.int64)
        try:
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
                return arr[int(rows[0]) : int(rows[-1]) + 1]
            return arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1))
        except Exception as e:
            if isinstance(e, (KeyboardInterrupt, MemoryError)):
                raise
            bad = self.damaged_rows(name, rows)
            if not bad:
                raise
        ids = self.group["table/segment_id"][:][bad]
        shown = ", ".join(map(str, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise DamagedStore(
            f"{self.path}: {name} is damaged for {len(bad)} segment{'s' if len(bad) != 1 else ''} "
            f"({shown}): its chunks fail their checksum or do not decode; run `msmtfn-extract "
            f"verify {self.path} --repair`, then the msmtfn-extract command that made the store "
            "(it re-encodes only those rows)",
            [int(r) for r in bad],
        ) from None

    def damaged_rows(self, name: str, rows) -> list[int]:
        """Which of ``rows`` of ``name`` cannot be read back (checksum, decoding), one at a time."""
        arr, bad = self.group[name], []
        for r in np.asarray(rows, dtype=np.int64).tolist():
            try:
                arr[r]
            except Exception as e:
                if isinstance(e, (KeyboardInterrupt, MemoryError)):
                    raise
                bad.append(r)
        return bad

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def fingerprint(self) -> str:
        return self.group.attrs["fingerprint"]

    @property
    def label_scheme(self) -> str:
        return self.group.attrs.get("label_scheme", "marketcalls")

    @property
    def label_scheme_def(self) -> dict | None:
        """A custom scheme's definition as extraction copied it (None: a built-in scheme, or an
        older store)."""
        return self.group.attrs.get("label_scheme_def")

    @property
    def scheme(self) -> LabelScheme:
        """The store's label scheme: its stored definition, else the built-in of that name."""
        try:
            return scheme_from_record(self.label_scheme, self.label_scheme_def)
        except (KeyError, ValueError) as e:
            raise StoreError(
                f"{self.path}: {e.args[0] if e.args else e}; rebuild it with msmtfn-extract "
                "--overwrite"
            ) from None

    @property
    def dataset(self) -> str:
        return self.group.attrs.get("dataset", "")

    @property
    def settings(self) -> dict:
        return dict(self.group.attrs["settings"])

    @property
    def shape(self) -> StoreShape:
        return StoreShape(**self.group.attrs["shape"])

    @property
    def n(self) -> int:
        return self.shape.n

    def array(self, name: str) -> zarr.Array:
        return self.group[name]

    def done(self) -> np.ndarray:
        return np.asarray(self.group["done"][:], dtype=bool)

    def skipped(self) -> np.ndarray:
        return np.asarray(self.group["skipped"][:], dtype=bool)

    def skip_reasons(self) -> np.ndarray:
        return np.asarray(self.group["skip_reason"][:]).astype(object)

    def table(self) -> dict[str, np.ndarray]:
        out = {}
        for name in TABLE_FIELDS:
            v = self.group[f"table/{name}"][:]
            out[name] = np.asarray(v).astype(object) if name in TABLE_STR_FIELDS else np.asarray(v)
        return out

    def segment_seconds(self) -> np.ndarray:
        """Each row's audio seconds: ``table/seconds`` (probed at extraction), else ``end - start``
        (stores made before it was kept); NaN where neither is known (an older store's whole-file
        segments)."""
        if "seconds" in self.group["table"]:
            return np.asarray(self.group["table/seconds"][:], dtype=np.float64)
        table = self.group["table"]
        return np.asarray(table["end"][:], dtype=np.float64) - np.asarray(
            table["start"][:], dtype=np.float64
        )

    def segment_texts(self) -> np.ndarray | None:
        """Each row's transcript (``table/text``), or None for a store made before it was kept."""
        if "text" not in self.group["table"]:
            return None
        return np.asarray(self.group["table/text"][:]).astype(object)

    def lengths(self, modality: str) -> np.ndarray:
        """Each row's valid rows as stored (0 in ``audio`` for a row using another's audio:
        :meth:`audio_lengths`)."""
        return np.asarray(self.group[f"{modality}/length"][:], dtype=np.int32)

    def audio_source(self) -> np.ndarray:
        """Each row's audio row (``audio/source``); every row its own in stores before schema 3."""
        if "source" not in self.group["audio"]:
            return np.arange(self.n, dtype=np.int64)
        return np.asarray(self.group["audio/source"][:], dtype=np.int64)

    def audio_lengths(self) -> np.ndarray:
        """Each row's valid audio rows, read through :meth:`audio_source`."""
        return self.lengths("audio")[self.audio_source()]

    # ----------------------------------------------------------------- writing
    def shard_ranges(self) -> list[range]:
        s = self.group["audio/hidden"].shards[0]
        return [range(i, min(i + s, self.n)) for i in range(0, self.n, s)]

    def write_slab(
        self,
        start: int,
        audio: np.ndarray,
        audio_len: np.ndarray,
        text: np.ndarray,
        text_len: np.ndarray,
    ) -> None:
        """Write contiguous rows [start, start+len). Done flags are separate (:meth:`set_done`),
        always after."""
        stop = start + len(audio_len)
        self._hidden_for_writing("audio/hidden")[start:stop] = audio
        self._hidden_for_writing("text/hidden")[start:stop] = text
        self.group["audio/length"][start:stop] = audio_len
        self.group["text/length"][start:stop] = text_len

    def _hidden_for_writing(self, name: str):
        """The array, set to store every chunk it is given: a written row always holds data, and
        zarr's check of each chunk against the fill value (on its one event-loop thread, which all
        writer threads share) halved the writer's MiB/s (docs/benchmarks.md, "Cache writing")."""
        return self.group[name].with_config({"write_empty_chunks": True})

    def read_slab(
        self, start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            self.group["audio/hidden"][start:stop],
            self.group["audio/length"][start:stop],
            self.group["text/hidden"][start:stop],
            self.group["text/length"][start:stop],
        )

    def set_flags(self, start: int, stop: int, done: np.ndarray, skipped: np.ndarray) -> None:
        """Set done/skipped flags of rows [start, stop) in one write each (one chunk when
        shard-aligned)."""
        self.group["done"][start:stop] = done
        self.group["skipped"][start:stop] = skipped

    def set_skip_reasons(self, reasons: dict[int, str]) -> None:
        if not reasons:
            return
        arr = self.group["skip_reason"]
        cur = np.asarray(arr[:]).astype(object)
        for i, r in reasons.items():
            cur[i] = r
        arr[:] = cur.astype(str)

    def touch(self, **attrs) -> None:
        self.group.attrs.update({"updated": _now(), **attrs})

    # --------------------------------------------------------------------- info
    def info(self) -> dict:
        shape = self.shape
        done, skipped = self.done(), self.skipped()
        table = self.table()
        calls_per_split: dict[str, int] = {}
        seen: set[str] = set()
        for cid, split in zip(table["call_id"], table["split"]):
            if cid in seen:
                continue
            seen.add(cid)
            calls_per_split[split or "(none)"] = calls_per_split.get(split or "(none)", 0) + 1
        try:
            scheme = self.scheme
        except StoreError:  # an unknown scheme name: describe the store anyway
            scheme = None
        labels = label_counts(scheme or self.label_scheme, table["call_id"], table["label"])
        seg_per_variant: dict[str, int] = {}
        for v in table["variant"]:
            seg_per_variant[v] = seg_per_variant.get(v, 0) + 1
        raw = (
            2
            * shape.n
            * (shape.audio_frames * shape.audio_dim + shape.text_tokens * shape.text_dim)
        )
        if self.remote:
            hidden_disk = sum(
                _remote_bytes(f"{self.path}/{m}/hidden", self.storage_options)
                for m in ("audio", "text")
            )
        else:
            hidden_disk = _dir_bytes(self.path / "audio" / "hidden") + _dir_bytes(
                self.path / "text" / "hidden"
            )
        own_audio = self.audio_source() == np.arange(shape.n)
        written_raw = 2 * (
            int((done & own_audio).sum()) * shape.audio_frames * shape.audio_dim
            + int(done.sum()) * shape.text_tokens * shape.text_dim
        )
        a = self.attrs
        return {
            "path": str(self.path),
            "schema_version": a["schema_version"],
            "dataset": a.get("dataset"),
            "label_scheme": a.get("label_scheme"),
            **({"label_scheme_def": a["label_scheme_def"]} if "label_scheme_def" in a else {}),
            "label_tasks": {t.name: list(t.classes) for t in scheme.tasks} if scheme else {},
            "class_descriptions": dict(scheme.class_descriptions) if scheme else {},
            "fingerprint": a["fingerprint"],
            "package_version": a.get("package_version"),
            "created": a.get("created"),
            "updated": a.get("updated"),
            "settings": a["settings"],
            "codec": a.get("codec"),
            "checksums": self.checksums,
            "shape": asdict(shape),
            "segments_total": shape.n,
            "segments_done": int(done.sum()),
            "segments_skipped": int(skipped.sum()),
            "segments_pending": int((~done & ~skipped).sum()),
            "calls": len(seen),
            "calls_per_split": calls_per_split,
            "calls_per_label": labels.get("calls per label", {}),
            # calls per label, or segments per class of each task (segment-level labels)
            "labels": labels,
            "segments_per_variant": seg_per_variant,
            # text variants: rows that read their original's audio rows (none stored for them)
            "rows_sharing_audio": int((~own_audio).sum()),
            "bytes_on_disk": _remote_bytes(self.path, self.storage_options)
            if self.remote
            else _dir_bytes(self.path),
            "hidden_bytes_uncompressed": raw,
            "compression_ratio_written": (written_raw / hidden_disk)
            if hidden_disk and written_raw
            else math.nan,
        }


def _reach(url: str, opts: dict | None, key: str) -> bool:
    """Whether ``key`` exists under a store URL; an unreachable endpoint, missing credentials or a
    missing fsspec backend (s3fs) become one StoreError line."""
    try:
        fs, root = remote_fs(url, opts)
        return bool(fs.exists(f"{root}/{key}" if key else root))
    except StoreError:
        raise
    # botocore, aiohttp and fsspec raise many types; the message is what helps
    except Exception as e:
        raise StoreError(
            f"{url}: cannot reach the store ({type(e).__name__}: {e}); check the URL, the credentials "
            "and the endpoint (AWS_ENDPOINT_URL or MSMTFN_STORAGE_OPTIONS)"
        ) from None


def _exists(loc: Path | str, opts: dict | None = None) -> bool:
    if isinstance(loc, Path):
        return loc.exists()
    return _reach(loc, opts, "")


def _has_metadata(loc: Path | str, opts: dict | None = None) -> bool:
    if isinstance(loc, Path):
        return (loc / "zarr.json").is_file()
    return _reach(loc, opts, "zarr.json")


def _is_empty(loc: Path | str, opts: dict | None = None) -> bool:
    if isinstance(loc, Path):
        return not any(loc.iterdir())
    fs, root = remote_fs(loc, opts)
    try:
        return not fs.ls(root)
    except FileNotFoundError:
        return True


def creation_cut_short(path: Path | str, opts: dict | None = None) -> bool:
    """A store whose creation was interrupted before any data (its metadata says so): safe to create
    again."""
    try:
        attrs = dict(_open_zarr_group(path, "r", opts).attrs)
    except Exception:  # damaged metadata: not provably ours; open() will explain
        return False
    return bool(attrs.get(CREATING)) and "schema_version" not in attrs


def remove_partial_writes(path: str | Path) -> int:
    """Delete the ``*.partial`` temporary files a killed writer left in a local store (zarr's
    LocalStore writes each chunk to one and renames it into place, so they are never part of the
    data). Call with the store's lock held; returns how many were removed. Remote (object) stores
    have none: an object is written whole or not at all."""
    if is_url(path):
        return 0
    root = Path(path)
    if not root.is_dir():
        return 0
    n = 0
    for tmp in root.rglob("*.partial"):
        try:
            tmp.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
