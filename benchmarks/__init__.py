"""Measurement harnesses (not tests): each prints JSON; run by hand or on a GPU machine.

``python -m benchmarks`` lists the benchmarks a user runs, each with its purpose and command, and
the diagnostics apart (``benchmarks.diagnostics``). ``benchmarks.official`` drives the official
code a comparison runs against; ``benchmarks.measure`` is what the step benchmarks share. The
methods come from the registry (``mgas_core.methods.registry``): a registered method is
benchmarked with its own flags and no edit here.
"""
