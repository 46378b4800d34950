#!/bin/sh
# Start the runner detached in its own session, marked; print its pid once it wrote it.
# $1 job folder, then the runner's workdir, bytes per stream and deadline.
d=$1
: > "$d/stdout"; : > "$d/stderr"
cd / && BOTTLE_MCP_JOB="${d##*/}" setsid /bin/sh "$d/run.sh" "$d" "$2" "$3" "$4" </dev/null >/dev/null 2>&1 &
i=0
while [ ! -s "$d/pid" ] && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
cat "$d/pid"
