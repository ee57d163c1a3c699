# Shared by tests/k8s/{update-mods,build,cluster,test}: reads the versions
# table and sets up the Go environment. Sourced, not run.

K8S_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSIONS=$K8S_DIR/versions
# Outside the clone, so a fresh clone on the same machine reuses it. Not
# under /var/cache: virtme-ng hides that from a guest behind an empty tmpfs,
# and the VM tests will run these binaries in the guest.
K8S_CACHE=${BLKSNAP_K8S_CACHE:-/var/lib/blksnap-csi/k8s}

die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Prints the table's rows (no comments, no blank lines).
k8s_rows() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$K8S_VERSIONS"; }

# k8s_field COMPONENT N: the Nth column of COMPONENT's row.
k8s_field() {
	local v
	v=$(k8s_rows | awk -v c="$1" -v n="$2" '$1 == c && $2 !~ /^=/ { print $n; exit }')
	[ -n "$v" ] || die "no column $2 for '$1' in $K8S_VERSIONS"
	printf '%s\n' "$v"
}

# Components that are built: rows with a module (not pin rows, "=module").
k8s_built() { k8s_rows | awk '$1 != "go" && $2 != "-" && $2 !~ /^=/ { print $1 }'; }

# k8s_pin COMPONENT MODULE: the version a pin row ("COMPONENT =MODULE
# VERSION") gives MODULE in COMPONENT's wrapper, or nothing.
k8s_pin() { k8s_rows | awk -v c="$1" -v m="=$2" '$1 == c && $2 == m { print $3; exit }'; }

# k8s_pkgs COMPONENT: the main packages of COMPONENT's row, one a line.
k8s_pkgs() { k8s_rows | awk -v c="$1" '$1 == c && $2 !~ /^=/ { for (i = 4; i <= NF; i++) print $i }'; }

# k8s_crd_only COMPONENT: true when COMPONENT's row builds nothing and only
# names CRDs of its module ("crd:PATH", a file or a directory of YAML). Such
# a component has no wrapper: module@version is immutable through the Go
# checksum database, which go mod download checks.
k8s_crd_only() { ! k8s_pkgs "$1" | grep -qv '^crd:'; }

# Go: the machine's Go (/usr/local/go on the project's machines), told to
# use exactly the pinned toolchain; if the machine's differs the go command
# fetches the pinned one through the module proxy.
k8s_go_env() {
	case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) PATH=$PATH:/usr/local/go/bin ;; esac
	command -v go >/dev/null || die "go not found (expected in /usr/local/go/bin)"
	export PATH GOTOOLCHAIN
	GOTOOLCHAIN=$(k8s_field go 3)
	export GOFLAGS="-buildvcs=false"
	# The test bed's own build cache, beside the binaries, so that
	# tests/k8s/build may empty it (an explicit GOCACHE stays the caller's).
	if [ -z "${GOCACHE:-}" ]; then
		export GOCACHE=$K8S_CACHE/.go-build
		K8S_OWN_GOCACHE=1
	fi
}

# The cache entry of a component: <component>-<version>-<hash>, the hash over
# its rows in the versions table (pin rows too), its wrapper's go.mod and go.sum
# and Go files (our own main package, if any), the Go
# toolchain and the build script's recipe version, so any change to what
# goes into the binaries makes a new entry and an old one is never reused.
K8S_RECIPE=1
k8s_key() {
	local comp=$1 dir=$K8S_DIR/mod/$1 h wrapper=()
	if ! k8s_crd_only "$comp"; then
		[ -f "$dir/go.mod" ] && [ -f "$dir/go.sum" ] ||
			die "$comp: no mod/$comp/go.mod or go.sum; run tests/k8s/update-mods $comp"
		wrapper=("$dir/go.mod" "$dir/go.sum")
	fi
	h=$({ k8s_rows | awk -v c="$comp" '$1 == c'; k8s_field go 3; echo "recipe $K8S_RECIPE"
		if [ ${#wrapper[@]} -gt 0 ]; then
			cat "${wrapper[@]}"
			# Nothing for a wrapper without Go files, so their keys stay.
			find "$dir" -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0 -r cat
		fi; } | sha256sum | cut -c1-12)
	printf '%s-%s-%s\n' "$comp" "$(k8s_field "$comp" 3)" "$h"
}

# k8s_entry COMPONENT: the component's cache directory (bin/, crd/), or
# failure with a hint when it has not been built.
k8s_entry() {
	local d
	d=$K8S_CACHE/$(k8s_key "$1")
	[ -d "$d" ] || die "$1 is not built ($d missing): run tests/k8s/build $1"
	printf '%s\n' "$d"
}
