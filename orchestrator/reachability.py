"""Outside services answer, or the command stops in one line, within a stated bound.

Before a sweep starts (before anything is written or Ray starts) a Ray address given as
``HOST:PORT`` or ``ray://HOST:PORT`` and a server of the MLflow tracking URI
(:mod:`orchestrator.tracking_store`) must accept a TCP connection within :data:`CONNECT_TIMEOUT_S`;
otherwise Ray and MLflow retry for minutes against a port where nothing listens.
"""

from __future__ import annotations

import socket

from mgas_common.errors import UserInputError

CONNECT_TIMEOUT_S = 5.0


def _endpoint(text: str, what: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``; a one-line error naming ``what`` when it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserInputError(f"{what} {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port)


def check_answers(host: str, port: int, what: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to ``host:port`` opens within ``timeout_s``, else a one-line error."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise UserInputError(f"{what} {host}:{port}: {reason}")


def check_ray_address(address: str | None) -> None:
    """``None`` is embedded Ray; ``auto`` and ``local`` are Ray's to resolve; an empty address is
    refused (it would silently mean embedded); ``HOST:PORT`` and ``ray://HOST:PORT`` must answer."""
    if address is None:
        return
    text = address.strip()
    if not text:
        raise UserInputError("--address is empty; give HOST:PORT, ray://HOST:PORT or auto (or leave it out: "
                             "embedded Ray on this machine)")
    if text in ("auto", "local"):
        return
    bare = text.removeprefix("ray://")
    host, port = _endpoint(bare, "--address")
    check_answers(host, port, "--address: nothing answers at")
