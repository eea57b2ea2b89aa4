from __future__ import annotations

import torch

from mgas_core.nn.step import FilterGate, binary_step, step_surrogate_grad


def test_step_forward_is_exact_0_1():
    x = torch.tensor([-2.0, -0.1, 0.0, 1e-6, 0.3, 5.0])
    assert binary_step(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_long_tailed_surrogate_gradient():
    x = torch.tensor([-1.5, -1.0, -0.7, -0.4, -0.2, 0.0, 0.1, 0.4, 0.41, 1.0, 1.01], requires_grad=True)
    binary_step(x).sum().backward()
    expected = [0.0, 0.4, 0.4, 0.4, 1.2, 2.0, 1.6, 0.4, 0.4, 0.4, 0.0]
    assert torch.allclose(x.grad, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(step_surrogate_grad(x.detach()), torch.tensor(expected), atol=1e-6)


def test_threshold_receives_gradient_and_regulariser_pushes_it_up():
    t = torch.tensor(0.2, requires_grad=True)
    score = torch.tensor([0.1, 0.3, 0.5])
    (binary_step(score - t) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert t.grad is not None and t.grad < 0  # raising t removes useful units: loss grows
    t.grad = None
    torch.exp(-t).backward()
    assert t.grad < 0  # minimising exp(-t) raises t


def test_filter_gate_scales_by_score_and_stored_or_lent_mask():
    gate = FilterGate(4)
    with torch.no_grad():
        gate.beta.copy_(torch.tensor([-3.0, 0.5, -0.5, 3.0]))
        gate.stored.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0]))
    scale = gate.scale()  # outside a step: the stored mask
    assert scale[2] == 0 and torch.allclose(scale[[0, 1, 3]], torch.sigmoid(gate.beta[[0, 1, 3]]))
    live = binary_step(gate.score() - 0.4) * gate.stored
    gate.cached = (gate.score(), live)  # during a step: the live mask MGAS lends it
    assert gate.scale()[0] == 0 and gate.scale()[1] > 0
    gate.keep(torch.tensor([1, 3]))
    assert gate.beta.tolist() == [0.5, 3.0] and gate.stored.tolist() == [1.0, 1.0] and gate.cached is None
