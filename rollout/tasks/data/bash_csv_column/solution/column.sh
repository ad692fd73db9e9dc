#!/bin/bash
# Print one comma-separated column of stdin. See the task statement.
if [[ $# -ne 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: column.sh N   (N a positive integer)" >&2
  exit 2
fi
awk -F, -v n="$1" '{ print $n }'
