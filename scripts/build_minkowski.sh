#!/usr/bin/env bash
# Builds MinkowskiEngine 0.5.4 (CPU) from the PyPI sdist for the python + torch of the active
# environment, and installs it. Optional: only the `minkowski` encoder backend and its parity tests
# need it. The wheel is cached per (python, torch) in ${MMEARTH_CACHE:-~/.cache/mmearth-kernels}, so
# later runs take seconds; the first takes about 5 minutes on 2 cores.
#
# Why a script and not `pip install minkowskiengine`: the 2021 sdist's setup.py needs the torch already
# installed (no build isolation), imports numpy.distutils unless --blas reaches it, and removes
# ./build and uninstalls itself when run; and 0.5.4 does `from collections import Sequence`, which
# fails on Python >= 3.10 (fixed upstream in 2022, never released): we patch those 5 imports.
# Needs OpenBLAS headers (Debian: libopenblas-dev; installed here when apt-get is available and we are root).
set -euo pipefail
PY="${PYTHON:-python}"
CACHE="${MMEARTH_CACHE:-$HOME/.cache/mmearth-kernels}/wheels"
mkdir -p "$CACHE"
key=$("$PY" -c "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
wheel_dir="$CACHE/minkowskiengine-0.5.4-$key"

if "$PY" -c "import MinkowskiEngine" 2>/dev/null; then
  echo "[minkowski] MinkowskiEngine already importable"; exit 0
fi
if ! ls "$wheel_dir"/*.whl >/dev/null 2>&1; then
  echo "[minkowski] building MinkowskiEngine 0.5.4 (CPU) for $key; about 5 minutes on 2 cores"
  if ! [ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] && ! [ -e /usr/include/cblas.h ] \
     && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev > /dev/null
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # pip prepares the sdist's metadata (setup.py egg_info), which probes BLAS through numpy.distutils
  # unless --blas reaches setup.py: pass it (--global-option on pip < 23.3, --config-settings after).
  export SETUPTOOLS_USE_DISTUTILS=stdlib
  "$PY" -m pip download -q --no-deps --no-binary :all: --global-option=--blas=openblas \
      minkowskiengine==0.5.4 -d "$work" 2>/dev/null \
    || "$PY" -m pip download -q --no-deps --no-binary :all: --config-settings=--global-option=--blas=openblas \
      minkowskiengine==0.5.4 -d "$work"
  tar -xzf "$work"/[Mm]inkowski[Ee]ngine-0.5.4.tar.gz -C "$work"
  src="$work/MinkowskiEngine-0.5.4"
  # ABCs left `collections` in Python 3.10: move them to collections.abc, keep the rest (namedtuple...).
  "$PY" - "$src/MinkowskiEngine" <<'PYEOF'
import pathlib, re, sys
ABCS = {"Sequence", "Iterable", "Mapping", "MutableMapping", "Callable"}
for path in pathlib.Path(sys.argv[1]).rglob("*.py"):
    text = path.read_text()
    def fix(m):
        names = [n.strip() for n in m.group(1).split(",")]
        abc, rest = [n for n in names if n in ABCS], [n for n in names if n not in ABCS]
        lines = ([f"from collections import {', '.join(rest)}"] if rest else []) + \
                ([f"from collections.abc import {', '.join(abc)}"] if abc else [])
        return "\n".join(lines)
    new = re.sub(r"^from collections import ([\w ,]+)$", fix, text, flags=re.M)
    if new != text:
        path.write_text(new)
        print(f"[minkowski] patched {path.name}")
PYEOF
  (cd "$src" && MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py bdist_wheel --cpu_only --blas=openblas > "$work/build.log" 2>&1) \
    || { tail -n 40 "$work/build.log"; echo "[minkowski] build failed" >&2; exit 1; }
  mkdir -p "$wheel_dir.tmp" && cp "$src"/dist/*.whl "$wheel_dir.tmp/" && mv "$wheel_dir.tmp" "$wheel_dir"
fi
"$PY" -m pip install -q --no-deps --disable-pip-version-check --force-reinstall "$wheel_dir"/*.whl
if ! "$PY" -c "import MinkowskiEngine as ME; print('[minkowski] MinkowskiEngine', ME.__version__, 'installed')"; then
  rm -rf "$wheel_dir"  # never keep a wheel that does not import
  echo "[minkowski] the built wheel does not import; cache removed" >&2
  exit 1
fi
