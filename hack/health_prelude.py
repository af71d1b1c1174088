"""Argo CD takes one standalone health.lua per kind (argocd-cm holds each as a string; a
script cannot load a shared library), so the helpers every script needs live once, in
hack/health-prelude.lua, and are copied between the markers of each script.

  python3 hack/health_prelude.py          copy the prelude into every script
  python3 hack/health_prelude.py --check  fail, naming the script, where one differs
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRELUDE = REPO / "hack" / "health-prelude.lua"
SCRIPTS = sorted((REPO / "resource_customizations").glob("*/*/health.lua"))
BEGIN = "-- begin shared prelude: hack/health-prelude.lua (make health-scripts copies it)\n"
END = "-- end shared prelude\n"


def with_prelude(script: str, prelude: str) -> str:
    start, end = script.index(BEGIN) + len(BEGIN), script.index(END)
    return script[:start] + prelude + script[end:]


def main(argv: list[str]) -> int:
    prelude = PRELUDE.read_text()
    stale = []
    for path in SCRIPTS:
        text = path.read_text()
        if BEGIN not in text or END not in text:
            print(f"{path.relative_to(REPO)}: no shared prelude markers", file=sys.stderr)
            return 1
        wanted = with_prelude(text, prelude)
        if wanted != text:
            stale.append(path)
            if "--check" not in argv:
                path.write_text(wanted)
    if stale and "--check" in argv:
        for path in stale:
            print(
                f"{path.relative_to(REPO)}: prelude differs: run make health-scripts",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
