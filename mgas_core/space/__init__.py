"""The search space and what a search finds in it: primitives and cell topology, the one
architecture format (with weight masks), channel bookkeeping, genotype derivation."""
