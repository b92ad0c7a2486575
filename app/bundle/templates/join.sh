#!/usr/bin/env bash
# Rebuild the bundle from its volumes: checks EVERY volume against VOLUMES.sha256 first and
# unpacks nothing unless all match. Needs only sha256sum, cat and tar.
#   ./join.sh [DEST]      (DEST defaults to this folder)
set -euo pipefail
cd "$(dirname "$0")"
NAME="{{BUNDLE_NAME}}"
DEST="${1:-.}"

[ -f VOLUMES.sha256 ] || { echo "join.sh: VOLUMES.sha256 is missing; copy it along with the volumes" >&2; exit 1; }
if ! bad=$(sha256sum -c --quiet VOLUMES.sha256 2>&1); then
  echo "join.sh: missing or damaged volumes; copy these again (nothing was unpacked):" >&2
  echo "$bad" | grep -v '^sha256sum: WARNING' >&2
  exit 1
fi
count=$(grep -c . VOLUMES.sha256)
mkdir -p "$DEST"
for i in $(seq -f %03g 1 "$count"); do cat "$NAME.tar.$i"; done | tar -x -C "$DEST"
echo "join.sh: unpacked $DEST/$NAME; next: cd $DEST/$NAME && ./install.sh"
