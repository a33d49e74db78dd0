"""Typed, validated run configuration, loaded from the YAML files in ``parameters/``.

A run is fully described by a :class:`RunConfig`. It is built in layers: the
dataclass defaults, then a profile (``parameters/profiles/<name>.yaml``), then the
overrides of one run of an experiment (``parameters/experiments/<name>.yaml``).
Every layer is validated when it is read: an unknown key or a value of the wrong
type is a :class:`~ssdstudy.errors.ConfigError` naming the file and the dotted key.

The run id is a short hash of the resolved configuration, leaving out the fields
that do not change what a run computes (data-loader workers, progress bars), so that
experiments that ask for the same run share it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ssdstudy.augment import AugmentConfig
from ssdstudy.errors import ConfigError
from ssdstudy.paths import PROJECT

STUDY_BACKBONES = ("vgg16", "mobilenet_v1")
#: Variants of a study backbone that take its place in the chapters and claims (VGG16
#: with BatchNorm stands for VGG16 where no ImageNet weights are given).
BACKBONE_FAMILIES = {"vgg16_bn": "vgg16"}
#: Backbones with a width multiplier (``model.width``); the others need width 1.0.
WIDTH_BACKBONES = ("mobilenet_v1", "squeezenet")


def backbone_family(name: str) -> str:
    """The study backbone that ``name`` stands for (``"vgg16_bn"`` -> ``"vgg16"``)."""
    return BACKBONE_FAMILIES.get(name, name)


@dataclass
class SynthConfig:
    """The generated default dataset, written when ``data.root`` does not exist yet."""

    train: int = 2000
    test: int = 500
    seed: int = 0


@dataclass
class DataConfig:
    root: str = "data/synth"
    train_split: str = "trainval"
    test_split: str = "test"
    #: VOC years (folder suffixes) read for each split; null: every year that has the split.
    train_years: list[str] | None = None
    test_years: list[str] | None = None
    #: Train on objects marked difficult (the study leaves them out).
    keep_difficult: bool = False
    #: Difficult objects of the test split: "ignore" keeps them as objects that count
    #: neither as found nor as missed (the VOC devkit's rule and the original code's
    #: evaluation); "drop" removes them, so a detection of one is a false positive.
    test_difficult: Literal["ignore", "drop"] = "ignore"
    on_error: Literal["raise", "skip"] = "raise"
    #: Write the generated dataset at ``root`` if it is missing; null (the default): never,
    #: a missing ``root`` is an error (a VOCdevkit path is never filled with shapes).
    synth: SynthConfig | None = None
    #: Use only the first N training / test images (null: all of them).
    max_train_images: int | None = None
    max_test_images: int | None = None
    #: Hold out this many images of the training split as the validation split (a
    #: fixed choice, seeded by ``val_seed``, made before ``max_train_images`` cuts the
    #: rest): learning curves and schedule choices read it, training never sees it,
    #: and the test split is scored once, at the end of a run. 0: no validation split.
    val_images: int = 0
    val_seed: int = 0

    def validate(self, where: str) -> None:
        if self.val_images < 0:
            raise ConfigError(f"{where}: data.val_images must be 0 or more, got {self.val_images}")
        for name in ("max_train_images", "max_test_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{where}: data.{name} must be at least 1 (or null: all images), got {value}")
        if self.synth is not None and (self.synth.train < 0 or self.synth.test < 0):
            raise ConfigError(f"{where}: data.synth.train and data.synth.test must be 0 or more")


@dataclass
class PriorsConfig:
    """Default boxes by the SSD paper's scale rule (:func:`ssdstudy.model.scaled_priors`):
    scales from ``min_scale`` to ``max_scale`` of the input over the source maps, the
    same ``aspect_ratios`` on every map."""

    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: list[float] = field(default_factory=lambda: [2.0, 3.0])


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v1"
    width: float = 1.0
    image_size: int = 300
    #: A base-network or full checkpoint to start from (null: from scratch).
    pretrained: str | None = None
    #: Default boxes by the paper's scale rule; null: the backbone's own (the original's).
    priors: PriorsConfig | None = None
    #: MobileNetV1 only: a head on its 38x38 (stride 8) map too, as VGG16 has.
    stride8_map: bool = False

    def validate(self, where: str) -> None:
        from ssdstudy.model import available_backbones

        if self.backbone not in available_backbones():
            raise ConfigError(
                f"{where}: model.backbone {self.backbone!r} is not one of {', '.join(available_backbones())}"
            )
        if not 0.0 < self.width <= 1.0:
            raise ConfigError(f"{where}: model.width must be in (0, 1], got {self.width}")
        if self.backbone not in WIDTH_BACKBONES and self.width != 1.0:
            raise ConfigError(
                f"{where}: model.width applies to {' and '.join(WIDTH_BACKBONES)} only, got backbone {self.backbone!r}"
            )
        if self.image_size < 96:
            raise ConfigError(f"{where}: model.image_size must be at least 96, got {self.image_size}")
        if self.stride8_map and self.backbone != "mobilenet_v1":
            raise ConfigError(f"{where}: model.stride8_map applies to mobilenet_v1 only, got backbone {self.backbone!r}")
        p = self.priors
        if p is not None:
            if not 0.0 < p.min_scale < p.max_scale <= 1.5:
                raise ConfigError(f"{where}: model.priors needs 0 < min_scale < max_scale <= 1.5, "
                                  f"got {p.min_scale} and {p.max_scale}")
            if not p.aspect_ratios or any(r < 1.0 for r in p.aspect_ratios) or len(set(p.aspect_ratios)) < len(p.aspect_ratios):
                raise ConfigError(f"{where}: model.priors.aspect_ratios must be distinct ratios >= 1 "
                                  f"(each gives a wide and a tall box), got {p.aspect_ratios}")


@dataclass
class LossConfig:
    #: Negatives per positive in hard-negative mining; null uses every negative.
    neg_pos_ratio: float | None = 3.0
    iou_threshold: float = 0.5


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    #: SGD with momentum is the original's; AdamW converges in far fewer steps, which
    #: is what a CPU budget of a few hundred steps needs.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-2
    #: bf16 autocasts the forward pass (on CPUs with AVX512-BF16 or AMX, and on GPUs);
    #: the loss is computed in fp32. On a 2-core Zen 4 it trains MobileNetV1-SSD300
    #: about 1.6x and VGG16-SSD about 2x faster than fp32.
    precision: Literal["fp32", "bf16"] = "fp32"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=lambda: [80, 100])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    #: Clip a step's total gradient norm to this many times the median norm of the
    #: previous ``OUTLIER_WINDOW`` steps (null: never clip). Only outlier steps are
    #: touched: under AdamW at 3e-3 from scratch single steps with norms of several
    #: hundred times the median undid epochs of training (benchmarks/stability.py).
    clip_outliers: float | None = None
    seed: int = 0
    #: Validation-split mAP every N epochs (0: only after the last epoch); needs
    #: ``data.val_images``. Without a validation split no curve is scored.
    eval_every: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0

    def validate(self, where: str) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: train.{name} must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"{where}: train.lr must be positive")
        if self.clip_outliers is not None and self.clip_outliers <= 1:
            raise ConfigError(f"{where}: train.clip_outliers must be more than 1 (or null), got {self.clip_outliers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{where}: train.threads must be at least 1 (or null), got {self.threads}")
        for name in ("workers", "eval_every", "warmup_epochs", "weight_decay", "momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: train.{name} must be 0 or more, got {getattr(self, name)}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"{where}: train.device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")


@dataclass
class EvalConfig:
    score_threshold: float = 0.01
    nms_iou: float = 0.45
    top_k: int = 200

    def validate(self, where: str) -> None:
        for name in ("score_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{where}: eval.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class TimingConfig:
    images: int = 50
    warmup: int = 5
    throughput_batch: int = 8
    #: Devices to time on ("cpu", "cuda", "mps"); those absent are skipped.
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda", "mps"])
    #: CPU thread counts to time with (null: the process default).
    cpu_threads: list[int] | None = None
    #: Measure the peak memory of a training step and of a prediction (two fresh
    #: processes per run, :mod:`ssdstudy.memory`).
    memory: bool = True

    def validate(self, where: str) -> None:
        for name in ("images", "throughput_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: timing.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"{where}: timing.warmup must be 0 or more, got {self.warmup}")
        unknown = [d for d in self.devices if d not in ("cpu", "cuda", "mps")]
        if unknown:
            raise ConfigError(f"{where}: timing.devices: unknown device {unknown[0]!r} (use cpu, cuda, mps)")
        if any(n < 1 for n in self.cpu_threads or []):
            raise ConfigError(f"{where}: timing.cpu_threads must all be at least 1")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)

    def validate(self, where: str = "<config>") -> "RunConfig":
        self.data.validate(where)
        self.model.validate(where)
        self.train.validate(where)
        self.eval.validate(where)
        self.timing.validate(where)
        if self.loss.neg_pos_ratio is not None and self.loss.neg_pos_ratio <= 0:
            raise ConfigError(f"{where}: loss.neg_pos_ratio must be positive (or null: every negative), "
                              f"got {self.loss.neg_pos_ratio}")
        if not 0.0 < self.loss.iou_threshold < 1.0:
            raise ConfigError(f"{where}: loss.iou_threshold must be in (0, 1), got {self.loss.iou_threshold}")
        if self.train.eval_every and not self.data.val_images:
            raise ConfigError(
                f"{where}: train.eval_every needs a validation split (data.val_images > 0); "
                "the test split is scored once, at the end of a run"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_id(self) -> str:
        return run_id(self)


#: Fields that do not change what a run computes; left out of the run id.
_NOT_IDENTITY = {("train", "workers"), ("train", "device"), ("train", "threads"), ("timing",)}
#: Fields added after runs were published, left out of the run id at their default, so
#: that a run that does not use them keeps its id.
_ADDED = {("model", "priors"): None, ("model", "stride8_map"): False, ("train", "clip_outliers"): None}


def run_id(config: RunConfig) -> str:
    """A 12-hex-digit id: the SHA-256 of the identity fields of ``config``."""
    data = config.to_dict()
    for path in _NOT_IDENTITY:
        node = data
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    for (section, key), default in _ADDED.items():
        if data[section].get(key, default) == default:
            data[section].pop(key, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- building dataclasses from plain data, with errors that name the key ------------


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (ints to floats...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: {key} must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, key_tp, key, where): _coerce(v, item_tp, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {key}")  # pragma: no cover


def from_dict(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, where) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (mappings merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such parameter file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping at the top level")
    return data


def build_config(*layers: tuple[str, dict[str, Any]]) -> RunConfig:
    """Merge ``(source name, mapping)`` layers over the defaults, validating each one."""
    merged: dict[str, Any] = {}
    for where, layer in layers:
        from_dict(RunConfig, layer, where)  # names the file of an unknown key or bad type
        merged = merge(merged, layer)
    where = layers[-1][0] if layers else "<defaults>"
    return from_dict(RunConfig, merged, where).validate(where)


def load_run_config(path: str | Path) -> RunConfig:
    """A run parameter file: a full or partial RunConfig mapping, optionally with
    ``profile: NAME`` naming the profile it builds on."""
    path = Path(path)
    data = read_yaml(path)
    if not data:
        raise ConfigError(f"{path}: the parameter file is empty (write at least the fields that differ from "
                          "the defaults, or profile: NAME)")
    layers = []
    profile = data.pop("profile", None)
    if profile is not None:
        layers.append(profile_layer(profile))
    layers.append((str(path), data))
    return build_config(*layers)


# --- profiles ---------------------------------------------------------------------

PARAMETERS = PROJECT / "parameters"


@dataclass
class ProfileInfo:
    """What a profile is for; chapters print it so that results are never mistaken."""

    name: str = ""
    description: str = ""
    dataset: str = ""


@dataclass
class StudySettings:
    """A profile's study: which experiments run, and its overrides of their runs."""

    #: Experiments (files in parameters/experiments/) in the book's order.
    experiments: list[str] = field(default_factory=list)
    #: Per-experiment layers applied over each of its runs (e.g. mining's epochs).
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Per-backbone layers applied after the profile's own (e.g. ImageNet weights).
    backbones: dict[str, Any] = field(default_factory=dict)
    #: Backbones trained in place of the study backbone an experiment names, applied
    #: after every layer (``vgg16: vgg16_bn``: VGG16 with BatchNorm where VGG16 trains
    #: from scratch). The chapters name the variant.
    variants: dict[str, str] = field(default_factory=dict)


