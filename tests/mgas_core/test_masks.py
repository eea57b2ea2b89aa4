from __future__ import annotations

import torch

from mgas_core.masks import FilterGate, LearnedThreshold, binary_step, step_surrogate_grad


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
    t = LearnedThreshold(0.2)
    score = torch.tensor([0.1, 0.3, 0.5])
    (t.mask(score) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert t.t.grad is not None and t.t.grad < 0  # raising t removes useful units: loss grows
    t.t.grad = None
    t.regulariser().backward()
    assert t.t.grad < 0  # minimising exp(-t) raises t


def test_filter_gate_scale_zeroes_pruned_channels():
    gate = FilterGate(4, threshold_init=0.5)
    with torch.no_grad():
        gate.beta.copy_(torch.tensor([-3.0, 0.5, -0.5, 3.0]))
    scale = gate.scale()
    assert scale[0] == 0 and scale[2] == 0 and scale[1] > 0 and scale[3] > 0
    gate.keep(torch.tensor([1, 3]))
    assert gate.beta.tolist() == [0.5, 3.0]
