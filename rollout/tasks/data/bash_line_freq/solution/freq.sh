#!/bin/bash
# Count distinct lines of stdin. See the task statement.
export LC_ALL=C
limit=0
if [[ "${1:-}" == "-n" ]]; then
  limit="$2"
fi
grep -v '^$' | sort | uniq -c | sed -E 's/^ *([0-9]+) /\1\t/' |
  sort -t"$(printf '\t')" -k1,1nr -k2 |
  { if [[ "$limit" -gt 0 ]]; then head -n "$limit"; else cat; fi; } |
  tr '\t' ' '
