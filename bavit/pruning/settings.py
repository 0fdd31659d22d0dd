"""The pruning settings and their one validation: every entry point (the keep-mask rule, the Predictor, the
calibration, the app's events, the ``analyze`` API and the CLI) parses user values through here.

A setting is one of four selections -- an FG-probability ``threshold``, a ``keep_ratio`` of BAViT's cells (top-k),
this image's ``image_sparsity`` (top-k, k chosen per image so that the detector prunes that fraction of its patches)
or a calibrated mean ``sparsity`` over images (paper Table 2) -- plus the CCA steps. A setting is parsed once, where
a value enters (the CLI, the API, a page event), and passed on as a :class:`PruningSettings`; nothing below parses it
again. Every default and range of the controls is here. Values from a user (a JSON client,
a form, a command line) are parsed strictly: numbers only (``true`` and ``"abc"`` are refused, so are NaN and
infinities), CCA steps a whole number (2.5 is refused, never truncated), each in its documented range.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError

DEFAULT_THRESHOLD = 0.5
DEFAULT_CCA_STEPS = 3  # the paper's
MAX_CCA_STEPS = 5  # the bound of the rule, the app's slider and the calibration's table
DEFAULT_SPARSITY = 0.35  # the target sparsity the paper's Table 2 reports and the app starts at
MAX_SPARSITY = 0.95  # the largest target sparsity of a top-k setting, the app's slider and the calibration's table
SELECTIONS = ("threshold", "keep_ratio", "image_sparsity", "sparsity")


def number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a :class:`ConfigError` that names ``name``.

    Accepts ints, floats, numpy numbers and numeric strings (``"0.5"``, from a form); refuses booleans, ``None``,
    other strings, NaN and infinities.
    """
    if isinstance(value, bool) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "b"):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, numbers.Real):
        try:
            result = float(value)
        except OverflowError:  # an int beyond float's range (a 401-digit number)
            raise ConfigError(f"{name} must be a finite number, got an integer of {value.bit_length()} bits") from None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value[:40]!r}") from None
    else:
        raise ConfigError(f"{name} must be a number, got a {type(value).__name__}")
    if not math.isfinite(result):
        raise ConfigError(f"{name} must be a finite number, got {str(value)[:40]}")
    return result


def threshold_value(value: Any) -> float:
    """An FG-probability threshold in [0, 1] (a cell is kept when its probability is ``>=`` it)."""
    result = number("threshold", value)
    if not 0.0 <= result <= 1.0:
        raise ConfigError(f"threshold is a probability in [0, 1], got {result:g}")
    return result


def keep_ratio_value(value: Any) -> float:
    """A fraction in (0, 1] of BAViT's cells to keep, most probable first."""
    result = number("keep_ratio", value)
    if not 0.0 < result <= 1.0:
        raise ConfigError(f"keep_ratio is a fraction in (0, 1], got {result:g}")
    return result


def sparsity_value(value: Any) -> float:
    """A target mean sparsity as a fraction in [0, 1) (0.35 for 35%); a calibration narrows it to its own range."""
    result = number("sparsity", value)
    if not 0.0 <= result < 1.0:
        raise ConfigError(f"sparsity is the target mean sparsity as a fraction in [0, 1) (0.35 for 35%), got {result:g}")
    return result


def image_sparsity_value(value: Any) -> float:
    """This image's sparsity as a fraction in [0, :data:`MAX_SPARSITY`] of the detector's patches pruned (top-k at
    that target)."""
    result = number("image_sparsity", value)
    if not 0.0 <= result <= MAX_SPARSITY:
        raise ConfigError(f"image_sparsity is a fraction in [0, {MAX_SPARSITY:g}] of the detector's patches pruned, "
                          f"got {result:g}")
    return result


def percent_value(name: str, value: Any) -> float:
    """A percentage in [0, 100]."""
    result = number(name, value)
    if not 0.0 <= result <= 100.0:
        raise ConfigError(f"{name} is a percentage in [0, 100], got {result:g}")
    return result


