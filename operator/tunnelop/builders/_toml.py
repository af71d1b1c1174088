"""Just enough TOML writing for frp configs, readable and byte-for-byte deterministic.

frp renders every config file as a Go text/template before parsing it, so `{{` in a value
would run as a template action: values carrying it are refused rather than escaped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


def string(value: str) -> str:
    """A TOML basic string. JSON escapes are a subset of TOML's (\\" \\\\ \\n \\uXXXX ...)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if "{{" in value:
        raise ValueError(f"must not contain '{{{{' (frp would run it as a template): {value!r}")
    return json.dumps(value, ensure_ascii=False)


def integer(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return str(value)


def boolean(value: bool) -> str:
    return "true" if value else "false"


def strings(values: Iterable[str]) -> str:
    """An inline array of strings."""
    return "[" + ", ".join(string(v) for v in values) + "]"
