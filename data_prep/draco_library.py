"""Build the Draco decoder library that Blender's glTF add-on needs for Draco-compressed glTF.

The ``bpy`` wheel ships no ``libextern_draco.so``, so without one such files fail with reason
``draco``. ``data_prep/draco/extern_draco.cc`` implements the decoder entry points the add-on
loads (``decoderCreate``, ``decoderDecode``...) on the system's Draco library (Debian:
``apt-get install g++ libdraco-dev``); this module compiles it (about 2 s)::

    python -m data_prep.draco_library [--out outputs/draco]     # or: make draco-library

then render with ``--draco-library outputs/draco/libextern_draco.so`` (``draco_library`` key).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "draco" / "extern_draco.cc"
LIBRARY = "libextern_draco.so"  # the name the glTF add-on looks for
DEFAULT_OUT = Path("outputs/draco")


def build(out: str | Path = DEFAULT_OUT, compiler: str = "g++") -> Path:
    """Compile the library into ``out`` (rebuilt when the source is newer); returns its path.
    Raises RuntimeError naming what to install when the compiler or Draco's headers are missing."""
    target = Path(out) / LIBRARY
    if target.is_file() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r}: apt-get install g++ libdraco-dev")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".so.tmp")  # never a half-written library under the final name
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-o", str(partial)]
    done = subprocess.run(
        [*command, str(SOURCE), "-ldraco"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        hint = " (apt-get install libdraco-dev)" if "draco/" in done.stderr else ""
        raise RuntimeError(f"building {LIBRARY} failed{hint}:\n{done.stderr.strip()[-2000:]}")
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.draco_library", description=__doc__)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the library")
    args = parser.parse_args(argv)
    try:
        print(build(args.out))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
