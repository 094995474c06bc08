"""Post-install fixes that make the PyPI ROS 2 wheels build interface packages.

The wheels' exported CMake files name the wheel builder's Python and NumPy include
directories; rewrite them to this interpreter's. Idempotent: a second run changes nothing.
"""
from __future__ import annotations

import pathlib
import sys
import sysconfig

import numpy

BUILDER_PATHS = {
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
}


def main() -> int:
    share = pathlib.Path(sys.prefix) / "share"
    patched = 0
    for cmake_file in share.rglob("*.cmake"):
        text = cmake_file.read_text()
        fixed = text
        for wrong, right in BUILDER_PATHS.items():
            fixed = fixed.replace(wrong, right)
        if fixed != text:
            cmake_file.write_text(fixed)
            patched += 1
    print(f"setup_env: rewrote builder paths in {patched} CMake file(s) under {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
