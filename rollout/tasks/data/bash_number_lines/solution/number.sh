#!/bin/bash
# Number the non-blank lines of stdin. See the task statement.
n=0
while IFS= read -r line || [[ -n "$line" ]]; do
  if [[ "$line" =~ ^[[:space:]]*$ ]]; then
    printf '%s\n' "$line"
  else
    n=$((n + 1))
    printf '%4d: %s\n' "$n" "$line"
  fi
done
