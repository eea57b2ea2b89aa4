"""Search methods: one module per method. Importing this package imports every module in it, so
a method placed here is registered (``@register_method``) without editing any other file."""

import importlib
import pkgutil

from mgas_core.methods.base import METHOD_REGISTRY, SearchMethod, create_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHOD_REGISTRY", "SearchMethod", "create_method", "register_method"]
