#!/bin/sh
# Prints the pipe and FGET benchmark figures and their ratios, as a markdown
# table, from criterion's results of the last `cargo bench --bench pipe` and
# `cargo bench --bench fget`.
#
#   benches/report.sh [criterion-dir]
#
# The directory defaults to $CARGO_TARGET_DIR/criterion, else target/criterion.
# Rates use criterion's mean time per iteration. Each figure is compared with
# the raw tokio baseline of its own group (raw_tokio*); the dispatch group also
# compares 1,000 subscriptions with one. Needs only sh, sed and awk.
set -eu

dir=${1:-${CARGO_TARGET_DIR:-target}/criterion}
[ -d "$dir" ] || { echo "no criterion results in $dir; run cargo bench --bench pipe" >&2; exit 1; }

# One line per benchmark: group bench kind per_iter mean_ns
rows=$(
	for est in "$dir"/*/*/new/estimates.json; do
		[ -f "$est" ] || continue
		d=$(dirname "$(dirname "$est")")
		bench=$(basename "$d")
		group=$(basename "$(dirname "$d")")
		# The first point estimate in estimates.json is the mean's.
		mean=$(sed -n 's/^{"mean":{[^}]*},"point_estimate":\([0-9.e+-]*\).*/\1/p' "$est")
		tp=$(sed -n 's/.*"throughput":{"\([A-Za-z]*\)":\([0-9]*\)}.*/\1 \2/p' "$d/new/benchmark.json")
		[ -n "$mean" ] && [ -n "$tp" ] || { echo "cannot read $d" >&2; exit 1; }
		echo "$group $bench $tp $mean"
	done
)
[ -n "$rows" ] || { echo "no results in $dir" >&2; exit 1; }

# Groups in bench order, the baseline first in each, then by name.
echo "$rows" | awk '{
	r = index("tcp_round_trip_64B udp_round_trip_64B tcp_bulk subscription_dispatch fget_network fget_to_disk", $1)
	print (r ? r : 999), ($2 ~ /^raw_tokio/ ? 0 : 1), $0
}' | sort -k1,1n -k2,2n -k4,4V | cut -d' ' -f3- | awk '
function rate(i) { return per[i] / (ns[i] * 1e-9) }
function show(i,   r) {
	r = rate(i)
	if (kind[i] == "Bytes") return sprintf("%.0f MB/s (%.2f GiB/s)", r / 1e6, r / 1073741824)
	if (per[i] == 1) return sprintf("%.1fk /s", r / 1e3)
	return sprintf("%.2fM msg/s", r / 1e6)
}
function dur(x) {
	if (x >= 1e6) return sprintf("%.2f ms", x / 1e6)
	if (x >= 1e3) return sprintf("%.2f µs", x / 1e3)
	return sprintf("%.0f ns", x)
}
{
	n++; grp[n] = $1; name[n] = $2; kind[n] = $3; per[n] = $4; ns[n] = $5
	if ($2 ~ /^raw_tokio/) base[$1] = n
	if ($2 == "pipe_1_sub") one[$1] = n
}
END {
	print "| group | benchmark | time / iteration | rate | vs raw tokio |"
	print "|---|---|---|---|---|"
	for (i = 1; i <= n; i++) {
		b = base[grp[i]]
		ratio = (b && b != i) ? sprintf("%.2fx", rate(i) / rate(b)) : "baseline"
		printf "| %s | %s | %s | %s | %s |\n", grp[i], name[i], dur(ns[i]), show(i), ratio
	}
	print ""
	for (i = 1; i <= n; i++) if (name[i] == "pipe_1000_subs" && one[grp[i]])
		printf "1,000 subscriptions vs 1: %.2fx (target >= 0.5x)\n", rate(i) / rate(one[grp[i]])
	for (i = 1; i <= n; i++) if (name[i] == "pipe" && base[grp[i]])
		printf "%s: pipe %.2fx raw tokio (target >= 0.9x)\n", grp[i], rate(i) / rate(base[grp[i]])
	for (i = 1; i <= n; i++) if (name[i] == "p2pipe" && base[grp[i]])
		printf "%s: p2pipe %.2fx raw tokio (target >= 0.8x)\n", grp[i], rate(i) / rate(base[grp[i]])
}'
