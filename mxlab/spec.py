"""Experiment specs: the schema, YAML in, frozen dataclasses out.

Merge order: mxlab defaults < ``experiments/<name>/experiment.yaml`` < a preset (``<name>/tuned.yaml``) <
``key=value`` overrides. Every value is checked against the schema below; model and data options are checked
against the keyword-only parameters of the registered builder, ``train.optimizer`` against MXNet's optimizer
registry. An error names where the value came from, the dotted key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import io
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from mxlab import optimizers, workspace
from mxlab.coerce import SpecError, coerce, error as _error, fill as _fill, where as _where
from mxlab.devices import DEVICES_ALLOWED, DeviceError, parse_device
from mxlab.registry import datasets, models
from mxlab.tasks import tasks



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
class EarlyStoppingSpec:
    metric: str = ""    # empty: the task's validation metric (val/acc for classification)
    patience: int = field(default=3, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    min_delta: float = field(default=0.0, metadata=_check(lambda v: v >= 0, "a number >= 0"))


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = field(default=5, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    # Any optimizer MXNet registers (sgd, nag, adam, rmsprop, adagrad, ...), or momentum (sgd + train.momentum).
    optimizer: str = "sgd"
    # Extra keyword arguments of the optimizer (rmsprop: {gamma1: 0.9}); lr and wd have their own keys.
    optimizer_params: Mapping[str, Any] = field(default_factory=dict)
    lr: float = field(default=0.1, metadata=_check(lambda v: v > 0, "a number > 0"))
    wd: float = field(default=0.0, metadata=_check(lambda v: v >= 0, "a number >= 0"))
    momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))  # optimizer: momentum
    device: str = field(default="auto", metadata=_check(lambda v: _device_ok(v), DEVICES_ALLOWED))
    # How gradients meet: local/device within one process; dist_* across the workers of `mxlab launch`.
    kvstore: Literal["local", "device", "dist_sync", "dist_sync_device", "dist_async"] = "device"
    seed: int = field(default=42, metadata=_check(lambda v: 0 <= v < 2**31 - 10**6, "an integer in [0, 2^31 - 10^6)"))
    hybridize: bool = True
    # xavier for the CNNs as in the book; normal is N(0, 0.01^2), the book's choice for linear models and MLPs.
    init: Literal["xavier", "normal", "uniform"] = "xavier"
    # Clip gradients to this global L2 norm; null disables it (the RNNs use it).
    clip_gradient: Optional[float] = field(default=None, metadata=_check(lambda v: v is None or v > 0, "null or a number > 0"))
    # Language models: every this many epochs, log text generated from sample_prefixes (0 disables it).
    sample_every: int = field(default=0, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    sample_prefixes: tuple[str, ...] = ()
    sample_length: int = field(default=50, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    # Stop when a metric has not improved for `patience` epochs; null trains every epoch.
    early_stopping: Optional[EarlyStoppingSpec] = None
    # MLflow's sampler of CPU, memory, disk, network (and GPU with nvidia-ml-py) beside the run; tracked runs only.
    system_metrics: bool = True


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
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
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
    # The grammar lives in devices; as many GPUs as the ids ask for, so only the syntax is checked here. Not
    # more: "auto" lists every GPU there is, and a list of 65,536 took 10-50 ms of every spec built (two a trial).
    ids = [int(i) for i in re.findall(r"\d+", text)]
    try:
        parse_device(text, num_gpus=max(ids, default=0) + 1)
    except DeviceError:
        return False
    return True


# ---------------------------------------------------------------- reading YAML

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


MAX_SPEC_BYTES = 1 << 20   # a spec is a few lines; a larger file is a mistake, not a spec


def read_yaml(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {size:,} bytes; allowed: a YAML spec of at most {MAX_SPEC_BYTES:,} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (not UTF-8 at byte {exc.start}); allowed: a YAML spec") from None
    try:
        stream = io.StringIO(text)
        stream.name = str(path)   # so errors carry the file name
        data = yaml.load(stream, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe_load + duplicate keys
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping of blocks, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- loading and validating

def load_spec(name: str, overrides: typing.Sequence[str] = (), root: Path | None = None,
              preset: str | None = None) -> Spec:
    """Load ``experiments/<name>/experiment.yaml``, then the preset's file, then ``key=value`` overrides; validate."""
    folder = workspace.experiment_dir(name, root)
    path = folder / workspace.SPEC_FILE
    workspace.import_experiment_model(folder)
    layers = [(path, read_yaml(path))]
    if preset:
        preset_file = workspace.preset_path(name, preset, root)
        layers.append((preset_file, read_yaml(preset_file)))
    return from_dict(name, layers, overrides, path=path)


