"""What every benchmark records beside its figures, and how it publishes them."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def header() -> dict[str, Any]:
    """When and on what the run happened: timings depend on the machine and its load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
    }


def publish(
    result: dict[str, Any], out: Path, plot: Callable[[dict[str, Any], Path], None]
) -> None:
    """Write `out` (JSON) and, where matplotlib is installed, its plot beside it (.png)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    with contextlib.suppress(ImportError):
        plot(result, out.with_suffix(".png"))
