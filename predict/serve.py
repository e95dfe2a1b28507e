"""``msmtfn-serve``'s HTTP face: a FastAPI app over :class:`predict.service.Scorer`.

    GET  /healthz      alive (always 200 while the process serves)
    GET  /readyz       200 once the run is loaded, 503 before (or with the reason it failed)
    GET  /v1/info      label scheme, tasks and classes, encoders, run id          (API key)
    POST /v1/predict   multipart: audio, [transcript JSON], [call_id], [explain]  (API key)

Uploads are parsed as they stream in (python-multipart): the body is counted and refused with 413
once over ``--max-upload-mb`` (before it is all read; at once when Content-Length says so), the
recording goes to a file of a private folder (0700) under a name of the server's choosing (the
client's filename gives only its extension, which picks the decoder) and is removed after. Every
4xx/5xx is ``{"error": "one line"}``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .serve_config import ServeConfig
from .service import RequestError, transcript_pieces

log = logging.getLogger(__name__)

FIELD_LIMIT = 16 * 2**20  # a text field (the transcript JSON of a long call fits)
# an extension that names a format; anything else is saved without one (soundfile sniffs it)
SAFE_EXT = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
CALL_ID = re.compile(r"^[\w.:@+-]{1,200}$")

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["audio"],
                    "properties": {
                        "audio": {"type": "string", "format": "binary"},
                        "transcript": {
                            "type": "string",
                            "description": 'JSON list of {"start", "end", "text"} in seconds',
                        },
                        "call_id": {"type": "string"},
                        "explain": {"type": "boolean", "default": False},
                        "customer_channel": {
                            "type": "string",
                            "description": "left | right | N, for a run trained on each call's "
                            "customer channel",
                        },
                    },
                }
            }
        },
    }
}


class _Upload:
    """One request's multipart body: text fields in memory, the ``audio`` part in a file."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.fields: dict[str, bytes] = {}
        self.audio: Path | None = None
        self._name = b""
        self._value = b""
        self._part: dict = {}
        self._file = None
        self.received = 0

    # python-multipart callbacks
    def on_part_begin(self):
        self._part = {"disposition": b"", "data": bytearray()}

    def on_header_field(self, data, start, end):
        self._name += data[start:end]

    def on_header_value(self, data, start, end):
        self._value += data[start:end]

    def on_header_end(self):
        if self._name.lower() == b"content-disposition":
            self._part["disposition"] = self._value
        self._name = self._value = b""

    def on_headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, opts = parse_options_header(self._part["disposition"])
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        self._part["name"] = name
        if name == "audio":
            if self.audio is not None:
                raise RequestError("more than one audio part; send one recording per request")
            ext = os.path.splitext(opts.get(b"filename", b"").decode("utf-8", "replace"))[1]
            self.audio = self.folder / (
                uuid.uuid4().hex + (ext.lower() if SAFE_EXT.match(ext) else "")
            )
            self._file = open(self.audio, "xb")

    def on_part_data(self, data, start, end):
        if self._file is not None:
            self._file.write(data[start:end])
            return
        if len(self._part["data"]) + end - start > FIELD_LIMIT:
            raise RequestError(
                f"field {self._part.get('name')!r} is over {FIELD_LIMIT >> 20} MB", 413
            )
        self._part["data"] += data[start:end]

    def on_part_end(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._part.get("name"):
            self.fields[self._part["name"]] = bytes(self._part["data"])

    def close(self):
        if self._file is not None:
            self._file.close()

    async def read(self, request: Request) -> None:
        from python_multipart import MultipartParser
        from python_multipart.exceptions import FormParserError
        from python_multipart.multipart import parse_options_header

        kind, params = parse_options_header(request.headers.get("content-type", ""))
        if kind != b"multipart/form-data" or b"boundary" not in params:
            raise RequestError(
                "send the recording as multipart/form-data (a field named audio)", 415
            )
        callbacks = {n: getattr(self, n) for n in dir(self) if n.startswith("on_")}
        parser = MultipartParser(params[b"boundary"], callbacks)
        try:
            async for chunk in self._chunks(request):
                parser.write(chunk)
            parser.finalize()
        except ClientDisconnect:
            raise RequestError("the client went away before its upload was complete", 400) from None
        except FormParserError as e:
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RequestError(f"malformed multipart body ({line})", 400) from None

    async def _chunks(self, request: Request):
        async for chunk in request.stream():
            self.received += len(chunk)
            if self.received > self.limit:
                raise RequestError(_too_large(self.limit), 413)
            yield chunk


def _too_large(limit: int) -> str:
    return f"request body is over {limit / 2**20:g} MB (--max-upload-mb)"


def _form(up: _Upload) -> tuple[list | None, str, bool, str | None]:
    """The request's transcript, call id, explain flag and customer channel from its text
    fields."""
    transcript = None
    if "transcript" in up.fields:
        try:
            transcript = json.loads(up.fields["transcript"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise RequestError(f"transcript is not JSON ({str(e).splitlines()[0]})") from None
    call_id = up.fields.get("call_id", b"").decode("utf-8", "replace").strip() or uuid.uuid4().hex
    if not CALL_ID.match(call_id):
        raise RequestError("call_id: up to 200 letters, digits and . _ - : @ +")
    flag = up.fields.get("explain", b"false").decode("ascii", "replace").strip().lower()
    if flag not in ("true", "false", "1", "0", "yes", "no", ""):
        raise RequestError(f"explain: {flag!r}; give true or false")
    customer = up.fields.get("customer_channel", b"").decode("ascii", "replace").strip() or None
    return transcript, call_id, flag in ("true", "1", "yes"), customer


class _State:
    """The app's scorer, loaded in the background so that /healthz answers while it loads."""

    def __init__(self, key: str | None):
        self.key = key
        self.scorer = None
        self.error: str | None = None
        self.ready = threading.Event()

    def load(self, load, run: str) -> None:
        try:
            self.scorer = load()
            log.info("ready: %s", run)
        except Exception as e:  # the reason on /readyz and in the log, once
            self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.error("cannot load %s: %s", run, self.error)
        self.ready.set()

    def authorise(self, request: Request) -> None:
        key = self.key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if not (
            scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
        ):
            raise RequestError("missing or wrong API key: send 'Authorization: Bearer KEY'", 401)

    def loaded(self):
        if self.error:
            raise RequestError(f"the model could not be loaded: {self.error}", 503)
        if self.scorer is None:
            raise RequestError("the model is still loading; retry in a few seconds", 503)
        return self.scorer


def create_app(cfg: ServeConfig, key: str | None, load) -> FastAPI:
    """The app; ``load()`` returns the :class:`Scorer` (called once, in a thread, at start-up).
    ``key``: the API key /v1/ requires (None: none)."""
    state = _State(key)
    folder = Path(tempfile.mkdtemp(prefix="msmtfn-serve-"))  # mkdtemp: mode 0700
    limit = int(cfg.max_upload_mb * 2**20)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(
            target=state.load, args=(load, cfg.run), name="msmtfn-load", daemon=True
        ).start()
        yield
        if state.scorer is not None:  # after uvicorn finished the requests in flight
            await run_in_threadpool(state.scorer.close)
        shutil.rmtree(folder, ignore_errors=True)

    app = FastAPI(title="msmtfn-serve", version="1", lifespan=lifespan)
    app.state.serve = state
    app.state.upload_folder = folder
    _errors_as_json(app)

    @app.get("/healthz")
    def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz():
        if state.scorer is None:
            why = state.error or "loading"
            return JSONResponse({"status": "not ready", "error": why}, status_code=503)
        return {"status": "ready"}

    @app.get("/v1/info")
    def info(request: Request):
        state.authorise(request)
        return state.loaded().info()

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request):
        state.authorise(request)
        s = state.loaded()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(_too_large(limit), 413)
        up = _Upload(folder, limit)
        try:
            await up.read(request)
            if up.audio is None:
                raise RequestError("no audio part: send the recording in a field named audio")
            transcript, call_id, explain, customer = _form(up)
            pieces = None if transcript is None else transcript_pieces(transcript)
            return await run_in_threadpool(
                s.score, str(up.audio), call_id, pieces, explain, customer
            )
        finally:
            up.close()
            if up.audio is not None:
                up.audio.unlink(missing_ok=True)

    return app


def _errors_as_json(app: FastAPI) -> None:
    """Every error as ``{"error": "one line"}``."""

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request, exc):
        log.exception("request failed")
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse({"error": f"internal error: {line}"}, status_code=500)
