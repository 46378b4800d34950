#!/bin/sh
# The job runner. $1 job folder, $2 workdir, $3 bytes kept per stream, $4 deadline in seconds.
# stdout and stderr are split with a spare fd: the command's stderr goes through the inner pipe,
# its stdout through fd 3 to the outer one. `keep` stores the first bytes and counts the rest, so a
# flood neither fills the bottle's disk nor blocks (or kills with SIGPIPE) the command.
d=$1; w=$2; cap=$3; limit=$4
echo "$$" > "$d/pid.tmp" && mv -f "$d/pid.tmp" "$d/pid"
export BOTTLE_MCP_JOB_DIR="$d"
# head -c stops after exactly $cap bytes (dd's count_bytes counts short reads from a pipe as blocks,
# so it stopped far too early); stdbuf -o0, where there is one, writes each read at once.
unbuf=
command -v stdbuf >/dev/null 2>&1 && unbuf="stdbuf -o0"
# shellcheck disable=SC2086 # $unbuf is empty or two words, on purpose
keep() { $unbuf head -c "$cap" > "$1"; wc -c > "$1.dropped"; }
(
  i=0
  while [ "$i" -lt "$limit" ] && [ ! -e "$d/exit" ]; do sleep 1; i=$((i + 1)); done
  if [ ! -e "$d/exit" ]; then
    : > "$d/deadline"
    env -u BOTTLE_MCP_JOB setsid /bin/sh "$d/kill.sh" "$BOTTLE_MCP_JOB" "$$" "$d/timed_out" </dev/null >/dev/null 2>&1
  fi
) </dev/null >/dev/null 2>&1 &
if cd -- "$w" 2>/dev/null; then
  { { /bin/sh "$d/command.sh" </dev/null; echo "$?" > "$d/rc"; } 2>&1 1>&3 3>&- | keep "$d/stderr"; } 3>&1 \
    | keep "$d/stdout"
else
  : > "$d/stdout"; echo "workdir $w does not exist in the bottle" > "$d/stderr"; echo 126 > "$d/rc"
fi
if [ -e "$d/rc" ]; then mv -f "$d/rc" "$d/exit"; else echo killed > "$d/exit"; fi
