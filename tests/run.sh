#!/bin/sh
# tests/run.sh: runs each test binary given, shows its output, and adds up the "N passed, M failed"
# lines into one total, printed last. Exit status is non-zero if any test failed or crashed.
total_pass=0; total_fail=0; bad=""
for t in "$@"; do
    name=$(basename "$t")
    echo "== $name"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out"
    last=$(printf '%s\n' "$out" | tail -n 1)
    p=$(printf '%s' "$last" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
    f=$(printf '%s' "$last" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
    if [ -z "$p" ]; then p=0; f=1; echo "$name: exited $rc without a result line"; fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "$name: exited $rc"; fi
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    [ "$f" -ne 0 ] && bad="$bad $name"
done
[ -n "$bad" ] && echo "failing:$bad"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
