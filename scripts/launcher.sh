#!/usr/bin/env bash
# Replace pip's console-script wrappers with launchers that start Python with -S:
# no site-packages scan and no `import re` in the wrapper, which saves a CLI call
# about a third of its start-up. portway's own source dir goes on sys.path directly.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$PWD/.venv"
src="$PWD/src"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
write() {  # NAME MODULE
  cat > "$venv/bin/$1" <<PY
#!$venv/bin/python -S
import sys
sys.path[:0] = ["$src", "$site"]
from $2 import main
main()
PY
  chmod +x "$venv/bin/$1"
}
write portway portway.cli.main
write portwayd portway.daemon.main
write portway-netavark portway.netavark.main
