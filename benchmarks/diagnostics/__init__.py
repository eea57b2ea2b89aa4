"""Diagnostics: tools that show where a figure of a benchmark comes from, run by hand when a
benchmark's number needs explaining (not benchmarks a user runs to compare; ``python -m benchmarks``
lists both):

- ``step_profile``: a search step's top ops under ``torch.profiler``, the tensors its forward saves
  for backward, CPU BN backward on a dense and a channel-sliced gradient;
- ``conv_paths``: each small convolution of the digits networks, a plain convolution against the
  exact rewrite ``mgas_core.nn.cpu_conv`` picks;
- ``process_cpu``: each process's CPU time during a sweep (``mgas run``), Ray's own and the trials';
- ``sweep_start``: the timeline of a sweep's start: driver phases, Ray's processes, trial workers.
"""
