"""Starting or joining Ray: embedded by default, an existing cluster with --address/RAY_ADDRESS.

Defaults are safe: usage stats off, the dashboard (and with it the job server) off; when a user
enables the dashboard it binds to 127.0.0.1 unless a host is given explicitly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from mgas_core.errors import UserInputError

SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "cephfs", "ceph",
                      "glusterfs", "fuse.", "9p", "efs", "panfs", "wekafs")


def short_temp_dir() -> str:
    """Ray's socket paths must stay under ~107 characters: a short folder in /tmp, or the folder
    ``$MGAS_RAY_TEMP_DIR`` names (tests give every embedded Ray its own)."""
    return os.environ.get("MGAS_RAY_TEMP_DIR") or str(Path(tempfile.gettempdir()) / f"mgas-ray-{os.getuid()}")


def ray_is_running() -> bool:
    """True when this process is already connected to Ray (then ``mgas run`` uses that cluster)."""
    import ray

    return ray.is_initialized()


def filesystem_type(path: Path) -> str:
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        inside = len(parts) >= 3 and (str(path) == parts[1] or str(path).startswith(parts[1].rstrip("/") + "/"))
        if inside and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def storage_is_shared(storage: str) -> bool:
    scheme = urlparse(storage).scheme
    if scheme and scheme != "file":
        return True  # s3://, gs://, hdfs://, abfs:// ...
    local = Path(urlparse(storage).path if scheme == "file" else storage)
    probe = local
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    kind = filesystem_type(probe)
    return any(kind == fs or kind.startswith(fs) for fs in SHARED_FILESYSTEMS)


LOOPBACK = "127.0.0.1"


def embedded_init_kwargs(dashboard: bool = False, dashboard_host: str | None = None) -> dict[str, object]:
    """``ray.init`` arguments of embedded Ray: the dashboard (and the job server it hosts) off unless
    asked for; when on, bound to 127.0.0.1 unless ``dashboard_host`` names another address."""
    if dashboard_host is not None and not dashboard:
        raise UserInputError("--dashboard-host needs --dashboard (the dashboard is off by default)")
    return {
        "num_cpus": os.cpu_count(),
        "include_dashboard": dashboard,
        "dashboard_host": dashboard_host or LOOPBACK,
        "_temp_dir": short_temp_dir(),
        "log_to_driver": False,
        "logging_level": "WARNING",
    }


def init_ray(address: str | None, dashboard: bool = False, dashboard_host: str | None = None) -> bool:
    """Start embedded Ray (returns True) or connect to ``address`` (returns False)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        if dashboard or dashboard_host:
            raise UserInputError("--dashboard applies to embedded Ray; a cluster's dashboard is set up where "
                                 "the cluster was started (ray start --include-dashboard ...)")
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserInputError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
        return False
    kwargs = embedded_init_kwargs(dashboard, dashboard_host)
    if dashboard:
        try:
            import aiohttp  # noqa: F401  (the dashboard's server)
        except ImportError as exc:
            raise UserInputError("--dashboard needs the dashboard's packages: pip install 'ray[default]'") from exc
    ray.init(**kwargs)
    return True


def check_cluster_storage(storage: str, declared_shared: bool) -> None:
    """On a multi-node cluster the trials' checkpoints and results must live on shared storage."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or declared_shared or storage_is_shared(storage):
        return
    raise UserInputError(
        f"storage_path {storage} is on a local {filesystem_type(Path(storage))} filesystem, but the cluster has "
        f"{len(nodes)} nodes: set storage_path in the experiment to shared storage (an NFS mount, s3://...) or "
        "set shared_storage: true if this path is mounted on every node")
