"""Starting or joining Ray: embedded by default, an existing cluster with --address/RAY_ADDRESS.

Defaults are safe: usage stats off, the dashboard (and with it the job server) off; when a user
enables the dashboard it binds to 127.0.0.1 unless a host is given explicitly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mgas_common.errors import UserInputError

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
        "_system_config": {
            # Ray prestarts a worker per CPU at the driver's start; Tune starts the workers its trials
            # need as they start (a 2-CPU trial leaves a prestarted one idle), and with the trials in
            # the driver's environment (trials_in_driver_environment) prestarting did not bring the
            # first trial forward (benchmarks.diagnostics.sweep_start, docs/performance.md)
            "prestart_worker_first_driver": False,
            # the metrics Ray's processes export are read only by the dashboard (and a Prometheus
            # scraping it); without it, collecting them costs its agent, GCS and raylet CPU that the
            # trials would have (benchmarks.orchestration)
            "enable_metrics_collection": dashboard,
        },
    }


def skipped_head_processes(dashboard: bool) -> tuple[str, ...]:
    """The ``ray._private.node.Node`` start methods of head processes that an embedded Ray without
    its dashboard has no reader for: the autoscaler's monitor (one node never scales; on SIGTERM it
    retries the already stopped GCS, 1.0 s of every ``ray.shutdown``), the log monitor (it streams
    the workers' output to the driver, which embedded Ray turns off: ``log_to_driver=False``) and,
    with usage statistics off, the API server (without the dashboard it hosts only the
    usage-statistics reporter, and ``ray.init`` waits until it answers). With the dashboard, all run.
    ``benchmarks.orchestration --trials 2 --epochs 1``: a sweep's start 6.3-7.2 -> 5.5-5.6 s and its
    end 1.2-1.5 -> 0.4 s (docs/performance.md)."""
    if dashboard:
        return ()
    skipped = ("start_monitor", "start_log_monitor")
    if os.environ.get("RAY_USAGE_STATS_ENABLED") == "0":
        skipped += ("start_api_server",)
    return skipped


def _not_started(node: Any, *args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def head_processes_skipped(names: tuple[str, ...]) -> Iterator[None]:
    """Within (around ``ray.init``): the head node Ray starts leaves out the processes ``names``
    start. A Ray whose head node lacks one of these methods is started whole."""
    from ray._private import node

    originals = {name: node.Node.__dict__.get(name) for name in names}
    if not names or any(method is None for method in originals.values()):
        yield
        return
    for name in names:
        setattr(node.Node, name, _not_started)
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(node.Node, name, method)


@contextlib.contextmanager
def callbacks_untagged() -> Iterator[None]:
    """Within: Tune does not tag the sweep's callbacks for Ray's usage statistics. To name them,
    Tune imports every integration Ray ships, MLflow's with ``mlflow`` itself (1.4 s of the
    sweep's start, with or without tracking); with usage statistics off (``mgas`` turns them off
    unless ``RAY_USAGE_STATS_ENABLED`` says otherwise) the tag is never sent, so it is skipped."""
    from ray.air._internal import usage

    if os.environ.get("RAY_USAGE_STATS_ENABLED") != "0" or not callable(getattr(usage, "tag_callbacks", None)):
        yield
        return
    original = usage.tag_callbacks
    usage.tag_callbacks = lambda callbacks: False
    try:
        yield
    finally:
        usage.tag_callbacks = original


# what Tune's trial actors get as a runtime env of their own (ray.tune.execution.class_cache)
TUNE_ACTOR_ENV_VARS = ("DEFAULT_ENV_VARS", "ENV_VARS_TO_PROPAGATE")


@contextlib.contextmanager
def trials_in_driver_environment(embedded: bool) -> Iterator[None]:
    """Within (around ``Tuner.fit``) and with embedded Ray: Tune's trial actors run in the job's
    environment instead of a runtime env of their own. Tune gives each trainable actor
    ``runtime_env={"env_vars": ...}`` (``PL_DISABLE_FORK=1`` and any of a few AWS and Ray Train
    variables the driver has), and Ray starts every worker of a non-empty runtime env through
    ``setup_worker.py``: one more Python start per trial worker (about 0.4 s of CPU each on this
    project's machine, ``benchmarks.diagnostics.sweep_start``). An embedded Ray's workers inherit the driver's
    environment (its raylet is the driver's child), so they get those variables anyway:
    ``init_ray`` puts ``PL_DISABLE_FORK`` there before Ray starts. On a cluster, workers on other
    nodes do not inherit it, and Tune's runtime env stays."""
    from ray.tune.execution import class_cache

    originals = {name: getattr(class_cache, name, None) for name in TUNE_ACTOR_ENV_VARS}
    if not embedded or any(value is None for value in originals.values()):
        yield
        return
    class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE = {}, set()
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(class_cache, name, value)


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


AUTH_HINT = ("the cluster uses token authentication (`ray start --head` turns it on): export RAY_AUTH_MODE=token "
             "and give this machine the head's token (RAY_AUTH_TOKEN=..., or copy the head's ~/.ray/auth_token)")


def init_ray(address: str | None, dashboard: bool = False, dashboard_host: str | None = None,
             runtime_env: dict[str, Any] | None = None) -> bool:
    """Start embedded Ray (returns True) or connect to ``address`` (returns False), with
    ``runtime_env`` (the code and its requirements on every node) for every task of the sweep."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    if address:
        if dashboard or dashboard_host:
            raise UserInputError("--dashboard applies to embedded Ray; a cluster's dashboard is set up where "
                                 "the cluster was started (ray start --include-dashboard ...)")
        token = _token_available()
        if "RAY_AUTH_MODE" not in os.environ and token:
            # a token is here: clusters started with `ray start` want it (and clusters without auth ignore it)
            os.environ["RAY_AUTH_MODE"] = "token"
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING", **extra)
        except ray.exceptions.AuthenticationError as exc:
            raise UserInputError(f"cannot join the Ray cluster at {address!r}: {AUTH_HINT}") from exc
        except (ConnectionError, ValueError, RuntimeError) as exc:
            # a refused token shows up only as a connection failure (after Ray's own retries)
            hint = f"; if {AUTH_HINT}" if not token or "auth" in str(exc).lower() else ""
            raise UserInputError(f"cannot join the Ray cluster at {address!r}: {exc}{hint}") from exc
        return False
    kwargs = embedded_init_kwargs(dashboard, dashboard_host)
    # Tune's trial actors set it in a runtime env of their own; embedded, they inherit it from here
    # (trials_in_driver_environment)
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    if dashboard:
        try:
            import aiohttp  # noqa: F401  (the dashboard's server)
        except ImportError as exc:
            raise UserInputError("--dashboard needs the dashboard's packages: pip install 'ray[default]'") from exc
    with head_processes_skipped(skipped_head_processes(dashboard)):
        ray.init(**kwargs, **extra)
    return True


def in_submitted_job() -> bool:
    """True in the driver of a ``ray job submit`` job (its working directory is a temporary copy)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_cluster(storage: str, declared_shared: bool, address: str | None, trials: list[dict[str, Any]]) -> None:
    """Before any trial starts on a joined cluster: shared storage and the code on every node
    (each method's resource request is checked against the nodes by ``preflight.check_capacity``)."""
    check_cluster_storage(storage, declared_shared, client=bool(address and address.startswith("ray://")))
    check_nodes_import()


def check_cluster_storage(storage: str, declared_shared: bool, client: bool = False) -> None:
    """The trials' checkpoints and results must live where every node (and the driver) sees them:
    on a multi-node cluster, under a Ray Client (``ray://``, whose sweep runs on the head) and
    under ``ray job submit`` (whose working directory is a temporary copy)."""
    import ray

    if declared_shared or storage_is_shared(storage):
        return
    local = Path(storage)
    kind = filesystem_type(local)
    fix = ("set storage_path in the experiment to shared storage (an NFS mount, s3://...) or set "
           "shared_storage: true if this path is mounted on every node")
    if client:
        raise UserInputError(f"storage_path {storage} is on a local {kind} filesystem, but a Ray Client sweep "
                             f"(ray://) runs on the cluster's head: {fix}")
    if in_submitted_job() and local.is_relative_to(Path.cwd()):
        raise UserInputError(f"storage_path {storage} is inside the job's temporary working directory "
                             f"(ray job submit), which is deleted after the job: {fix}")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    raise UserInputError(f"storage_path {storage} is on a local {kind} filesystem, but the cluster has "
                         f"{len(nodes)} nodes: {fix}")


TRIAL_DEPENDENCIES = ("torch", "torchvision", "numpy", "pyarrow", "pydantic", "yaml", "safetensors", "sklearn",
                      "filelock")


def _import_probe() -> dict[str, str]:
    """Runs on one worker of a node: the package must import there (from the shipped working_dir,
    the runtime env's pip packages or an install on the node) and the trials' dependencies must
    be installed (found, not imported: the check stays cheap)."""
    import importlib.util

    import ray

    import mgas_common  # noqa: F401  (the shared torch-free package ships with the code)
    import mgas_core
    import orchestrator
    from mgas_core.engine.provenance import git_revision

    missing = [name for name in TRIAL_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"No module named {missing[0]!r} (missing here: {', '.join(missing)})")
    return {"node_ip": ray.util.get_node_ip_address(), "git_sha": git_revision(),
            "package": str(Path(orchestrator.__file__).parent.parent), "mgas_core": str(mgas_core.__file__)}


def check_nodes_import(timeout_s: float = 600.0) -> list[dict[str, str]]:
    """Import the package on one worker per alive node (no CPU taken); the first node that cannot
    is named in a one-line error."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_import_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pending = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote():
               n for n in nodes}
    answers, failures = [], []
    deadline = time.monotonic() + timeout_s
    for ref, node in pending.items():
        where = f"node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:12]})"
        try:
            answers.append(ray.get(ref, timeout=max(1.0, deadline - time.monotonic())))
        except ray.exceptions.GetTimeoutError:
            failures.append(f"{where} did not answer within {timeout_s:.0f}s")
        except (ray.exceptions.RayError, ImportError) as exc:
            failures.append(f"{where} cannot import the mgas package: {_last_line(exc)}")
    if failures:
        more = f" (and {len(failures) - 1} more node(s))" if len(failures) > 1 else ""
        raise UserInputError(f"{failures[0]}{more}; ship the code with the spec's runtime.working_dir (or "
                             "--runtime-env, or ray job submit --working-dir) and its requirements with runtime.pip, "
                             "or install mgas on every node")
    return answers


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
