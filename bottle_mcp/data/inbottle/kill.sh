#!/bin/sh
# Kill a job: $1 job id, $2 its session id (0: unknown), $3 a file to create when done (optional).
# TERM first (agents may save state), then KILL the session, the process group, and any process
# whose environment carries the job's marker.
id=$1; sid=$2; me=$$
case "$sid" in ''|*[!0-9]*) exit 2 ;; esac
[ "$sid" = 1 ] && exit 2
if [ "$sid" -gt 1 ]; then
  kill -TERM -- "-$sid" 2>/dev/null
  i=0
  while [ "$i" -lt 20 ] && kill -0 -- "-$sid" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
fi
for _ in 1 2 3; do
  if [ "$sid" -gt 1 ]; then kill -KILL -- "-$sid" 2>/dev/null; pkill -KILL -s "$sid" 2>/dev/null; fi
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$me" ] && continue
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qxF "BOTTLE_MCP_JOB=$id"; then
      kill -KILL "$p" 2>/dev/null
    fi
  done
  sleep 0.1
done
[ -n "$3" ] && : > "$3"
true
