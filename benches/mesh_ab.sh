#!/usr/bin/env bash
# A/B the mesh bench between two commits on one machine, in one sitting:
# the two bench executables run in alternating order (ABBA...) so drift of
# a shared machine hits both. Build each with `cargo bench --bench mesh
# --no-run` in its own worktree; pass the executables and their worktrees.
#   benches/mesh_ab.sh BEFORE_EXE BEFORE_WORKTREE AFTER_EXE AFTER_WORKTREE [ROUNDS] [OUT]
# Then: python3 benches/mesh_ab_summary.py OUT
set -euo pipefail
before_exe=$1 before_dir=$2 after_exe=$3 after_dir=$4
rounds=${5:-6}
out=${6:-target/mesh-ab}
mkdir -p "$out" "$before_dir/target" "$after_dir/target"
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then order="before after"; else order="after before"; fi
    for which in $order; do
        if [ "$which" = before ]; then exe=$before_exe dir=$before_dir; else exe=$after_exe dir=$after_dir; fi
        (cd "$dir" && "$exe" --bench) > "$out/$which-$r.log" 2>&1
        cp "$dir/target/mesh-bench.json" "$out/$which-$r.json"
        echo "round $r: $which done"
    done
done
