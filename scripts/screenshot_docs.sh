#!/usr/bin/env bash
# Build the documentation site, serve it on localhost and render pages to PNG with headless
# Chromium (Debian: apt-get install -y chromium), so a person can look at what readers will see.
#
#   bash scripts/screenshot_docs.sh [OUT_DIR]     # default docs/archive/screenshots
#
# Writes home.png (the front page), api.png (the diagnostics API page, rendered from docstrings)
# and glossary.png (the generated metrics glossary). Needs the docs extra: pip install -e ".[docs]".
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/archive/screenshots}
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=${PYTHON:-.venv/bin/python}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no chromium found: apt-get install -y chromium" >&2
  exit 2
fi
export NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
site=$(mktemp -d)
# (not --quiet: it hides the warnings that --strict counts)
"$py" -m mkdocs build --strict --site-dir "$site" > "$site.log" 2>&1 || { cat "$site.log" >&2; exit 1; }
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; rm -rf "$site" "$site.log"' EXIT
for _ in $(seq 50); do  # wait until the server answers (at most 5 s)
  "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done
mkdir -p "$out"
shot() {  # shot NAME PATH HEIGHT
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size="1280,$3" --virtual-time-budget=3000 --screenshot="$out/$1.png" \
    "http://127.0.0.1:$port/$2" >/dev/null 2>&1
  echo "$out/$1.png"
}
shot home "" 1400
shot api "reference/api/diagnostics/" 1600
shot glossary "reference/glossary/" 1400
