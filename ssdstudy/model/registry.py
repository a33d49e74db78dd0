"""The backbone registry: parameters name a backbone by string, one file adds one.

A backbone is a factory decorated with :func:`register_backbone`. It receives the
width multiplier and its own keyword options and returns a :class:`BackboneParts`:
the base network (a :class:`Backbone`, which returns the feature maps that feed
heads), the extra layers that continue from its last map, the input channels of
every head, the default-box configuration, and the input normalisation its weights
expect. :func:`ssdstudy.model.build_model` turns those parts into an
:class:`~ssdstudy.model.ssd.SSD`.

Adding a backbone: write ``ssdstudy/model/<name>.py`` with a :class:`Backbone`
subclass and a decorated factory, and list the module in
``ssdstudy.model._BACKBONE_MODULES`` so that importing the package registers it.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from ssdstudy.errors import ConfigError
from ssdstudy.model.priors import PriorConfig


class ModelConfigError(ConfigError, ValueError):
    """A model parameter out of range: unknown backbone, bad width, image size, option.

    It is a :class:`~ssdstudy.errors.ConfigError` (the command line prints it as one
    line) and a :class:`ValueError` (what library callers expect of a bad argument).
    """


@dataclass(frozen=True)
class KeyTable:
    """How one checkpoint layout names the tensors of (part of) a model.

    Attributes:
        format: the layout's name, e.g. ``"original-ssd"`` or ``"torchvision-vgg16"``.
        names: file key -> model key (the model's own ``state_dict`` names). Every
            file key listed here must be in the file (strict loading), except the
            BatchNorm counters ``*.num_batches_tracked``, which old files lack.
        ignored_prefixes: file keys starting with one of these are known to the
            layout but deliberately not loaded (an ImageNet classifier, say).
        adapt: called as ``adapt(model, converted)`` after renaming, to change the
            converted tensors in place before they are copied into the model (for
            instance to fold a different input normalisation into the first conv).
        description: one phrase for messages ("the original pytorch-ssd SSD").
    """

    format: str
    names: Mapping[str, str]
    ignored_prefixes: tuple[str, ...] = ()
    adapt: Callable[[nn.Module, dict[str, Tensor]], None] | None = None
    description: str = ""

    def is_ignored(self, key: str) -> bool:
        return key.startswith(self.ignored_prefixes) if self.ignored_prefixes else False


class Backbone(nn.Module, abc.ABC):
    """The base network of an SSD: image -> the feature maps that feed heads.

    Subclasses set :attr:`out_channels` (channels of each returned map, in order) and
    implement :meth:`forward` and :meth:`original_name`. They may add checkpoint
    layouts of their own ImageNet weights with :meth:`base_key_tables`.
    """

    #: Channels of each feature map :meth:`forward` returns.
    out_channels: tuple[int, ...]

    @abc.abstractmethod
    def forward(self, x: Tensor) -> list[Tensor]:
        """``x (N, 3, S, S)`` -> feature maps ``[(N, C_k, H_k, W_k), ...]``; the last
        one also feeds the first extra layer."""

    @abc.abstractmethod
    def original_name(self, key: str) -> tuple[str, str]:
        """Where the original code base (qfgaohao/pytorch-ssd) keeps this tensor.

        Args:
            key: a key of this module's ``state_dict`` (e.g. ``"fc6.weight"``).

        Returns:
            ``(part, name)``: ``part`` is ``"base_net"`` (its base network, also the
            layout of its ImageNet base-network files) or ``"source_layer_add_ons"``
            (layers it applies to a source map before the head); ``name`` is the key
            inside that part (e.g. ``("base_net", "31.weight")``).
        """

    def base_key_tables(self, prefix: str) -> list[KeyTable]:
        """Layouts of base-network-only files this backbone can load.

        The default is the original code base's base-network file (a state dict of
        its ``base_net``). Subclasses add others (torchvision ImageNet weights...).

        Args:
            prefix: the name of this module inside the SSD (``"backbone."``).
        """
        names = {}
        for key in self.state_dict():
            part, name = self.original_name(key)
            if part == "base_net":
                names[name] = prefix + key
        return [
            KeyTable(
                "original-base",
                names,
                description=f"an ImageNet base network of the original code base for {type(self).__name__}",
            )
        ]

    def load_hint(self, missing: list[str], unexpected: list[str]) -> str | None:
        """A sentence that helps with a failed load, or None (model keys given)."""
        return None


@dataclass
class BackboneParts:
    """What a backbone factory returns; :func:`build_model` assembles the SSD.

    Attributes:
        body: the base network; returns ``len(body.out_channels)`` maps.
        extras: layers applied one after the other to the body's last map; each
            output feeds one more head. Stride-free 3x3 convolutions without padding
            may be given padding when the input is too small for them (see
            :func:`ssdstudy.model.ssd.fit_extras`).
        head_channels: input channels of every head: the body's maps, then extras.
        priors: default-box configuration at the reference input size; one spec per
            head, in the same order.
        mean, std: per-channel (R, G, B) normalisation the weights expect, for pixel
            values first scaled to [0, 1]: ``x = (pixel / 255 - mean) / std``.
        options: the backbone's own keyword options as used (recorded on the model).
    """

    body: Backbone
    extras: nn.ModuleList
    head_channels: tuple[int, ...]
    priors: PriorConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    options: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_heads = len(self.body.out_channels) + len(self.extras)
        if not (len(self.head_channels) == len(self.priors.specs) == n_heads):
            raise ValueError(
                f"backbone parts disagree: {n_heads} source maps, {len(self.head_channels)} head "
                f"channel counts, {len(self.priors.specs)} prior specs"
            )


#: A backbone factory: ``factory(width, **options) -> BackboneParts``.
BackboneFactory = Callable[..., BackboneParts]


class _Registry(Mapping[str, BackboneFactory]):
    """Name -> factory; read-only for users, filled by :func:`register_backbone`."""

    def __init__(self) -> None:
        self._factories: dict[str, BackboneFactory] = {}

    def __getitem__(self, name: str) -> BackboneFactory:
        try:
            return self._factories[name]
        except KeyError:
            raise ModelConfigError(
                f"model.backbone: unknown backbone {name!r}; available: {', '.join(available_backbones())}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"BACKBONES({', '.join(self)})"

    def _add(self, name: str, factory: BackboneFactory) -> None:
        if name in self._factories and self._factories[name] is not factory:
            raise ValueError(f"a backbone named {name!r} is already registered")
        self._factories[name] = factory

    def _remove(self, name: str) -> None:
        """Forget a backbone (tests that register temporary ones clean up with it)."""
        self._factories.pop(name, None)


#: The registered backbones, by name.
BACKBONES = _Registry()


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make ``factory`` available to :func:`build_model` as ``name``.

    The factory is called as ``factory(width=..., **options)`` with the width already
    checked to be a number in (0, 1]; it raises :class:`ModelConfigError` for values
    it does not support (a backbone without a width multiplier refuses anything but
    1.0).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        BACKBONES._add(name, factory)
        return factory

    return decorate


def available_backbones() -> tuple[str, ...]:
    """The registered backbone names, sorted."""
    return tuple(BACKBONES)


def check_width(width: object) -> float:
    """``width`` as a float if it is a real number in (0, 1]; else ModelConfigError."""
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise ModelConfigError(f"model.width must be a number in (0, 1], got {width!r} ({type(width).__name__})")
    value = float(width)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ModelConfigError(f"model.width must be in (0, 1], got {width!r}")
    return value
