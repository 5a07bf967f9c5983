"""Experiment specs: YAML in, frozen dataclasses out.

Merge order: mxlab defaults < ``experiments/<name>/experiment.yaml`` < ``key=value`` overrides. Every value is
checked against the schema below; model and data options are checked against the keyword-only parameters of
the registered builder. An error names where the value came from, the dotted key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from mxlab.registry import datasets, models

TASKS = ("classification", "regression", "language_model")
# The metric each task reports on its validation split, and which way is better: the default search target.
DEFAULT_SEARCH = {
    "classification": ("val/acc", "maximize"),
    "regression": ("val/loss", "minimize"),
    "language_model": ("val/ppl", "minimize"),
}
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class SpecError(ValueError):
    """A spec that cannot be used; the message says where, what was given and what is allowed."""


def _check(pred, allowed):
    return {"check": (pred, allowed)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    name: str
    batch_size: int = field(default=256, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    # Caps each split to this many examples (characters for a corpus): makes any experiment quick.
    limit: Optional[int] = field(default=None, metadata=_check(lambda v: v is None or v >= 1, "null or an integer >= 1"))
    # Share of the training split held out, seeded, for the val/* metrics; 0 trains on all of it, as the book does.
    val_fraction: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = field(default=5, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    lr: float = field(default=0.1, metadata=_check(lambda v: v > 0, "a number > 0"))
    wd: float = field(default=0.0, metadata=_check(lambda v: v >= 0, "a number >= 0"))
    momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))  # optimizer: momentum
    device: str = field(default="auto", metadata=_check(lambda v: _device_ok(v), "auto, cpu, gpu, gpu:0,1 or cpu:0,1"))
    seed: int = 42
    hybridize: bool = True
    # xavier for the CNNs as in the book; normal is N(0, 0.01^2), the book's choice for linear models and MLPs.
    init: Literal["xavier", "normal", "uniform"] = "xavier"
    # Clip gradients to this global L2 norm; null disables it (the RNNs use it).
    clip_gradient: Optional[float] = field(default=None, metadata=_check(lambda v: v is None or v > 0, "null or a number > 0"))
    # Language models: every this many epochs, log text generated from sample_prefixes (0 disables it).
    sample_every: int = field(default=0, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    sample_prefixes: tuple[str, ...] = ()
    sample_length: int = field(default=50, metadata=_check(lambda v: v >= 1, "an integer >= 1"))


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class SearchSpec:
    metric: str
    direction: Literal["maximize", "minimize"]
    space: Mapping[str, Range]


@dataclass(frozen=True)
class Spec:
    name: str
    path: Optional[Path]
    description: str
    task: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    search: SearchSpec

    def to_dict(self) -> dict:
        """The resolved spec as YAML-ready nested dicts: what ``spec.yaml`` stores and what reloads it."""
        def block(obj):
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if f.name == "options":
                    out.update({k: _plain(v) for k, v in value.items()})
                else:
                    out[f.name] = _plain(value)
            return out

        return {
            "description": self.description,
            "task": self.task,
            "model": block(self.model),
            "data": block(self.data),
            "train": block(self.train),
            "search": {
                "metric": self.search.metric,
                "direction": self.search.direction,
                "space": {k: dataclasses.asdict(r) for k, r in self.search.space.items()},
            },
        }

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values (``train.lr``), the form MLflow params and overrides use."""
        return _flatten(self.to_dict())

    def replace(self, **dotted: Any) -> "Spec":
        """A new spec with ``dotted`` overrides applied and validated again."""
        return from_dict(self.name, self.to_dict(), overrides=[f"{k}={_override_text(v)}" for k, v in dotted.items()],
                         path=self.path)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _override_text(value) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("...").strip()


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not (prefix.startswith("search.space.")):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _device_ok(text: str) -> bool:
    return bool(re.fullmatch(r"auto|cpu|gpu|(cpu|gpu):\d+(,\d+)*", text))


# ---------------------------------------------------------------- workspace and files

