"""MGAS / MG-DARTS: the method (:mod:`.method`), its settings (:mod:`.settings`), units, thresholds
and masks (:mod:`.units`), schedule and lambda controller (:mod:`.schedule`), filter removal and
the derived architecture (:mod:`.channels`), and regrowth (:mod:`.regrow`)."""

from mgas_core.methods.mgas.method import Mgas

__all__ = ["Mgas"]
