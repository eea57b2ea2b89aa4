"""The CPU conv rewrites (mgas_core/nn/cpu_conv.py) compute what the convolution computes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mgas_core.metrics import count_flops
from mgas_core.nn.cpu_conv import choose_path, tap_index
from mgas_core.nn.maskable_conv import MaskableConv2d

CASES = [
    # (channels, height, width, kernel, stride, dilation, depthwise)
    *itertools.product([1, 5], [1, 2, 3, 4, 8], [2, 5, 8], [3, 5], [1, 2], [1, 2], [True]),
    *itertools.product([6], [2, 4, 7], [4], [1], [1, 2], [1], [True, False]),
]


def _conv(channels: int, kernel: int, stride: int, dilation: int, depthwise: bool) -> MaskableConv2d:
    return MaskableConv2d(channels, channels, kernel, stride, dilation * (kernel // 2), dilation,
                          groups=channels if depthwise else 1)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize(("channels", "height", "width", "kernel", "stride", "dilation", "depthwise"), CASES)
def test_every_path_matches_a_float64_convolution(channels, height, width, kernel, stride, dilation, depthwise, layout):
    torch.manual_seed(channels * 1000 + height * 100 + width * 10 + kernel)
    conv = _conv(channels, kernel, stride, dilation, depthwise)
    mask = (torch.rand_like(conv.weight) > 0.3).float()
    conv.set_fixed_mask(mask)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(3, channels, height, width).contiguous(memory_format=fmt).requires_grad_()
    out = conv(x)
    ref = F.conv2d(x.double(), (conv.weight * mask).double(), None, conv.stride, conv.padding, conv.dilation,
                   conv.groups)
    grad = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(out, (x, conv.weight), grad.float())
    rx, rw = torch.autograd.grad(ref, (x, conv.weight), grad)
    assert out.shape == ref.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(gx.double(), rx.double(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(gw.double(), rw.double(), atol=2e-5, rtol=1e-5)
    assert (gw[mask == 0] == 0).all(), "masked-out taps must get no gradient"
    if out.shape[1] > 1 and out.shape[-2] * out.shape[-1] > 1:
        assert out.is_contiguous(memory_format=fmt), "the rewrite must keep the input's memory layout"


def test_the_rule_routes_the_slow_shapes_and_leaves_the_rest_to_the_convolution():
    cl = torch.channels_last
    tiny = torch.zeros(2, 8, 2, 2).contiguous(memory_format=cl)
    small = torch.zeros(2, 8, 4, 4).contiguous(memory_format=cl)
    mid = torch.zeros(2, 8, 8, 8).contiguous(memory_format=cl)
    big = torch.zeros(2, 8, 32, 32).contiguous(memory_format=cl)
    one = (1, 1)
    assert choose_path(mid, (8, 1, 1, 1), one, (0, 0), (2, 2), 8) == "scale"
    assert choose_path(mid, (8, 1, 3, 3), one, (2, 2), (2, 2), 8) == "matmul"  # dilated
    assert choose_path(tiny, (8, 1, 3, 3), one, one, one, 8) == "matmul"
    assert choose_path(small, (8, 1, 5, 5), one, (2, 2), one, 8) == "matmul"
    assert choose_path(small, (8, 1, 3, 3), one, one, one, 8) == "conv"
    assert choose_path(mid, (8, 1, 3, 3), one, one, one, 8) == "conv"
    assert choose_path(big, (8, 1, 3, 3), one, (2, 2), (2, 2), 8) == "conv"  # too many pixels
    wide = torch.zeros(2, 64, 8, 8).contiguous(memory_format=cl)
    assert choose_path(wide, (64, 1, 3, 3), one, (2, 2), (2, 2), 64) == "conv"  # too many values
    assert choose_path(small, (16, 8, 1, 1), one, (0, 0), one, 1) == "linear"
    assert choose_path(small.contiguous(), (16, 8, 1, 1), one, (0, 0), one, 1) == "conv"
    assert choose_path(mid, (16, 8, 1, 1), one, (0, 0), one, 1) == "conv"
    # strided 1x1 (FactorizedReduce) on channels-last, sliced or not: always the product (oneDNN's
    # weight gradient for it wrote out of bounds, see cpu_conv's docstring); contiguous: the conv
    assert choose_path(mid, (16, 8, 1, 1), (2, 2), (0, 0), one, 1) == "linear"
    assert choose_path(mid[:, :, 1:, 1:], (16, 8, 1, 1), (2, 2), (0, 0), one, 1) == "linear"
    assert choose_path(mid.contiguous(), (16, 8, 1, 1), (2, 2), (0, 0), one, 1) == "conv"


@pytest.mark.parametrize(("c_in", "c_out"), [(5, 4), (3, 8), (7, 7), (16, 12)])
def test_strided_pointwise_on_a_sliced_channels_last_map_matches_float64(c_in, c_out):
    torch.manual_seed(c_in * 10 + c_out)
    conv = MaskableConv2d(c_in, c_out, 1, stride=2).to(memory_format=torch.channels_last)
    base = torch.randn(4, c_in, 8, 8).contiguous(memory_format=torch.channels_last)
    for x in (base, base[:, :, 1:, 1:]):  # the two halves of a FactorizedReduce
        x = x.detach().requires_grad_()
        assert conv.path_for(x) == "linear"
        out = conv(x)
        ref = F.conv2d(x.double(), conv.weight.double(), None, 2)
        grad = torch.randn_like(ref)
        gx, gw = torch.autograd.grad(out, (x, conv.weight), grad.float())
        rx, rw = torch.autograd.grad(ref, (x, conv.weight), grad)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(gx.double(), rx.double(), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(gw.double(), rw.double(), atol=2e-5, rtol=1e-5)


def test_tap_index_links_each_output_pixel_to_the_taps_a_convolution_uses():
    # 1-D view: a 3-tap kernel, padding 1, on 3 pixels: output o reads inputs o-1, o, o+1
    index, h_out, w_out = tap_index(1, 3, (1, 3), (1, 1), (0, 1), (1, 1))
    assert (h_out, w_out) == (1, 3)
    none = 3
    assert index.tolist() == [[1, 2, none], [0, 1, 2], [none, 0, 1]]
    with pytest.raises(ValueError, match="empty"):
        tap_index(1, 1, (1, 5), (1, 1), (0, 0), (1, 1))


def test_flops_count_every_declared_tap_whatever_path_runs():
    # on a 2x2 map: a 5x5 dilated depthwise conv (centre tap only -> scale path), a 3x3 depthwise
    # conv (matrix path) and a 1x1 conv on channels-last (linear path); papers count all taps
    channels, size = 4, 2
    model = torch.nn.Sequential(
        MaskableConv2d(channels, channels, 5, 1, 4, 2, groups=channels),
        MaskableConv2d(channels, channels, 3, 1, 1, 1, groups=channels),
        MaskableConv2d(channels, channels, 1),
    ).to(memory_format=torch.channels_last)
    x = torch.zeros(1, channels, size, size).contiguous(memory_format=torch.channels_last)
    assert [conv.path_for(x) for conv in model] == ["scale", "matmul", "linear"]
    pixels = size * size
    declared = pixels * channels * 25 + pixels * channels * 9 + pixels * channels * channels
    assert count_flops(model, (channels, size, size)) == declared
    assert all(conv.rewrites for conv in model), "counting must leave the rewrites on"


@pytest.mark.parametrize("c_in", [1, 2, 4, 8])
@pytest.mark.parametrize("c_out", [1, 4])
def test_strided_pointwise_conv_on_few_channels_matches_the_declared_conv(c_in, c_out):
    """FactorizedReduce's 1x1 stride-2 convs run as the subsample's channel product, exactly the
    declared conv in value and gradient. On one thread, channels-last, with fewer than 8 input channels,
    torch 2.14's own strided 1x1 backward corrupts the heap (the process dies); this must not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(c_in * 10 + c_out)
        conv = MaskableConv2d(c_in, c_out, 1, stride=2)
        for _ in range(5):
            x = torch.randn(16, c_in, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
            out = conv(x)
            ref = F.conv2d(x.detach().double()[:, :, ::2, ::2], conv.weight.detach().double())
            gx, gw = torch.autograd.grad(out, (x, conv.weight), torch.ones_like(out))
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
            assert gx[:, :, 1::2].abs().sum() == 0 and gx[:, :, ::2, ::2].abs().sum() > 0
            torch.testing.assert_close(gw.double(), x.detach().double()[:, :, ::2, ::2].sum((0, 2, 3))
                                       .view(1, c_in, 1, 1).expand_as(gw), rtol=1e-4, atol=1e-4)
        assert conv.path_for(x) in ("conv", "linear")
    finally:
        torch.set_num_threads(threads)
