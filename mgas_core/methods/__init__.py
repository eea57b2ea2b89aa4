"""Search methods; importing this package registers the built-in ones."""

from mgas_core.methods import darts, gold_nas, mgas, msg_das  # noqa: F401
from mgas_core.methods.base import METHOD_REGISTRY, SearchMethod, create_method, register_method

__all__ = ["METHOD_REGISTRY", "SearchMethod", "create_method", "register_method"]
