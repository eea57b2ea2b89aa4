"""The memory-saving SepConv/DilConv bodies compute what the ops computed one by one: the same
output and BN statistics, the same gradient for the input and every parameter, in every layout,
with BN affine or not, strided or not, with filter gates and weight masks; and keep less."""

from __future__ import annotations

import pytest
import torch

from mgas_core.nn import fused_ops
from mgas_core.nn.ops import DARTS_SEARCH, EVALUATION, build_op
from mgas_core.nn.step import FilterGate


def _run(op, x, scale, fused: bool, monkeypatch):
    monkeypatch.setattr(fused_ops, "fusable", (lambda *a: torch.is_grad_enabled()) if fused else (lambda *a: False))
    taken = []
    for fn in (fused_ops._SepConvBody, fused_ops._DepthwisePointwise):
        monkeypatch.setattr(fn, "apply", (lambda apply: lambda *a: (taken.append(1), apply(*a))[1])(fn.apply))
    x = x.detach().clone().requires_grad_()
    for p in op.parameters():
        p.grad = None
    out = op(x, torch.relu(x), scale)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in op.named_parameters() if p.grad is not None}
    stats = {n: b.clone() for n, b in op.named_buffers() if b is not None}
    assert bool(taken) == fused  # the fused body really ran (or really did not)
    return out.detach(), x.grad.clone(), grads, stats


def _gates(op):
    op.out_gate = FilterGate(op.channels)
    if hasattr(op, "mid_gate"):
        op.mid_gate = FilterGate(op.pw1.out_channels)
    for conv in [m for m in op.modules() if hasattr(m, "weight_mask")]:
        conv.set_fixed_mask((torch.rand_like(conv.weight) > 0.3).float())


@pytest.mark.parametrize("name", ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("style", [DARTS_SEARCH, EVALUATION])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("gated", [False, True])
def test_fused_bodies_match_the_ops_run_one_by_one(monkeypatch, name, stride, style, layout, gated):
    torch.manual_seed(0)
    op = build_op(name, 8, stride, style).to(memory_format=layout)
    if gated:
        _gates(op)
    for p in op.parameters():
        torch.nn.init.normal_(p, 0.5, 0.3) if p.dim() == 1 else None
    state = {k: v.clone() for k, v in op.state_dict().items()}
    x = torch.randn(4, 8, 20, 20, dtype=torch.float64).contiguous(memory_format=layout)  # above the CPU rewrites
    op = op.double()
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    ref = _run(op, x, scale, False, monkeypatch)
    op.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    got = _run(op, x, scale, True, monkeypatch)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)  # output
    torch.testing.assert_close(got[1], ref[1], rtol=1e-9, atol=1e-9)  # input gradient
    assert got[2].keys() == ref[2].keys() and len(got[2]) >= 2
    for name_ in ref[2]:
        torch.testing.assert_close(got[2][name_], ref[2][name_], rtol=1e-9, atol=1e-9, msg=name_)
    for name_ in ref[3]:  # running statistics and batch counters moved exactly as before
        torch.testing.assert_close(got[3][name_], ref[3][name_], rtol=1e-12, atol=1e-12, msg=name_)


def test_the_fused_bodies_keep_less_for_backward(monkeypatch):
    def saved_bytes(fused: bool) -> int:
        monkeypatch.setattr(fused_ops, "fusable", (lambda *a: True) if fused else (lambda *a: False))
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(8, 16, 16, 16, requires_grad=True)
        xr = torch.relu(x)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = [build_op(name, 16, 1, DARTS_SEARCH)(x, xr, None) for name in ("sep_conv_3x3", "dil_conv_3x3")]
        assert len(outputs) == 2  # kept alive with their graphs, so no storage is freed and reused
        return sum(seen.values())

    one_map = 8 * 16 * 16 * 16 * 4
    # one by one: the shared relu(x), the SepConv's 4 conv outputs and inner ReLU, the DilConv's 2
    # conv outputs; fused: relu(x), the SepConv's first pointwise
    # output and each op's last conv output (the BN input)
    assert round(saved_bytes(False) / one_map) == 8 and round(saved_bytes(True) / one_map) == 4


def test_outside_training_or_on_tiny_maps_the_ops_run_one_by_one(monkeypatch):
    op = build_op("sep_conv_3x3", 8, 1, EVALUATION)
    calls = []
    monkeypatch.setattr(fused_ops._SepConvBody, "apply", lambda *a: calls.append(a) or torch.zeros(2, 8, 12, 12))
    with torch.no_grad():
        op(torch.randn(2, 8, 12, 12))  # no gradient wanted
    op.eval()
    op(torch.randn(2, 8, 12, 12))  # running statistics, not batch ones
    op.train()
    op(torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last))  # the 1x1s take the CPU rewrite
    assert calls == []
    op(torch.randn(2, 8, 12, 12))
    assert len(calls) == 1


def test_a_gradient_of_the_gradient_raises_instead_of_coming_out_wrong():
    op = build_op("dil_conv_3x3", 8, 1, DARTS_SEARCH)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    (g,) = torch.autograd.grad(op(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|double backward|differentiable"):
        g.sum().backward()
    with fused_ops.unfused():
        (g,) = torch.autograd.grad(op(x).sum(), x, create_graph=True)
    g.sum().backward()  # one by one, the second derivative exists


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_max_pool_recomputes_its_argmax_and_keeps_no_index_map(stride, layout):
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=layout)
    x[:, :, 2:5, 2:5] = 1.5  # ties: the argmax found again must be the same one
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        out = fused_ops.max_pool_3x3(a, stride)
    ref = torch.nn.functional.max_pool2d(b, 3, stride, 1)
    assert torch.equal(out, ref) and torch.int64 not in saved
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(a.grad, b.grad)
