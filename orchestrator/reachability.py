"""Outside services answer, or the command stops in one line, within a stated bound.

Before a sweep starts (before anything is written or Ray starts) a Ray address given as
``HOST:PORT`` or ``ray://HOST:PORT`` and a server of the MLflow tracking URI
(:mod:`orchestrator.tracking_store`) must accept a TCP connection within :data:`CONNECT_TIMEOUT_S`;
otherwise Ray and MLflow retry for minutes against a port where nothing listens.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from pathlib import Path

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


def check_ray_address(address: str | None) -> str | None:
    """``None`` is embedded Ray; ``local`` is Ray's to resolve; ``auto`` must find a cluster of this
    user's (:func:`resolve_auto_address`); an empty address is refused (it would silently mean
    embedded); ``HOST:PORT`` and ``ray://HOST:PORT`` (and what ``auto`` found) must answer.
    Returns the address to join (``auto`` resolved, so Ray cannot pick another cluster later)."""
    if address is None:
        return None
    text = address.strip()
    if not text:
        raise UserInputError("--address is empty; give HOST:PORT, ray://HOST:PORT or auto (or leave it out: "
                             "embedded Ray on this machine)")
    if text == "local":
        return text
    if text == "auto":
        text = resolve_auto_address()
        print(f"--address auto: the Ray cluster at {text}", file=sys.stderr)
    bare = text.removeprefix("ray://")
    host, port = _endpoint(bare, "--address")
    check_answers(host, port, "--address: nothing answers at")
    return text


def local_cluster_owners(address: str) -> set[str]:
    """The users whose raylet on this machine belongs to the Ray cluster whose GCS is at ``address``
    (``--gcs-address=`` on the raylet's command line, as Ray's own ``auto`` lookup reads it)."""
    import psutil

    owners = set()
    for proc in psutil.process_iter(["cmdline", "username"]):
        cmdline = proc.info.get("cmdline") or []
        if not cmdline or os.path.basename(cmdline[0].split(" ", 1)[0]) != "raylet":
            continue
        args = [part for arg in cmdline for part in arg.split(" ")]
        if f"--gcs-address={address}" in args and proc.info.get("username"):
            owners.add(proc.info["username"])
    return owners


def auto_address_problem(address: str, owners: set[str], me: str) -> str | None:
    """Why ``--address auto`` must not join the cluster at ``address`` (None when it may): it is
    someone else's (every raylet of it here runs as another user)."""
    if owners and me not in owners:
        return (f"--address auto found the Ray cluster at {address}, started by {', '.join(sorted(owners))}, not "
                f"by you ({me}); give --address {address} to join it on purpose, or start your own (ray start --head)")
    return None


def resolve_auto_address() -> str:
    """The cluster ``--address auto`` means: the one the last ``ray start`` on this machine joined
    (the address file Ray keeps in its temp folder), refused when another user started it. Ray's own
    ``auto`` falls back to any Ray running here, an embedded Ray of another process included; a
    sweep never joins one of those silently."""
    from ray._common.utils import get_ray_address_file

    where = Path(get_ray_address_file(None))
    try:
        address = where.read_text().strip() if where.is_file() else ""
    except OSError as exc:
        raise UserInputError(f"--address auto: {where} cannot be read ({exc.strerror})") from None
    if not address:
        raise UserInputError(f"--address auto: no `ray start` on this machine left a cluster address ({where}); "
                             "start one (ray start --head) or give HOST:PORT")
    owners = local_cluster_owners(address)
    if not owners:  # no raylet of it here (this machine is not a node of it): who wrote the file
        import pwd

        try:
            owners = {pwd.getpwuid(where.stat().st_uid).pw_name}
        except (KeyError, OSError):
            owners = set()
    problem = auto_address_problem(address, owners, getpass.getuser())
    if problem is not None:
        raise UserInputError(problem)
    return address
