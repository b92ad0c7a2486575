#!/usr/bin/env bash
# Install glmkb from this bundle into ./.venv with pip --no-index: nothing is downloaded.
# Refuses (before touching anything) when Python or the platform does not match the wheels,
# a file is missing or damaged, or the disk lacks room. Safe to run again.
#   ./install.sh                      uses python{{PYTHON}} from PATH
#   PYTHON=/opt/py311/bin/python3 ./install.sh
set -euo pipefail
cd "$(dirname "$0")"

NEED_PYTHON="{{PYTHON}}"
NEED_ARCH="{{ARCH}}"
NEED_GLIBC="{{GLIBC}}"
NEED_MB={{NEED_MB}}
REQUIREMENT="{{REQUIREMENT}}"
PYTHON="${PYTHON:-python$NEED_PYTHON}"

fail() { echo "install.sh: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 \
  || fail "Python $NEED_PYTHON not found ('$PYTHON'); install python$NEED_PYTHON with its venv module, or set PYTHON=/path/to/python$NEED_PYTHON"
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$NEED_PYTHON" ] \
  || fail "the wheels are for Python $NEED_PYTHON but $PYTHON is Python $have; set PYTHON=/path/to/python$NEED_PYTHON or rebuild the bundle with --python $have"
arch=$(uname -m)
[ "$arch" = "$NEED_ARCH" ] \
  || fail "the wheels are for $NEED_ARCH but this machine is $arch; rebuild the bundle with --platform for $arch"
if [ -n "$NEED_GLIBC" ]; then
  glibc=$("$PYTHON" -c 'import platform; print(platform.libc_ver()[1] or "0.0")')
  "$PYTHON" -c "import sys; v=lambda s: tuple(int(p) for p in s.split('.')[:2]); sys.exit(v('$glibc') < v('$NEED_GLIBC'))" \
    || fail "the wheels need glibc >= $NEED_GLIBC but this machine has $glibc; rebuild the bundle with --platform manylinux_${glibc/./_}_$arch"
fi

echo "install.sh: checking every file against SHA256SUMS..."
if ! bad=$(sha256sum -c --quiet SHA256SUMS 2>&1); then
  fail "missing or damaged files (copy the bundle again, or run join.sh on fresh volumes): $(echo "$bad" | grep -v '^sha256sum: WARNING' | head -5 | tr '\n' ' ')"
fi

used_kb=0
[ -d .venv ] && used_kb=$(du -sk .venv | cut -f1)
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
need_kb=$(( NEED_MB * 1024 - used_kb ))
[ "$free_kb" -ge "$need_kb" ] \
  || fail "not enough disk space here: the venv needs about $(( need_kb / 1024 )) MiB, $(( free_kb / 1024 )) MiB free; free some space or copy the bundle to a larger disk"

# A .venv without pip (venv interrupted or out of disk during ensurepip) or of another Python
# is made again; a failed attempt leaves no half-made .venv behind.
venv_python=$(.venv/bin/python -c 'import sys, pip; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$venv_python" != "$NEED_PYTHON" ]; then
  [ ! -e .venv ] \
    || echo "install.sh: .venv is incomplete or for another Python (an interrupted install?); making it again" >&2
  if ! "$PYTHON" -m venv --clear .venv; then
    rm -rf .venv
    fail "could not create .venv (see the error above): a full disk, a folder you cannot write to," \
      "or no venv module (e.g. apt install python$NEED_PYTHON-venv)"
  fi
fi
# Only the bundle's wheels: no index, no pip.conf or PIP_* variable that could name one.
for var in $(env | grep -o '^PIP_[A-Z_]*' || true); do unset "$var"; done
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet --no-index --find-links wheels/ "$REQUIREMENT" \
  || fail "pip could not install $REQUIREMENT from wheels/ (see its message above)"
echo "install.sh: installed $REQUIREMENT in $(pwd)/.venv"
echo "install.sh: next: ./run.sh --check, then ./run.sh (add --host 0.0.0.0 for other machines)"
