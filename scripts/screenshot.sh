#!/usr/bin/env bash
# Takes the README's screenshot of pangu-ui (docs/img/pangu-ui.png): the app under Xvfb with
# Mesa's software OpenGL, the 200B step simulated, the results tab open.
#   bash scripts/screenshot.sh [tab]
set -euo pipefail
cd "$(dirname "$0")/.."
TAB=${1:-results}
for p in xvfb imagemagick libwayland-dev libxkbcommon-dev libgl1-mesa-dri; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p"; }
done
cargo build --release -q --bin pangu-ui
Xvfb :97 -screen 0 1400x900x24 >/dev/null 2>&1 &
XPID=$!
trap 'kill $XPID $APID 2>/dev/null || true' EXIT
sleep 1
DISPLAY=:97 LIBGL_ALWAYS_SOFTWARE=1 ./target/release/pangu-ui --simulate --tab "$TAB" &
APID=$!
sleep "${WAIT:-12}"
mkdir -p docs/img
DISPLAY=:97 import -window root "docs/img/pangu-ui-$TAB.png"
echo "docs/img/pangu-ui-$TAB.png"
