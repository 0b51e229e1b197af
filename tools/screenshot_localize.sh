#!/usr/bin/env bash
# Screenshot of a localize.py index.html in headless Chromium (Debian package `chromium`), fully offline.
#
#   bash tools/screenshot_localize.sh logs/localize/<run>/index.html shot.png [WIDTH HEIGHT]
#
# A fresh profile folder is created and removed; networking, sync, updates and first-run pages are off, so the
# screenshot shows only what the page itself holds (it embeds its pictures and map: nothing is fetched).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 INDEX_HTML OUT_PNG [WIDTH HEIGHT]" >&2
    exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1400}
height=${4:-1000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "error: chromium not found; install it (Debian: apt-get install -y chromium)" >&2
    exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --hide-scrollbars --window-size="$width,$height" --screenshot="$out" "file://$page" >/dev/null 2>&1
test -s "$out"
echo "$out"
