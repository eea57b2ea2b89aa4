"""MGAS mechanisms read against the official MG-DARTS code (``lxy12357/MG_DARTS``,
``cifar_search/model_search.py`` and ``train_search.py``), each pinned where ours used to differ
(docs/fidelity.md, "MGAS")."""

from __future__ import annotations

import torch

from tests.mgas_core.test_mgas import make, mgas_settings


def kept_ops(model, cell: int) -> list[tuple[int, str]]:
    """(edge, op) of the ops whose live mask is on in ``cell``."""
    masks = model.op_masks()
    return [(e, model.net.primitives[o]) for e, o in torch.nonzero(masks[cell]).tolist()]


def test_a_node_whose_ops_are_all_off_keeps_the_last_alive_op_in_the_official_order():
    """Official ``MixedOp.forward``: an op is kept when every other alive op of its node is off and
    it is the last alive one in (edge, PRIMITIVES) order — skip, sep3, sep5, dil3, dil5, avg, max:
    a parameter-free max pool of the node's last edge, then the avg pool once that one is dead."""
    model = make(mgas_settings())[0].model
    with torch.no_grad():
        model.t_op.fill_(2.0)  # sigmoid(alpha) <= 1 < 2: every op's step is off
    nodes = model.net.topology.node_edges
    last_edges = [sl.stop - 1 for sl in nodes]
    assert kept_ops(model, 0) == [(e, "max_pool_3x3") for e in last_edges]
    model.alive[0, last_edges[0], model.net.primitives.index("max_pool_3x3")] = False
    model.refresh_active()
    assert kept_ops(model, 0)[0] == (last_edges[0], "avg_pool_3x3")
    for name in ("avg_pool_3x3", "max_pool_3x3"):  # the node's last edge has no pool left: its dil_conv_5x5
        model.alive[0, last_edges[0], model.net.primitives.index(name)] = False
    model.refresh_active()
    assert kept_ops(model, 0)[0] == (last_edges[0], "dil_conv_5x5")
    model.alive[0, nodes[0]] = False  # every op of the node's edges dead but one of its first edge
    model.alive[0, nodes[0].start, model.net.primitives.index("skip_connect")] = True
    model.refresh_active()
    assert kept_ops(model, 0)[0] == (nodes[0].start, "skip_connect")
