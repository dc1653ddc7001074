#!/bin/sh
# Prints the path of a Python 3.12 interpreter (else 3.13+), or nothing if there is none.
# Looks on PATH first, then in pyenv's versions (its shims only run the selected version):
# `pyenv root` when pyenv is on PATH, else $PYENV_ROOT or pyenv's default ~/.pyenv.
runs() { "$1" -c 'import sys; sys.exit(not sys.version_info >= (3, 12))' >/dev/null 2>&1; }
for name in python3.12 python3.13 python3.14; do
    exe=$(command -v "$name" 2>/dev/null) && runs "$exe" && { echo "$exe"; exit 0; }
done
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
else
    root=${PYENV_ROOT:-$HOME/.pyenv}
fi
for exe in "$root"/versions/3.12*/bin/python3.12 "$root"/versions/3.1[3-9]*/bin/python3; do
    [ -x "$exe" ] && runs "$exe" && { echo "$exe"; exit 0; }
done
exit 0
