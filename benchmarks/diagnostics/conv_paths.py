"""Forward+backward time of each conv shape as a plain convolution vs the path ``cpu_conv`` picks.

    python -m benchmarks.diagnostics.conv_paths [--threads 1] [--batch 96] [--repeats 30] [--json]

The shapes are those of the digits (tiny preset) networks: depthwise 3x3/5x5, dilated or not,
stride 1/2, on 8x8, 4x4 and 2x2 maps, and 1x1 pointwise convs, channels-last; plus the strided
1x1 convs of FactorizedReduce (digits and CIFAR sizes), which run subsampled then stride 1. Both variants run
in the same process, interleaved, so the ratio is what to read (the machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mgas_core.nn.maskable_conv import MaskableConv2d

# (channels, map size, kernel, stride, dilation, depthwise)
SHAPES = [
    (8, 8, 3, 1, 1, True), (8, 8, 5, 1, 1, True), (8, 8, 3, 1, 2, True), (8, 8, 5, 1, 2, True),
    (16, 8, 3, 2, 1, True), (16, 8, 5, 2, 2, True), (16, 4, 3, 1, 1, True), (16, 4, 5, 1, 1, True),
    (16, 4, 3, 1, 2, True), (32, 4, 5, 2, 1, True), (32, 2, 3, 1, 1, True), (32, 2, 5, 1, 2, True),
    (8, 8, 1, 1, 1, False), (16, 4, 1, 1, 1, False), (32, 2, 1, 1, 1, False),
    (16, 8, 1, 2, 1, False), (32, 4, 1, 2, 1, False), (64, 16, 1, 2, 1, False), (64, 32, 1, 2, 1, False),
    (144, 32, 1, 2, 1, False),
]


def _time(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def measure(shape: tuple[int, int, int, int, int, bool], batch: int, repeats: int) -> dict[str, object]:
    channels, size, kernel, stride, dilation, depthwise = shape
    conv = MaskableConv2d(channels, channels, kernel, stride, dilation * (kernel // 2), dilation,
                          groups=channels if depthwise else 1)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn_like(conv(x))

    def plain() -> None:
        out = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        torch.autograd.backward(out, grad)

    def routed() -> None:
        torch.autograd.backward(conv(x), grad)

    path = conv.path_for(x)
    plain_ms, routed_ms = _time(plain, repeats), _time(routed, repeats)
    return {"channels": channels, "size": size, "kernel": kernel, "stride": stride, "dilation": dilation,
            "depthwise": depthwise, "path": path, "conv_ms": round(plain_ms, 3), "routed_ms": round(routed_ms, 3),
            "speedup": round(plain_ms / routed_ms, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="one JSON object per shape")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for shape in SHAPES:
        row = measure(shape, args.batch, args.repeats)
        if args.json:
            print(json.dumps(row))
        else:
            kind = "dw" if row["depthwise"] else "pw"
            print(f"{kind} C={row['channels']:>2} {row['size']}x{row['size']} k={row['kernel']} s={row['stride']} "
                  f"d={row['dilation']}: conv {row['conv_ms']:7.3f} ms  {row['path']:>6} {row['routed_ms']:7.3f} ms  "
                  f"x{row['speedup']}")


if __name__ == "__main__":
    main()
