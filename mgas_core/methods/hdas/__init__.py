"""H-DAS (hierarchical DAS): the method (:mod:`.method`), its settings (:mod:`.settings`), the
stage-specific cells of its cell level (:mod:`.cell_search`) and the stage-level supernet, losses
and derivation (:mod:`.stage_search`)."""

from mgas_core.methods.hdas.method import Hdas

__all__ = ["Hdas"]
