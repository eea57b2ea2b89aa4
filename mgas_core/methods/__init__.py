"""Search methods: the protocol, the registry, and one module (or subpackage) per method.
Importing this package imports every module in it, so a method placed here is registered
(``@register_method``) without editing any other file."""

import importlib
import pkgutil

from mgas_core.methods.protocol import SearchMethod
from mgas_core.methods.registry import METHOD_REGISTRY, create_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHOD_REGISTRY", "SearchMethod", "create_method", "register_method"]
