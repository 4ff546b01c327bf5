"""Rewrite a wheel without some folders (and their RECORD lines), to fit the device tool's 64 MiB.

    python scripts/device/slim_wheel.py .whl/ray-2.60.0-cp312-*.whl ray/jars/ ray/dashboard/client/

Ray's wheel is 79 MB; its Java jars (32 MB, for Java workers) and the dashboard's web client are
not used by Python-only parties with ``include_dashboard=False``.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def slim(wheel: Path, drop: list[str]) -> tuple[int, int]:
    """Rewrite ``wheel`` in place without members under ``drop``; return (bytes before, after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if any(info.filename.startswith(prefix) for prefix in drop):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not any(line.startswith(p) for p in drop)).encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = slim(Path(argv[0]), argv[1:])
    print(f"{argv[0]}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
