"""``records_config``: a module remembers the arguments it was built with, as plain data.

A saved file then rebuilds it by registered name and these arguments
(``omniseq.recipes.catalogue``), never by unpickling a Python object.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import TypeVar

__all__ = ["records_config"]

T = TypeVar("T", bound=type)


def records_config(cls: T) -> T:
    """Class decorator: ``instance.config`` = its ``__init__`` arguments, defaults filled in."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if type(self) is not cls or "config" in vars(self):  # a subclass records its own
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {}
        for name, value in list(bound.arguments.items())[1:]:
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                config.update(value)
            elif signature.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                config[name] = value
        self.config = copy.deepcopy(config)

    cls.__init__ = __init__
    return cls
