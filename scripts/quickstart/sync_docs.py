"""Copy each quick-start script into the docs that include it (``tests/test_quickstarts.py`` checks it).

A doc includes a script as a marker line followed by a bash block:

    <!-- quickstart: scripts/quickstart/ray-jobs.sh -->
    ```bash
    ...the script, without its #! line...
    ```

Run from the repository root: ``python scripts/quickstart/sync_docs.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = re.compile(r"(<!-- quickstart: (?P<script>\S+) -->\n```bash\n)(?P<body>.*?)(```)", re.S)


def script_body(path: Path) -> str:
    lines = path.read_text().splitlines(keepends=True)
    return "".join(lines[1:] if lines and lines[0].startswith("#!") else lines)


def includes(doc: Path) -> list[tuple[str, str]]:
    """(script path, the doc's copy of it) for every include in ``doc``."""
    return [(m["script"], m["body"]) for m in INCLUDE.finditer(doc.read_text())]


def sync(doc: Path) -> bool:
    """Rewrite the doc's copies from the scripts; True when something changed."""
    text = doc.read_text()
    new = INCLUDE.sub(lambda m: m[1] + script_body(ROOT / m["script"]) + m[4], text)
    if new != text:
        doc.write_text(new)
    return new != text


if __name__ == "__main__":
    changed = [str(doc) for doc in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"] if sync(doc)]
    print("updated: " + ", ".join(changed) if changed else "docs match the scripts")
    sys.exit(0)
