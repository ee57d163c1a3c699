# Shared by the scripts that say what a build cost (tests/k8s/build,
# tests/vm/debug-kernel). Sourced, not run.

# child_cpu VAR: sets VAR to the CPU seconds (user + system) of the
# calling shell's finished children so far (the compilers of a build: their
# sum is what the build costs on an idle machine). Not in $(...) or a
# pipeline: a subshell starts at zero.
child_cpu() {
	local f
	f=$(mktemp)
	times >"$f"
	printf -v "$1" '%s' "$(awk 'NR == 2 {
		t = 0
		for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
		printf "%d\n", t }' "$f")"
	rm -f "$f"
}