def cca_steps_value(value: Any) -> int:
    """CCA iterations: a whole number in 0..:data:`MAX_CCA_STEPS` (2.0 is 2; 2.5 is refused, never truncated)."""
    result = number("cca_steps", value)
    if not (result.is_integer() and 0 <= result <= MAX_CCA_STEPS):
        raise ConfigError(f"cca_steps is a whole number in 0..{MAX_CCA_STEPS}, got {result:g}")
    return int(result)


def flag_value(name: str, value: Any) -> bool:
    """A yes/no control: a boolean (or 0/1 from a form)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class PruningSettings:
    """One validated setting of the keep-mask rule: at most one of :data:`SELECTIONS` (the threshold
    :data:`DEFAULT_THRESHOLD` when none is given) and ``cca_steps``.

    Construction parses and checks every value (:func:`number` and friends), so holding one means it is valid;
    ``sparsity`` still has to fall in a checkpoint's calibrated range (:meth:`Calibration.threshold`).

    Raises:
        ConfigError: a value that is not a number, out of range, or more than one selection.
    """

    threshold: Optional[float] = None
    keep_ratio: Optional[float] = None
    sparsity: Optional[float] = None
    cca_steps: int = DEFAULT_CCA_STEPS
    image_sparsity: Optional[float] = None

    def __post_init__(self) -> None:
        given = [name for name in SELECTIONS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of {', '.join(SELECTIONS)}, not both {given[0]} and {given[1]}")
        parse = {"threshold": threshold_value, "keep_ratio": keep_ratio_value, "sparsity": sparsity_value,
                 "image_sparsity": image_sparsity_value}
        for name in given:
            object.__setattr__(self, name, parse[name](getattr(self, name)))
        if not given:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLD)
        object.__setattr__(self, "cca_steps", cca_steps_value(self.cca_steps))

    @property
    def selection(self) -> dict[str, float]:
        """The one selection as keyword arguments: ``{"threshold": t}``, ``{"keep_ratio": r}``,
        ``{"image_sparsity": s}`` or ``{"sparsity": s}``."""
        for name in SELECTIONS:
            value = getattr(self, name)
            if value is not None:
                return {name: value}
        raise AssertionError("unreachable: __post_init__ sets a threshold when nothing is given")

    @property
    def top_k(self) -> bool:
        """True when the cells are chosen by rank (``keep_ratio`` or ``image_sparsity``), not by a threshold."""
        return self.keep_ratio is not None or self.image_sparsity is not None

    @classmethod
    def from_api(cls, threshold: Any = None, cca_steps: Any = None, keep_ratio: Any = None,
                 sparsity: Any = None) -> "PruningSettings":
        """The ``analyze`` API's form: ``keep_ratio`` / ``sparsity`` of ``None`` or 0 are off (a form's empty
        number field); with both off, ``threshold`` selects. ``None`` is the default (a form's empty field)."""
        cca_steps = DEFAULT_CCA_STEPS if cca_steps is None else cca_steps
        off = lambda value: value is None or (not isinstance(value, bool) and isinstance(value, numbers.Real)  # noqa: E731
                                              and value == 0)
        if not off(keep_ratio):
            if not off(sparsity):
                raise ConfigError("give keep_ratio or sparsity, not both")
            return cls(keep_ratio=keep_ratio, cca_steps=cca_steps)
        if not off(sparsity):
            return cls(sparsity=sparsity, cca_steps=cca_steps)
        return cls(threshold=DEFAULT_THRESHOLD if threshold is None else threshold, cca_steps=cca_steps)


__all__ = ["DEFAULT_CCA_STEPS", "DEFAULT_SPARSITY", "DEFAULT_THRESHOLD", "MAX_CCA_STEPS", "MAX_SPARSITY", "SELECTIONS", "PruningSettings",
           "cca_steps_value", "flag_value", "image_sparsity_value", "keep_ratio_value", "number", "percent_value",
           "sparsity_value", "threshold_value"]
