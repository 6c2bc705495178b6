"""Serving a study with waitress (a production WSGI server: a fixed pool of worker threads, no C
extensions, runs the same on Linux, macOS and Windows).

:func:`serve` blocks until Ctrl-C; :class:`BackgroundServer` runs the same server in a thread and
stops it cleanly (for notebooks and tests).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from pathlib import Path
from types import TracebackType

from waitress import create_server, wasyncore

from molma.humaneval.store import Study
from molma.humaneval.web import create_app

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server(
    study: Study | str | Path,
    host: str,
    port: int,
    threads: int,
    url_scheme: str,
    socket_map: dict | None = None,
) -> object:
    app = create_app(study)
    return create_server(
        app,
        map=socket_map,
        host=host,
        port=port,
        threads=threads,
        url_scheme=url_scheme,
        ident="molma-human-eval",
        clear_untrusted_proxy_headers=True,
        max_request_body_size=1 << 20,
        channel_timeout=60,
    )


def serve(
    study: Study | str | Path,
    *,
    host: str = LOOPBACK,
    port: int = 8000,
    threads: int = 8,
    url_scheme: str = "http",
    on_ready: object = None,
) -> None:
    """Serve a study until interrupted. ``on_ready(url)`` is called once the socket is bound."""
    server = _server(study, host, port, threads, url_scheme)
    url = f"{url_scheme}://{_url_host(server.effective_host)}:{server.effective_port}/"  # type: ignore[attr-defined]
    if callable(on_ready):
        on_ready(url)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (systemd, docker stop, kill) exits like Ctrl-C; saves are committed per request anyway.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    server.run()  # type: ignore[attr-defined]


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class BackgroundServer:
    """A real waitress server on a free loopback port, in a daemon thread; ``with`` stops it.

    ``url`` is known once constructed (the socket is bound in ``__init__``).
    """

    def __init__(
        self, study: Study | str | Path, *, host: str = LOOPBACK, port: int = 0, threads: int = 8
    ) -> None:
        self._map: dict = {}
        self._stop = threading.Event()
        self._server = _server(study, host, port, threads, "http", socket_map=self._map)
        self.port: int = self._server.effective_port  # type: ignore[attr-defined]
        self.url = f"http://{_url_host(self._server.effective_host)}:{self.port}"  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._loop, name=f"molma-human-eval:{self.port}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set() and self._map:
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
        for channel in list(self._map.values()):
            channel.close()
        self._server.task_dispatcher.shutdown(timeout=5)  # type: ignore[attr-defined]

    @property
    def running(self) -> bool:
        """Whether the serving thread is alive."""
        return self._thread.is_alive()

    def start(self) -> BackgroundServer:
        """Start serving (returns self)."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close connections, wait for the worker threads."""
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
