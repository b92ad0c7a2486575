#!/usr/bin/env bash
# Rebuild the bundle from its volumes: checks EVERY volume against VOLUMES.sha256 first and
# unpacks nothing unless all match. Needs only sha256sum, cat and tar.
#   ./join.sh [DEST]      (DEST defaults to this folder; a relative DEST is from where you are)
# Refuses a DEST that already holds the bundle (its config.yaml and knowledge bases would be
# overwritten); unpacks into DEST/.NAME.partial and renames it only once tar has finished.
set -euo pipefail
NAME="{{BUNDLE_NAME}}"
DEST="${1:-$(dirname "$0")}"
case "$DEST" in /*) ;; *) DEST="$PWD/$DEST" ;; esac  # before the cd below
cd "$(dirname "$0")"

fail() { echo "join.sh: $*" >&2; exit 1; }
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

[ -f VOLUMES.sha256 ] || fail "VOLUMES.sha256 is missing; copy it along with the volumes"
if ! bad=$(sha256sum -c --quiet VOLUMES.sha256 2>&1); then
  echo "join.sh: missing or damaged volumes; copy these again (nothing was unpacked):" >&2
  echo "$bad" | grep -v '^sha256sum: WARNING' >&2
  exit 1
fi
[ ! -d "$DEST" ] || DEST=$(cd "$DEST" && pwd)
[ ! -e "$DEST/$NAME" ] || fail "$DEST/$NAME already exists (an earlier bundle or its install): unpacking over it" \
  "would replace its config.yaml and knowledge bases. Move it away, or give another folder: ./join.sh OTHER_DIR"
count=$(grep -c . VOLUMES.sha256)
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd)
partial="$DEST/.$NAME.partial"
rm -rf "$partial" && mkdir "$partial"
if ! for i in $(seq -f %03g 1 "$count"); do cat "$NAME.tar.$i"; done | tar -x -C "$partial"; then
  rm -rf "$partial"
  fail "unpacking into $DEST failed (see tar's message above: a full disk?); nothing was left there"
fi
mv "$partial/$NAME" "$DEST/$NAME" && rmdir "$partial"
echo "join.sh: unpacked $DEST/$NAME; next: cd $(quote "$DEST/$NAME") && ./install.sh"
