"""Cluster scheduling without GPUs: two nodes with one logical GPU each, trials asking 0.5 GPU."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import ray
from ray.cluster_utils import Cluster

from mgas_core.errors import UserInputError
from orchestrator.results import read_rows
from orchestrator.sweep import run_command
from tests.orchestrator.helpers import write_spec
from tests.processes import private_ray_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # Ray tests run one after another


@pytest.fixture(scope="module")
def two_node_cluster():
    """Two simulated nodes whose sessions and "current cluster" file live in this module's own
    temp folder, so no other Ray on the machine can join them by accident."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with private_ray_env():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
        cluster.add_node(num_cpus=2, num_gpus=1)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield cluster
        ray.shutdown()
        cluster.shutdown()


def test_half_gpu_trials_run_two_per_gpu_and_record_placement(tmp_path, two_node_cluster):
    path = write_spec(tmp_path, name="cluster", sweep={"method": ["darts"], "seed": [0, 1, 2, 3]},
                      resources={"cpu": 1, "gpu": 0.5}, max_concurrent_trials=4, shared_storage=True,
                      base={"search.epochs": 2})
    summary = run_command(path, address=two_node_cluster.address)
    assert summary["ok"] == 4
    rows = read_rows(tmp_path / "out" / "cluster")
    placements = Counter((r["node_id"], r["gpu_ids"]) for r in rows)
    assert len({r["node_id"] for r in rows}) == 2  # both nodes used
    assert sorted(placements.values()) == [2, 2]  # two trials per (logical) GPU
    assert all(r["gpu_ids"] != "" for r in rows)
    for (node, gpu), _ in placements.items():  # the two trials on one GPU ran at the same time
        a, b = [r for r in rows if (r["node_id"], r["gpu_ids"]) == (node, gpu)]
        assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_multi_node_cluster_needs_shared_storage(tmp_path, two_node_cluster):
    path = write_spec(tmp_path, name="local-storage", sweep={"method": ["darts"], "seed": [0]})
    with pytest.raises(UserInputError, match="shared storage"):
        run_command(path, address=two_node_cluster.address)


@pytest.mark.parametrize("resources,fragment", [
    ({"cpu": 4}, "resources.cpu=4 per trial, but the largest node"),
    ({"cpu": 1, "gpu": 2}, "resources.gpu=2 per trial, but the largest node"),
])
def test_trials_no_node_can_run_are_refused_before_tune_starts(tmp_path, two_node_cluster, resources, fragment):
    path = write_spec(tmp_path, name="too-big", sweep={"method": ["darts"], "seed": [0]}, resources=resources,
                      shared_storage=True)
    with pytest.raises(UserInputError, match=fragment):
        run_command(path, address=two_node_cluster.address)
    assert not (tmp_path / "out" / "too-big").exists()  # nothing written

