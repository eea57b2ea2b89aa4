"""The supernets methods search on: the optimised one and the reference one that mirrors the
official code, their builder, the per-cell op scores, and the stage heads of multi-stage search."""
