"""An MLflow tracking URI is checked before a sweep starts: a store MLflow can open and log to, or one line.

MLflow itself finds out at the first trial's first log, after Ray started (a traceback for an
unknown scheme or a plain folder, a SQLite path under a file; minutes of retries against an HTTP
server that does not answer or is not MLflow). Here, before anything is written or Ray starts and
within :data:`~orchestrator.reachability.CONNECT_TIMEOUT_S` per connection:

- the scheme is one MLflow stores runs in: ``http(s)://`` (a tracking server), ``sqlite:///PATH``
  and the other SQLAlchemy databases (``postgresql://``, ``mysql://``, ``mssql://``), or
  ``databricks``; a plain folder or ``file://`` is MLflow's file store, which MLflow 3 refuses unless
  ``MLFLOW_ALLOW_FILE_STORE`` is set;
- a server answers, is an MLflow tracking server (its REST API answers a read) and lets this user
  in (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``, as MLflow sends them);
- a SQLite file is a file (or can be created: its first existing folder is a folder this user can
  write), never in memory;
- a database has its driver installed and its host answers.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mgas_common.errors import UserInputError
from orchestrator.reachability import CONNECT_TIMEOUT_S, check_answers

FIELD = "tracking.mlflow.uri"
DATABASES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SCHEMES = ("http", "https", "sqlite", *DATABASES, "databricks")
SQLITE_HEADER = b"SQLite format 3\x00"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def check_tracking_store(uri: str | None, experiment: str) -> None:
    """Refuse, in one line naming :data:`FIELD`, a tracking URI MLflow could not log ``experiment``
    to. ``None`` is the default SQLite store in the experiment folder (the folder's own checks)."""
    if uri is None:
        return
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith("databricks") else ""
    base = scheme.split("+", 1)[0]
    if base in ("", "file"):
        if _truthy("MLFLOW_ALLOW_FILE_STORE"):
            return
        raise UserInputError(f"{FIELD} {uri!r} is a folder: MLflow's file store, which MLflow 3 refuses by default; "
                             "use sqlite:///PATH/mlflow.db, a server (http://HOST:PORT), or leave the URI out (a "
                             "SQLite store in the experiment folder)")
    if base not in SCHEMES:
        raise UserInputError(f"{FIELD} {uri!r}: MLflow cannot store runs at a {scheme}:// URI; use one of "
                             f"{', '.join(s + '://' for s in SCHEMES[:-1])} or databricks")
    if base in ("http", "https"):
        _check_server(uri, experiment)
    elif base == "sqlite":
        _check_sqlite(uri)
    elif base in DATABASES:
        _check_database(uri, base)


def _check_server(uri: str, experiment: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        raise UserInputError(f"{FIELD} {uri!r}: no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UserInputError(f"{FIELD} {uri!r}: the port is not in 1..65535") from None
    check_answers(parts.hostname, port, f"{FIELD}: no MLflow server answers at")
    query = urllib.parse.urlencode({"experiment_name": experiment})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
            json.loads(response.read(1 << 20))
        return
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(1 << 16)
    except (OSError, ValueError) as exc:  # timeouts, resets, TLS errors, a 200 that is not JSON
        raise UserInputError(f"{FIELD} {uri}: not an MLflow tracking server ({' '.join(str(exc).split())[:200]})") \
            from None
    if status in (401, 403):
        raise UserInputError(f"{FIELD} {uri}: the server refuses this user (HTTP {status}); set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
    try:
        code = json.loads(body).get("error_code")
    except (ValueError, AttributeError):
        code = None
    if status == 404 and code == "RESOURCE_DOES_NOT_EXIST":  # an MLflow server without that experiment yet
        return
    raise UserInputError(f"{FIELD} {uri}: not an MLflow tracking server (HTTP {status} from its REST API "
                         "/api/2.0/mlflow)")


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client sends, from the same environment variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _check_sqlite(uri: str) -> None:
    rest = uri.split("://", 1)[1]
    if not rest.startswith("/") or rest == "/" or rest.startswith("/:memory:"):
        raise UserInputError(f"{FIELD} {uri!r}: a SQLite store in memory is lost when the sweep ends; use "
                             "sqlite:///PATH (relative) or sqlite:////ABSOLUTE/PATH")
    path = Path(urllib.parse.unquote(rest[1:].split("?", 1)[0])).expanduser()
    if path.is_dir():
        raise UserInputError(f"{FIELD} {uri!r}: {path} is a folder; name the database file in it "
                             "(sqlite:///.../mlflow.db)")
    if path.exists():
        try:
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise UserInputError(f"{FIELD} {uri!r}: {path} cannot be read ({exc.strerror})") from None
        if head and head != SQLITE_HEADER:
            raise UserInputError(f"{FIELD} {uri!r}: {path} is not a SQLite database")
        if not os.access(path, os.W_OK):
            raise UserInputError(f"{FIELD} {uri!r}: {path} is not writable by this user")
        return
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserInputError(f"{FIELD} {uri!r}: {folder} is a file, so {path} cannot be created under it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"{FIELD} {uri!r}: {folder} is not writable by this user, so {path} cannot be created")


def _check_database(uri: str, base: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise UserInputError(f"{FIELD} {uri!r}: {' '.join(str(exc).split())[:200]}") from None
    except ImportError as exc:
        raise UserInputError(f"{FIELD}: the {base} driver {dialect.driver!r} is not installed ({exc}); install "
                             f"it, or name an installed one as {base}+DRIVER://") from None
    if url.host:
        check_answers(url.host, url.port or DATABASES[base], f"{FIELD}: no {base} server answers at")