def from_dict(name: str, data, overrides: typing.Sequence[str] = (), path: Path | None = None) -> Spec:
    """A spec from a mapping (or a list of ``(file, mapping)`` layers, later ones winning) and overrides."""
    _load_builtin_registries()
    layers = data if isinstance(data, list) else [(path, data)]
    raw: dict = {"model": {}, "data": {}, "train": {}, "search": {}}
    sources: dict[str, str] = {}
    for file, mapping in layers:
        for key, value in mapping.items():
            _set(raw, key, value, sources, str(file) if file else "spec")
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
    # train.early_stopping.patience=5: one leaf of a nested block, the rest of it kept.
    *parents, leaf = rest.split(".") if block == "train" else [rest]
    target = raw[block]
    for part in parents:
        target[part] = dict(target[part]) if isinstance(target.get(part), Mapping) else {}
        target = target[part]
    target[leaf] = value
    sources[key] = origin


_PATCHES = "space patches"   # not a YAML key: holds search.space.* given as key=value overrides


def _build(name: str, path: Path | None, raw: dict, sources: dict) -> Spec:
    task = raw.get("task", "classification")
    if not isinstance(task, str) or task not in tasks:
        raise _error(sources, "task", task, "one of " + ", ".join(tasks.names()))
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
    _check_optimizer(train, sources)
    if getattr(models.returns(model_name), "scratch", False) and train.optimizer != "sgd":
        raise _error(sources, "train.optimizer", train.optimizer, f"sgd: {model_name} is written from scratch and "
                     f"steps with its own hand-written sgd")
    if train.kvstore == "dist_async" and train.clip_gradient is not None:   # MXNet: async updates on the servers
        raise _error(sources, "train.clip_gradient", train.clip_gradient, "null with train.kvstore=dist_async "
                     "(the servers apply each gradient as it comes), or train.kvstore=dist_sync")
    task_ = tasks.get(task)()
    if train.early_stopping is not None:
        stop = train.early_stopping
        metric = _check_metric(task, task_, stop.metric or task_.default_metric, "train.early_stopping.metric",
                               sources)
        if metric.startswith("val/") and data.val_fraction == 0:
            raise _error(sources, "train.early_stopping.metric", metric, "a val/ metric with data.val_fraction > 0 "
                         "(e.g. data.val_fraction=0.1), or a train/ metric")
        train = dataclasses.replace(train, early_stopping=dataclasses.replace(stop, metric=metric))
    partial = Spec(name, path, description, task, model, data, train, SearchSpec("", "maximize", {}))
    search = _build_search(partial, task_, dict(raw["search"]), sources)
    return dataclasses.replace(partial, search=search)


def _check_metric(task: str, task_, metric: Any, key: str, sources: dict) -> str:
    metric = coerce(metric, str, key, sources)
    names = task_.metric_names
    if not re.fullmatch(r"(train|val|test)/(" + "|".join(names) + ")", metric):
        raise _error(sources, key, metric, f"a metric of task {task}: train/, val/ or test/ followed by "
                     f"{' or '.join(names)}")
    return metric


def _check_optimizer(train: TrainSpec, sources: dict) -> None:
    if not optimizers.known(train.optimizer):
        raise _error(sources, "train.optimizer", train.optimizer, "one of " + ", ".join(optimizers.names()))
    accepted = optimizers.accepted_params(train.optimizer)
    for key, value in train.optimizer_params.items():
        dotted = f"train.optimizer_params.{key}"
        if key in optimizers.OWN_KEYS:
            raise _error(sources, dotted, value, f"set it with {optimizers.OWN_KEYS[key]}")
        if key not in accepted:
            raise SpecError(f"{_where(sources, dotted)}: {dotted}: {train.optimizer!r} takes no option {key!r}; "
                            f"allowed: {', '.join(sorted(accepted))}")


def _build_search(spec: Spec, task_, raw: dict, sources: dict) -> SearchSpec:
    from mxlab.tuning.space import default_space, searchable_keys   # the search policy belongs to tuning

    unknown = set(raw) - {"metric", "direction", "space", _PATCHES}
    if unknown:
        key = f"search.{sorted(unknown)[0]}"
        raise SpecError(f"{_where(sources, key)}: {key}: unknown key; allowed: metric, direction, space")
    metric = _check_metric(spec.task, task_, raw.get("metric", task_.default_metric), "search.metric", sources)
    direction = coerce(raw.get("direction", task_.direction(metric)), Literal["maximize", "minimize"],
                       "search.direction", sources)
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
