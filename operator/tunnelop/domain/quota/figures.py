"""Figures as status and messages show them: quantities the CRD schema accepts."""

from __future__ import annotations

from tunnelop.api.v1alpha1 import format_quantity

_DECIMAL_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


def rate(bits_per_second: int) -> str:
    """An exact bandwidth quantity: 20_000_000 -> "20M"."""
    return format_quantity(bits_per_second)


def rounded(amount: int) -> str:
    """A quantity rounded down to three significant digits with a decimal suffix:
    3_221_225_472 -> "3.22G", 999 -> "999". Always a whole number, so the CRD's
    quantity(...).isInteger() accepts it, and never above `amount`."""
    if amount < 0:
        raise ValueError("quantities are never negative")
    exponent = 0
    while exponent + 1 < len(_DECIMAL_SUFFIXES) and amount >= 1000 ** (exponent + 1):
        exponent += 1
    if exponent == 0:
        return str(amount)
    unit = 1000**exponent
    decimals = 3 - len(str(amount // unit))
    scaled = amount * 10**decimals // unit
    whole, fraction = divmod(scaled, 10**decimals) if decimals else (scaled, 0)
    fraction_text = str(fraction).rjust(decimals, "0").rstrip("0") if decimals else ""
    number = f"{whole}.{fraction_text}" if fraction_text else str(whole)
    return number + _DECIMAL_SUFFIXES[exponent]
