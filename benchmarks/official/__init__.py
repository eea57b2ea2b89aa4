"""The official code a user would otherwise run, driven from a checkout the user supplies (nothing
of it is vendored) and timed as ``benchmarks.supernet`` times ours:

- ``step``: one official search step (``python -m benchmarks.official.step --repo PATH --kind
  darts|mgas``), DARTS from ``quark0/darts``, MG-DARTS from ``lxy12357/MG_DARTS``;
- ``mgas``: which official MG-DARTS phase, network and optimisers a stage of ours maps to;
- ``compare``: ``benchmarks.supernet --official-darts PATH`` / ``--official-mgas PATH``, ours and
  the official step each in a fresh process, and their ratios;
- ``counts``: the official evaluation network's parameter count for a published genotype (MG-DARTS,
  GOLD-NAS, DARTS), beside ``mgas import-arch``'s (``--ours``).

Each comparison is defined by one official codebase, so these modules name its method; nothing
else in ``benchmarks`` does (the methods come from the registry).
"""
