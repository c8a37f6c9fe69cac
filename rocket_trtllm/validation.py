"""Strict pydantic models: unknown keys and bad values become ConfigError naming the key path."""

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError


class StrictModel(BaseModel):
    """Rejects unknown keys (listing the valid ones) and raises ConfigError instead of ValidationError."""

    model_config = ConfigDict(validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key '{key}'; valid keys: {valid}",
                    {"key": unknown[0], "valid": ", ".join(cls.model_fields)},
                )
        return data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise as_config_error(e) from None


def as_config_error(error: ValidationError, prefix: str = "") -> ConfigError:
    """The first error of `error` as a ConfigError whose path is the dotted key, under `prefix`."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
    msg = first["msg"].removeprefix("Value error, ")
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, ConfigError):  # raised by a nested model or a cross-field check
        return ConfigError(inner.detail, ".".join([prefix, *loc, inner.path]).strip("."))
    if first["type"] == "unknown_key":
        return ConfigError(msg, ".".join([prefix, *loc, first["ctx"]["key"]]).strip("."))
    value = first.get("input")
    if not isinstance(value, dict):
        msg = f"{msg} (got {value!r})"
    return ConfigError(msg, ".".join([prefix, *loc]).strip("."))


def check_power_of_two(v: int) -> int:
    """A field validator's check: `v` is a power of two."""
    if v < 1 or v & (v - 1):
        raise ValueError("must be a power of two (1, 2, 4, 8, 16, ...)")
    return v
