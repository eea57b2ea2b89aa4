"""Validated settings: the strict base model and its bounds, the run-level settings every method
shares, and the presets machinery. Knows no method: the registry adds each method's group."""
