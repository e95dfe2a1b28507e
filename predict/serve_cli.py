"""``msmtfn-serve``: a trained run scoring calls over HTTP (FastAPI on uvicorn; predict/serve.py).

Exit status: 0 after a clean shutdown (SIGTERM or Ctrl-C: the requests in flight are answered
first), 1 the run could not be loaded or the port could not be bound (one line), 2 bad usage
(settings that cannot work, a non-loopback --host without an API key).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

import click

from pipeline.cli import cli_errors, device_callback, field_options

from .serve_config import ServeConfig, ServeError, check_exposure, read_api_key

GRACEFUL_SECONDS = 120  # the longest a shutdown waits for requests in flight


def _help(name: str) -> str:
    return ServeConfig.__dataclass_fields__[name].metadata["help"]


_CUSTOM = {
    "run": click.option(
        "--run", "run", required=True, type=click.Path(file_okay=False), help=_help("run")
    ),
    "device": click.option(
        "--device",
        default="auto",
        show_default=True,
        help=_help("device"),
        callback=device_callback(),
    ),
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@field_options(ServeConfig, custom=_CUSTOM)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="info: a line per request and per scored call; warning: problems only.",
)
def main(log_level: str, **kw):
    """Score calls over HTTP: POST /v1/predict with a recording (and its transcript), as
    msmtfn-predict would score it (README, "Serving")."""
    with cli_errors(usage=(ServeError,)):
        cfg = ServeConfig(**kw)
        key = read_api_key(cfg)
        check_exposure(cfg, key)
    from .cli import _check_paths, _run_folder

    run = _run_folder(cfg.run)
    _check_paths(run, None, None)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from pipeline.memory import map_large_allocations

    map_large_allocations()  # request after request of changing shapes: a heap that does not grow
    sys.exit(serve(cfg, key, run))


def _server_class():
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    class Server(uvicorn.Server):
        """uvicorn's server, except that a stop by SIGTERM/SIGINT, once the requests in flight are
        answered, exits 0 (uvicorn raises the signal again afterwards: exit 143 for a clean stop)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            before = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

    return Server


def serve(cfg: ServeConfig, key: str | None, run: str) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a clean stop, 1 when the run failed to load."""
    import uvicorn

    from pipeline.device import resolve_device

    from .serve import create_app
    from .service import Scorer

    device = str(resolve_device(cfg.device))
    cfg = ServeConfig(**{**cfg.__dict__, "run": run})
    server = None
    _Server = _server_class()

    def load():
        try:
            return Scorer(cfg, device)
        except Exception:
            server.should_exit = True  # a server that cannot score stops (exit 1), it does not idle
            raise

    app = create_app(cfg, key, load)
    server = _Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level=logging.getLogger().level,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            proxy_headers=False,
            server_header=False,
        )
    )
    server.run()
    state = app.state.serve
    if state.error:
        click.echo(f"msmtfn-serve: {state.error}", err=True)
        return 1
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":
    main()
