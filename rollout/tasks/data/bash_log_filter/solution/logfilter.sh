#!/bin/bash
# Filter log lines by level. See the task statement.
rank() {
  case "$1" in
    DEBUG) echo 0 ;;
    INFO) echo 1 ;;
    WARN) echo 2 ;;
    ERROR) echo 3 ;;
    *) echo -1 ;;
  esac
}
threshold="$(rank "$(echo "${1:-}" | tr '[:lower:]' '[:upper:]')")"
if [[ "$threshold" -lt 0 ]]; then
  echo "logfilter.sh: unknown level '${1:-}'" >&2
  exit 2
fi
matched=0
while IFS= read -r line || [[ -n "$line" ]]; do
  read -r _ level _ <<<"$line"
  r="$(rank "$level")"
  if [[ "$r" -ge 0 && "$r" -ge "$threshold" ]]; then
    printf '%s\n' "$line"
    matched=$((matched + 1))
  fi
done
echo "matched: $matched"
