"""The optimised supernet computes exactly what the reference (official-DARTS-shaped) one does.

Same weights, alphas and batch -> same logits and the same gradients of every weight and of the
alphas, to 1e-5, for normal and reduction cells, both stems, and both activation layouts.
(In float32, BatchNorm over a 2x2 map of a 6-image batch amplifies summation-order rounding to
~1e-4, so the channels-last cases use 16x16 inputs or float64, where the match is ~1e-12.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgas_core.space.topology import DARTS_PRIMITIVES
from mgas_core.supernet.fast import SuperNetwork
from mgas_core.supernet.reference import ReferenceSuperNetwork

TOL = 3e-5  # float32: one conv summed in another order rounds differently (stem gradients: 1.2e-5)


def _pair(variant: str, layers: int, channels: int, nodes: int):
    torch.manual_seed(0)
    fast = SuperNetwork(DARTS_PRIMITIVES, channels, layers, 10, 3, nodes, variant=variant)
    ref = ReferenceSuperNetwork(DARTS_PRIMITIVES, channels, layers, 10, 3, nodes, variant=variant)
    fast_tensors = list(fast.parameters()) + list(fast.buffers())
    ref_tensors = list(ref.parameters()) + list(ref.buffers())
    assert [t.shape for t in fast_tensors] == [t.shape for t in ref_tensors]
    with torch.no_grad():
        for a, b in zip(fast_tensors, ref_tensors):
            b.copy_(a)
    return fast, ref


@pytest.mark.parametrize("variant,size,layout,dtype", [
    ("cifar", 8, torch.contiguous_format, torch.float32),
    ("cifar", 16, torch.channels_last, torch.float32),
    ("cifar", 8, torch.channels_last, torch.float64),
    ("imagenet", 32, torch.contiguous_format, torch.float32),
])
def test_logits_and_gradients_match_reference(variant, size, layout, dtype):
    layers, channels, nodes = 5, 4, 3  # reduction cells at 1 and 3, a reduction_prev cell after each
    fast, ref = _pair(variant, layers, channels, nodes)
    tol = TOL if dtype == torch.float32 else 1e-9  # float64 shows the computation is the same, float32 its rounding
    fast.to(dtype=dtype, memory_format=layout)
    ref.to(dtype=dtype, memory_format=layout)
    num_edges, num_ops = fast.topology.num_edges, len(DARTS_PRIMITIVES)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, size, size, generator=gen).to(dtype).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (6,), generator=gen)
    alphas = torch.randn(2, num_edges, num_ops, generator=gen).to(dtype)
    live = [i for i, p in enumerate(DARTS_PRIMITIVES) if p != "none"]
    results = []
    for net in (fast, ref):
        a = alphas.clone().requires_grad_(True)
        w = F.softmax(a, dim=-1)
        cell_w = [w[1] if red else w[0] for red in net.reduction_flags()]
        logits = net(x, cell_w, [[live] * num_edges for _ in cell_w])
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), a.grad, [p.grad for p in net.parameters()],
                        [b.clone() for b in net.buffers()]))
    (lf, af, gf, bf), (lr, ar, gr, br) = results
    torch.testing.assert_close(lf, lr, atol=tol, rtol=tol)
    torch.testing.assert_close(af, ar, atol=tol, rtol=tol)
    for (name, _), g1, g2 in zip(fast.named_parameters(), gf, gr):
        assert (g1 is None) == (g2 is None), name
        if g1 is not None:
            torch.testing.assert_close(g1, g2, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")
    for b1, b2 in zip(bf, br):  # BN running statistics move identically
        torch.testing.assert_close(b1.float(), b2.float(), atol=tol, rtol=tol)
    assert af.abs().sum() > 0 and lf.abs().sum() > 0


@pytest.mark.parametrize("kernel,dilation,stride,size", [
    (5, 2, 1, 2), (5, 2, 1, 4), (5, 2, 2, 4), (5, 1, 1, 2), (3, 1, 1, 1), (3, 2, 2, 3), (5, 2, 1, 9),
])
def test_conv_on_maps_smaller_than_its_reach_drops_only_padding_taps(kernel, dilation, stride, size):
    from mgas_core.nn.maskable_conv import MaskableConv2d

    torch.manual_seed(0)
    conv = MaskableConv2d(4, 4, kernel, stride, dilation * (kernel - 1) // 2, dilation, groups=4)
    x = torch.randn(3, 4, size, size, requires_grad=True)
    out = conv(x)
    full = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, conv.weight), g)
    full_grads = torch.autograd.grad(full, (x, conv.weight), g)
    for a, b in zip(grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    crop = conv.reachable_taps(size, size)
    reach = (size - 1) // dilation
    assert (crop is None) == (reach >= (kernel - 1) // 2)
