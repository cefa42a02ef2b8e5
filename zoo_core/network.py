"""Whether a download host can be reached, and how long Zoo waits for the network.

Before anything is downloaded, the host of the URL (or the proxy that carries it) must accept
a TCP connection within ``ZOO_CONNECT_TIMEOUT`` seconds; the answer is remembered per host for
the process. A machine with no network thus fails in seconds with one error that names the
fixes, instead of waiting through a library's retries. ``ZOO_DOWNLOAD_TIMEOUT`` bounds each
wait for data once connected. Both are read from the environment on every call.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator

from .errors import UnreachableError, ZooError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 60.0
_DEFAULT_PORTS = {"http": 80, "https": 443}

# (host, port) -> why it cannot be reached, or None when it accepted a connection
_answers: dict[tuple[str, int], str | None] = {}


def _seconds(variable: str, default: float) -> float:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ZooError(f"{variable} must be a number of seconds > 0, got {raw!r}")
    return value


def connect_timeout() -> float:
    """``$ZOO_CONNECT_TIMEOUT``: seconds a download host has to accept a connection (default 3)."""
    return _seconds("ZOO_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S)


def download_timeout() -> float:
    """``$ZOO_DOWNLOAD_TIMEOUT``: seconds a download may wait for data before it fails (default 60)."""
    return _seconds("ZOO_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT_S)


def hf_endpoint() -> str:
    """The Hugging Face Hub endpoint: ``$HF_ENDPOINT`` now, else what huggingface_hub chose at import."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or constants.ENDPOINT


def _address(url: str) -> tuple[str, int] | None:
    """The host and port a request for ``url`` connects to: its proxy's when one applies."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
    except ValueError:  # a malformed port: let the download itself report the URL
        return None


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` does not accept a TCP connection within ``timeout``, or None when it does.

    The attempt runs in a daemon thread because name resolution ignores socket timeouts: a
    resolver that hangs must not hold the command up either.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except socket.gaierror:
            outcome.append(f"cannot resolve {host}")
        except ConnectionRefusedError:
            outcome.append("connection refused")
        except TimeoutError:
            outcome.append(f"no answer within {timeout:g}s")
        except OSError as exc:
            outcome.append(exc.strerror or str(exc))

    thread = threading.Thread(target=attempt, name=f"zoo-probe-{host}:{port}", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g}s"


def require_reachable(url: str, *, name: str | None = None, what: str | None = None) -> None:
    """Return when the host that serves ``url`` accepts a TCP connection; raise otherwise.

    :param url: what is about to be downloaded (``http(s)://``; other schemes are not checked).
    :param name: the model name the download is for, used in the suggested ``zoo import``.
    :param what: the file being downloaded, for the message (default: the URL).
    :raises UnreachableError: when the host refuses, cannot be resolved or does not answer
        within ``ZOO_CONNECT_TIMEOUT`` seconds; one line naming the fixes.
    """
    timeout = connect_timeout()
    address = _address(url)
    if address is None:
        return
    if address not in _answers:
        _answers[address] = _probe(*address, timeout)
        log.debug("reachability of %s:%s: %s", *address, _answers[address] or "ok")
    reason = _answers[address]
    if reason is None:
        return
    host, port = address
    prefix = f"{name}: " if name else ""
    raise UnreachableError(
        f"{prefix}cannot reach {host}:{port} ({reason}) to download {what or url}; "
        f"if this machine has no network, copy the weights over and run `zoo import {name or 'NAME'} FILE`, "
        "train from scratch with `zoo finetune --no-pretrained`, or set ZOO_OFFLINE=1 to use cached weights only"
    )


def forget_hosts() -> None:
    """Forget which hosts were reachable (for tests, or a process whose network changed)."""
    _answers.clear()


class _ToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("huggingface_hub: %s", record.getMessage())
        return False


@contextlib.contextmanager
def hf_retries_at_debug() -> Iterator[None]:
    """While a hub download runs, send huggingface_hub's retry warnings to Zoo's debug log.

    Its logger has a handler of its own and also propagates, so every retry would print twice
    (about twenty lines over half a minute); Zoo reports the outcome as one error instead.
    """
    http_log = logging.getLogger("huggingface_hub.utils._http")
    quiet = _ToDebug()
    http_log.addFilter(quiet)
    try:
        yield
    finally:
        http_log.removeFilter(quiet)
