"""A real multi-node Ray cluster and a local S3 endpoint on this machine, for the cluster tests.

Every node is its own ``ray start --block`` process (own loopback address, own temp dir, own
logical resources), and S3 is moto's server; each is started in its own session and ended by the
pid this module started (SIGTERM, then, past a timeout, SIGKILL of that session only). Waits are on
conditions with timeouts, never fixed sleeps. Loopback addresses other than 127.0.0.1 are used
because Ray rewrites 127.0.0.1 to the machine's outward address.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
HEAD_IP = "127.0.0.2"
BUCKET = "mgas-test"


_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on every interface now, never handed out before by this module
    (the sockets stay bound until all are picked, so the OS cannot give one twice)."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("", 0))
            sockets.append(sock)
            port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
                _HANDED_OUT.add(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM the process this module started; if its session outlives the timeout, SIGKILL it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session started for this process only
            proc.wait(timeout=30)


@dataclass
class LocalS3:
    """moto's S3 server on a loopback address, with one bucket."""

    folder: Path
    ip: str = HEAD_IP
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> LocalS3:
        self.port = free_ports(1)[0]
        log = (self.folder / "moto.log").open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.ip, "-p", str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: port_open(self.ip, self.port), 60, "the S3 endpoint")
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=self.endpoint, access_key="test", secret_key="test",
                          region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass
class Node:
    ip: str
    process: subprocess.Popen
    temp_dir: Path
    args: list[str]
    name: str


@dataclass
class LocalCluster:
    """A head (no CPUs: it runs drivers and jobs, not trials) and worker nodes, all ``ray start``."""

    folder: Path
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    client_port: int = 0

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://{HEAD_IP}:{self.client_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HEAD_IP}:{self.dashboard_port}"

    def _start(self, ip: str, name: str, args: list[str]) -> Node:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"mgas-{name}-", dir="/tmp"))  # short: socket paths
        agent, agent_grpc, runtime_env_agent, metrics = free_ports(4)
        ports = ["--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                 "--runtime-env-agent-port", str(runtime_env_agent), "--metrics-export-port", str(metrics)]
        log = (self.folder / f"{name}.log").open("w")
        process = subprocess.Popen([*RAY_CLI, "start", "--block", "--node-ip-address", ip, "--temp-dir", str(temp_dir),
                                    "--disable-usage-stats", *ports, *args],
                                   env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(ip, process, temp_dir, args, name)
        self.nodes.append(node)
        return node

    def start_head(self) -> None:
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self._start(HEAD_IP, "head", ["--head", "--port", str(self.gcs_port), "--num-cpus", "0", "--num-gpus", "0",
                                      "--include-dashboard", "true", "--dashboard-host", HEAD_IP,
                                      "--dashboard-port", str(self.dashboard_port),
                                      "--ray-client-server-port", str(self.client_port)])
        wait_for(lambda: port_open(HEAD_IP, self.gcs_port) or self._died(), 90, "the head's GCS")

    def add_worker(self, ip: str, cpus: int, gpus: int, resources: dict[str, float] | None = None) -> None:
        self._start(ip, f"worker{len(self.nodes)}", ["--address", self.address, "--num-cpus", str(cpus),
                                                     "--num-gpus", str(gpus),
                                                     "--resources", json.dumps(resources or {})])

    def _died(self, restarts: list[int] | None = None) -> bool:
        """Raise if a node's process exited; a worker that exited during start-up (Ray gives a raylet
        30 s to register, which a loaded 2-core machine can miss) is started again while
        ``restarts`` has budget left."""
        for node in [n for n in self.nodes if n.process.poll() is not None]:
            if restarts and restarts[0] > 0 and node is not self.nodes[0]:
                restarts[0] -= 1
                self.nodes.remove(node)
                self._start(node.ip, f"{node.name}-again", node.args)
                continue
            raise RuntimeError(f"ray start on {node.ip} exited with {node.process.returncode}; see {self.folder}")
        return False

    def wait_for_nodes(self, count: int, timeout: float = 120, restarts: int = 1) -> list[dict[str, Any]]:
        """Block until ``count`` nodes are alive (or a node's process exits); their id, address and
        resources."""
        probe = ("import json, sys, time, ray\n"
                 "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
                 "deadline = time.monotonic() + float(sys.argv[3])\n"
                 "alive = lambda: [n for n in ray.nodes() if n['Alive']]\n"
                 "while len(alive()) < int(sys.argv[2]) and time.monotonic() < deadline:\n"
                 "    time.sleep(0.2)\n"
                 "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], 'resources': n['Resources']}"
                 " for n in alive()]))\n")
        waiter = subprocess.Popen([sys.executable, "-c", probe, self.address, str(count), str(timeout)], env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            budget = [restarts]
            wait_for(lambda: waiter.poll() is not None or self._died(budget), timeout + 60, "the Ray nodes", poll=0.2)
        finally:
            if waiter.poll() is None:
                waiter.kill()
            output = waiter.communicate(timeout=30)[0]
        nodes = json.loads(output.strip().splitlines()[-1]) if output.strip() else []
        if len(nodes) < count:
            raise TimeoutError(f"only {len(nodes)} of {count} Ray nodes came up; see {self.folder}")
        return nodes

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, then the head
            stop_process(node.process)
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def cluster_env(s3: LocalS3) -> dict[str, str]:
    """The environment of every node, driver and CLI call: the cluster's token, the S3 endpoint,
    this interpreter's folder first on PATH (so `python`/`mgas` in a job are this environment's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    env.update(s3.env())
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"})
    return env