def workspace_root(start: Path | None = None) -> Path:
    """``MXLAB_ROOT``, else the nearest folder upwards from ``start`` (the cwd) that holds ``experiments/``."""
    if os.environ.get("MXLAB_ROOT"):
        return Path(os.environ["MXLAB_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir():
            return folder
    raise SpecError(f"no workspace: no folder from {here} upwards holds experiments/; set MXLAB_ROOT")


def experiment_names(root: Path | None = None) -> list[str]:
    root = root or workspace_root()
    return sorted(p.parent.name for p in (root / "experiments").glob("*/experiment.yaml"))


def experiment_dir(name: str, root: Path | None = None) -> Path:
    if not NAME_RE.match(name):
        raise SpecError(f"experiment name {name!r} is not allowed: use letters, digits, '_' and '-' only "
                        f"(no '/', no '..')")
    root = root or workspace_root()
    folder = root / "experiments" / name
    if not (folder / "experiment.yaml").is_file():
        known = ", ".join(experiment_names(root)) or "(none)"
        raise SpecError(f"unknown experiment {name!r}: no {folder / 'experiment.yaml'}; known experiments: {known}")
    return folder


class _UniqueKeyLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key written twice in one mapping instead of keeping the last."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError(f"{node.start_mark.name}: line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:   # a named stream, so errors carry the file name
            data = yaml.load(stream, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe_load + duplicate keys
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping of blocks, got {type(data).__name__}")
    return data


def import_experiment_model(folder: Path) -> None:
    """Import ``<folder>/model.py`` once, so that the models it registers can be named in its spec."""
    path = folder / "model.py"
    module_name = f"mxlab_experiments.{folder.name}.model"
    if not path.is_file() or module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


# ---------------------------------------------------------------- loading and validating

def load_spec(name: str, overrides: typing.Sequence[str] = (), root: Path | None = None) -> Spec:
    """Load ``experiments/<name>/experiment.yaml``, apply ``key=value`` overrides, and validate."""
    folder = experiment_dir(name, root)
    path = folder / "experiment.yaml"
    import_experiment_model(folder)
    return from_dict(name, read_yaml(path), overrides, path=path)


def from_dict(name: str, data: Mapping, overrides: typing.Sequence[str] = (), path: Path | None = None) -> Spec:
    _load_builtin_registries()
    origin = str(path) if path else "spec"
    raw: dict = {"model": {}, "data": {}, "train": {}, "search": {}}
    sources: dict[str, str] = {}
    for key, value in data.items():
        _set(raw, key, value, sources, origin)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"command line: override {item!r} must look like key=value (train.epochs=1)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        _set(raw, key.strip(), value, sources, "command line", dotted=True)
    return _build(name, path, raw, sources)


def _set(raw: dict, key: str, value: Any, sources: dict, origin: str, dotted: bool = False) -> None:
    block, _, rest = key.partition(".") if dotted else (key, "", "")
    if block in ("description", "task") and not rest:
        raw[block] = value
        sources[block] = origin
        return
    if block not in raw:
        raise SpecError(f"{origin}: {key}: unknown key; allowed top-level keys: description, task, model, data, "
                        f"train, search")
    if not rest:
        if not isinstance(value, Mapping):
            raise SpecError(f"{origin}: {block}: got {value!r}; allowed: a mapping of keys")
        for k, v in value.items():
            _set(raw, f"{block}.{k}", v, sources, origin, dotted=True)
        return
    if block == "search" and rest.startswith("space."):
        # search.space.train.lr={low: 0.01, high: 1} or search.space.train.lr.low=0.01: a patch on top of the
        # file's space (or the default one), applied when the search block is built.
        target = rest[len("space."):]
        head, _, leaf = target.rpartition(".")
        key_and_leaf = (head, leaf) if head and leaf in ("low", "high", "log") else (target, None)
        raw["search"].setdefault(_PATCHES, []).append((*key_and_leaf, value))
        sources[f"search.space.{key_and_leaf[0]}"] = origin
        return
    raw[block][rest] = value
    sources[key] = origin


_PATCHES = "space patches"   # not a YAML key: holds search.space.* given as key=value overrides


def _where(sources: dict, key: str) -> str:
    """Where the value at ``key`` (or the nearest block above it) was given."""
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return "defaults"


def _error(sources, key, value, allowed) -> SpecError:
    return SpecError(f"{_where(sources, key)}: {key}: got {value!r}; allowed: {allowed}")


def coerce(value: Any, hint: Any, key: str, sources: dict) -> Any:
    """Convert ``value`` to ``hint`` where YAML leaves it loose (``1e-3`` is a string in YAML 1.1), else fail."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, sources)
            except SpecError:
                pass
        raise _error(sources, key, value, " or ".join([_describe(a) for a in args]))
    if origin is Literal:
        if value in args:
            return value
        raise _error(sources, key, value, "one of " + ", ".join(map(str, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            return tuple(coerce(v, item, f"{key}[{i}]", sources) for i, v in enumerate(value))
        raise _error(sources, key, value, f"a list of {_describe(args[0] if args else Any)}")
    else:
        return value
    raise _error(sources, key, value, _describe(hint))


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _fill(cls, values: dict, block: str, sources: dict, extra_options: dict | None = None):
    hints = typing.get_type_hints(cls)
    kwargs, options = {}, {}
    for key, value in values.items():
        dotted = f"{block}.{key}"
        if key in hints and key != "options":
            kwargs[key] = coerce(value, hints[key], dotted, sources)
            check = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("check")
            if check and not check[0](kwargs[key]):
                raise _error(sources, dotted, value, check[1])
        elif extra_options is not None and key in extra_options:
            hint, _ = extra_options[key]
            options[key] = coerce(value, hint, dotted, sources)
        else:
            allowed = sorted(k for k in hints if k not in ("options", "name")) + sorted(extra_options or {})
            raise SpecError(f"{_where(sources, dotted)}: {dotted}: unknown key; allowed: {', '.join(allowed)}")
    if extra_options is not None:
        # The resolved spec names every option, the builder's defaults included, so a run records all of them.
        kwargs["options"] = {k: options.get(k, default) for k, (_, default) in extra_options.items()}
    return kwargs


def _build(name: str, path: Path | None, raw: dict, sources: dict) -> Spec:
    task = raw.get("task", "classification")
    if task not in TASKS:
        raise _error(sources, "task", task, "one of " + ", ".join(TASKS))
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _error(sources, "description", description, "a string")

    model_raw, data_raw = dict(raw["model"]), dict(raw["data"])
    for block, registry, values in (("model", models, model_raw), ("data", datasets, data_raw)):
        if "name" not in values:
            raise SpecError(f"{path or 'spec'}: {block}.name: missing; known: {', '.join(registry.names())}")
        if values["name"] not in registry:
            raise _error(sources, f"{block}.name", values["name"], "one of " + ", ".join(registry.names()))
    model_name, data_name = model_raw.pop("name"), data_raw.pop("name")
    model = ModelSpec(name=model_name, **_fill(ModelSpec, model_raw, "model", sources, models.options(model_name)))
    data = DataSpec(name=data_name, **_fill(DataSpec, data_raw, "data", sources, datasets.options(data_name)))
    train = TrainSpec(**_fill(TrainSpec, dict(raw["train"]), "train", sources))
    partial = Spec(name, path, description, task, model, data, train, SearchSpec("", "maximize", {}))
    search = _build_search(partial, dict(raw["search"]), sources)
    return dataclasses.replace(partial, search=search)


def searchable_keys(spec: Spec) -> dict[str, Any]:
    """Keys a study may search, with the spec's values: lr, wd, momentum (for the momentum optimizer), the
    clipping norm, the batch size, and the model's float options (dropout rates among them)."""
    out = {"train.lr": spec.train.lr, "train.wd": spec.train.wd, "data.batch_size": spec.data.batch_size}
    if spec.train.optimizer == "momentum":
        out["train.momentum"] = spec.train.momentum
    if spec.train.clip_gradient is not None:
        out["train.clip_gradient"] = spec.train.clip_gradient
    for key, (hint, default) in models.options(spec.model.name).items():
        if hint is float or typing.get_args(hint) == (float, type(None)):
            out[f"model.{key}"] = spec.model.options.get(key, default)
    return out


def default_space(spec: Spec) -> dict[str, Range]:
    """lr and wd on a log scale around the spec's own values, and every dropout rate the model can take: each
    dropout option is its own rate, and one the model refuses at the range's end (a second rate for a
    one-layer MLP) stays out."""
    space = {
        "train.lr": Range(spec.train.lr / 10, spec.train.lr * 10, log=True),
        "train.wd": Range(1e-6, 1e-2, log=True),
    }
    for key in searchable_keys(spec):
        if key.startswith("model.") and "dropout" in key:
            try:
                models.get(spec.model.name)(**{**spec.model.options, key[len("model."):]: 0.9})
            except ValueError:
                continue
            space[key] = Range(0.0, 0.9)
    return space


def _build_search(spec: Spec, raw: dict, sources: dict) -> SearchSpec:
    metric, direction = DEFAULT_SEARCH[spec.task]
    unknown = set(raw) - {"metric", "direction", "space", _PATCHES}
    if unknown:
        key = f"search.{sorted(unknown)[0]}"
        raise SpecError(f"{_where(sources, key)}: {key}: unknown key; allowed: metric, direction, space")
    metric = coerce(raw.get("metric", metric), str, "search.metric", sources)
    from mxlab.tasks import tasks

    names = tasks.get(spec.task)().metric_names
    if not re.fullmatch(r"(train|val|test)/(" + "|".join(names) + ")", metric):
        raise _error(sources, "search.metric", metric, f"a metric of task {spec.task}: train/, val/ or test/ "
                     f"followed by {' or '.join(names)}")
    if "direction" not in raw and "metric" in raw:
        direction = "maximize" if metric.endswith("/acc") else "minimize"
    direction = coerce(raw.get("direction", direction), Literal["maximize", "minimize"], "search.direction", sources)
    space_raw = raw.get("space")
    if space_raw is not None and not isinstance(space_raw, Mapping):
        raise _error(sources, "search.space", space_raw, "a mapping of dotted keys to {low, high, log}")
    if space_raw is None:
        space_raw = {k: dataclasses.asdict(r) for k, r in default_space(spec).items()}
    space_raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in space_raw.items()}
    for key, leaf, value in raw.get(_PATCHES, []):
        if leaf is None:
            space_raw[key] = value
        elif isinstance(space_raw.setdefault(key, {}), dict):
            space_raw[key][leaf] = value
    allowed = searchable_keys(spec)
    space = {}
    for key, rng in space_raw.items():
        dotted = f"search.space.{key}"
        if key not in allowed:
            raise SpecError(f"{_where(sources, dotted)}: {dotted}: {key!r} cannot be searched; searchable keys of "
                            f"this experiment: {', '.join(sorted(allowed))}")
        if not isinstance(rng, Mapping) or not {"low", "high"} <= set(rng) or set(rng) - {"low", "high", "log"}:
            raise _error(sources, dotted, rng, "a mapping {low: number, high: number, log: true|false}")
        low = coerce(rng["low"], float, dotted + ".low", sources)
        high = coerce(rng["high"], float, dotted + ".high", sources)
        log = coerce(rng.get("log", False), bool, dotted + ".log", sources)
        if low > high:
            raise _error(sources, dotted, dict(rng), "low <= high")
        if log and low <= 0:
            raise _error(sources, dotted, dict(rng), "low > 0 when log is true")
        space[key] = Range(low, high, log)
    return SearchSpec(metric, direction, space)


_REGISTRIES_LOADED = False


def _load_builtin_registries() -> None:
    """Import the model zoo and the datasets so that their decorators have run."""
    global _REGISTRIES_LOADED
    if not _REGISTRIES_LOADED:
        import mxlab.data  # noqa: F401
        import mxlab.models  # noqa: F401
        _REGISTRIES_LOADED = True


def dump_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)