@dataclass
class Profile:
    info: ProfileInfo
    study: StudySettings
    #: The profile's own RunConfig layer, as ``(file name, mapping)``.
    layer: tuple[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.info.name

    def run_config(self, *layers: tuple[str, dict[str, Any]]) -> RunConfig:
        """A run of this profile: its own layer, then the ``study.backbones`` layer of the
        run's backbone, then ``layers`` (an experiment's, a command's)."""
        backbone = build_config(self.layer, *layers).model.backbone
        stack = [self.layer]
        if backbone in self.study.backbones:
            stack.append((f"{self.layer[0]} study.backbones.{backbone}", self.study.backbones[backbone]))
        stack.extend(layers)
        if backbone in self.study.variants:
            stack.append((f"{self.layer[0]} study.variants.{backbone}",
                          {"model": {"backbone": self.study.variants[backbone]}}))
        return build_config(*stack)


def profile_path(name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)) or ".." in str(name):
        raise ConfigError(f"profile name {name!r}: a profile is named by a plain name (letters, digits, _ . -)")
    return PARAMETERS / "profiles" / f"{name}.yaml"


def read_profile(name: str) -> Profile:
    path = profile_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in (PARAMETERS / "profiles").glob("*.yaml"))
        raise ConfigError(f"{path}: unknown profile {name!r} (known: {', '.join(known)})")
    data = read_yaml(path)
    info = from_dict(ProfileInfo, data.pop("profile", {}), str(path), prefix="profile.")
    study = from_dict(StudySettings, data.pop("study", {}), str(path), prefix="study.")
    for section in ("overrides", "backbones"):
        for key, layer in getattr(study, section).items():
            from_dict(RunConfig, layer, str(path), prefix=f"study.{section}.{key}.")
    info.name = info.name or name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", info.name) or ".." in info.name:
        raise ConfigError(f"{path}: profile.name {info.name!r} must be a plain name (it names a folder in results/)")
    layer = (str(path), data)
    build_config(layer)  # validate the profile's own layer now
    return Profile(info=info, study=study, layer=layer)


def profile_layer(name: str) -> tuple[str, dict[str, Any]]:
    return read_profile(name).layer


def load_profile(name: str) -> RunConfig:
    return build_config(profile_layer(name))
