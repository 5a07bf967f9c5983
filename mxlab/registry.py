"""One registry class for models and datasets: register a builder by decorator, look it up by name."""
from __future__ import annotations

import inspect
import typing
from typing import Any, Callable


class Registry:
    """Maps names to builder functions; a failed lookup lists the names it knows."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None, **defaults: Any) -> Callable:
        """Decorator: register ``fn`` under ``name`` (its own name if omitted).

        ``defaults`` pre-bind keyword arguments, so one builder serves a table of variants
        (``@models.register("vgg11", arch=VGG11)``); the caller's keyword arguments still win.
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._builders and self._builders[key] is not fn:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._builders[key] = _Bound(fn, defaults) if defaults else fn
            return fn

        return decorate

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._builders[name]
        except KeyError:
            known = ", ".join(sorted(self._builders)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def names(self) -> list[str]:
        return sorted(self._builders)

    def returns(self, name: str) -> Any:
        """What a builder says it returns (its return annotation), or None."""
        builder = self.get(name)
        fn = builder.fn if isinstance(builder, _Bound) else builder
        return typing.get_type_hints(fn).get("return")

    def options(self, name: str) -> dict[str, tuple[Any, Any]]:
        """The keyword options of a builder: ``{name: (type hint, default)}``, without pre-bound ones."""
        builder = self.get(name)
        fn = builder.fn if isinstance(builder, _Bound) else builder
        hints = typing.get_type_hints(fn)
        bound = builder.defaults if isinstance(builder, _Bound) else {}
        out = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind is not param.KEYWORD_ONLY or param.name in bound:
                continue
            default = param.default if param.default is not param.empty else None
            out[param.name] = (hints.get(param.name, Any), default)
        return out


class _Bound:
    """A builder with some keyword arguments fixed by its variant."""

    def __init__(self, fn: Callable[..., Any], defaults: dict[str, Any]):
        self.fn, self.defaults = fn, defaults
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **{**self.defaults, **kwargs})


models = Registry("model")
datasets = Registry("dataset")
