#!/bin/sh
# One look at a job: $1 folder, $2 runner pid, $3/$4 stdout/stderr offsets, $5 bytes per stream, $6 tail bytes.
# Every process started in a bottle costs tens of milliseconds: builtins do what they can here.
# The output is parsed strictly by jobs.parse_poll.
d=$1; pid=$2; o=$3; e=$4; n=$5; t=$6; x=
if [ -e "$d/exit" ]; then st="exit"; read -r x < "$d/exit"
elif kill -0 "$pid" 2>/dev/null; then st=running
elif [ -e "$d/exit" ]; then st="exit"; read -r x < "$d/exit"
elif [ -e "$d/deadline" ] && [ ! -e "$d/timed_out" ]; then st=running
else st=lost; fi
case $x in *[!0-9a-z]*) x=bad ;; esac
[ "${#x}" -gt 16 ] && x=bad
[ "$st" = exit ] && st="exit $x"
[ -e "$d/timed_out" ] && st="$st timed_out"
echo "state $st"
xo=0; xe=0
[ -e "$d/stdout.dropped" ] && read -r xo < "$d/stdout.dropped"
[ -e "$d/stderr.dropped" ] && read -r xe < "$d/stderr.dropped"
case $xo in ''|*[!0-9]*) xo=0 ;; esac
case $xe in ''|*[!0-9]*) xe=0 ;; esac
# shellcheck disable=SC2046 # split on purpose: one word per size
set -- $(stat -c %s -- "$d/stdout" "$d/stderr" 2>/dev/null)
echo "size stdout ${1:-0} $xo"
echo "size stderr ${2:-0} $xe"
if [ "$t" -gt 0 ]; then echo "tail $(tail -c "$t" "$d/stdout" | base64 -w0)"; else echo "tail "; fi
if [ "$n" -gt 0 ]; then
  echo "out $(tail -c "+$((o + 1))" "$d/stdout" | head -c "$n" | base64 -w0)"
  echo "err $(tail -c "+$((e + 1))" "$d/stderr" | head -c "$n" | base64 -w0)"
else
  echo "out "; echo "err "
fi
