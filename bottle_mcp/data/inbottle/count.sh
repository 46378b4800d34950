#!/bin/sh
# How many processes of a job are still alive: $1 job id, $2 session id.
id=$1; sid=$2; me=$$; n=0
for p in /proc/[0-9]*; do
  p=${p#/proc/}
  [ "$p" = "$me" ] && continue
  s=$(cut -d' ' -f6 "/proc/$p/stat" 2>/dev/null) || continue
  if [ "$s" = "$sid" ] || tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qxF "BOTTLE_MCP_JOB=$id"; then
    n=$((n + 1))
  fi
done
echo "$n"
