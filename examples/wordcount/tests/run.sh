#!/bin/sh
# Runs every tests/cases/NAME.in through the program and compares with NAME.out.
# Prints one line per case; on a mismatch the expected and actual output; exits 1 if any failed.
prog=${1:-./wordcount}
dir=$(dirname "$0")/cases
pass=0
fail=0
for input in "$dir"/*.in; do
    name=$(basename "$input" .in)
    expected=$(cat "$dir/$name.out")
    actual=$("$prog" <"$input")
    if [ "$actual" = "$expected" ]; then
        echo "ok   $name"
        pass=$((pass + 1))
    else
        echo "FAIL $name: expected '$expected', got '$actual'"
        fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
