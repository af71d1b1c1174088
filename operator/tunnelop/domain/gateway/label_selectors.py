"""metav1.LabelSelector, as the API server evaluates it: a listener's
allowedRoutes.namespaces.selector against a namespace's labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def selector_problem(selector: Mapping[str, Any]) -> str | None:
    """Why `selector` cannot be evaluated (None if it can)."""
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        return "matchLabels must map label keys to strings"
    for expression in selector.get("matchExpressions") or []:
        operator = expression.get("operator") if isinstance(expression, Mapping) else None
        if operator not in OPERATORS:
            return f"matchExpressions operator {operator!r} is not one of {', '.join(OPERATORS)}"
        values = expression.get("values") or []
        if operator in ("In", "NotIn") and not values:
            return f"matchExpressions with operator {operator} needs values"
        if operator in ("Exists", "DoesNotExist") and values:
            return f"matchExpressions with operator {operator} takes no values"
    return None


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether `selector` selects an object with `labels`. An empty selector selects
    everything; one that cannot be evaluated selects nothing."""
    if selector_problem(selector) is not None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression["operator"]
        values = set(expression.get("values") or [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True
