"""Building blocks of every network: primitive ops, the maskable convolution, the step function
with its surrogate gradient, the stem, and the exact CPU kernels and fused bodies behind them."""
