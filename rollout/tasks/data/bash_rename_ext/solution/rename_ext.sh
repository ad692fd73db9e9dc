#!/bin/bash
# Rename DIR/*.FROM to DIR/*.TO. See the task statement.
if [[ $# -ne 3 ]]; then
  echo "usage: rename_ext.sh DIR FROM TO" >&2
  exit 2
fi
dir="$1" from="$2" to="$3"
if [[ ! -d "$dir" ]]; then
  echo "rename_ext.sh: no such directory: $dir" >&2
  exit 2
fi
status=0
shopt -s nullglob
for path in "$dir"/*."$from"; do
  [[ -f "$path" ]] || continue
  old="$(basename "$path")"
  new="${old%."$from"}.$to"
  if [[ -e "$dir/$new" ]]; then
    echo "skip: $old ($new exists)" >&2
    status=1
    continue
  fi
  mv -- "$path" "$dir/$new"
  echo "renamed: $old -> $new"
done
exit "$status"
