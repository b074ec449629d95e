"""Medians of a mesh_ab.sh sitting: sidecar CPU per request per scenario,
before and after, and the median of the per-round after/before ratios."""
import glob
import json
import re
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "target/mesh-ab"
rows = {}
for path in sorted(glob.glob(f"{out}/*.json")):
    which, rnd = re.match(r".*/(before|after)-(\d+)\.json", path).groups()
    for result in json.load(open(path))["results"]:
        if result.get("target") == "mesh":
            key = (result["scenario"], which)
            rows.setdefault(key, {})[int(rnd)] = result["sidecar_cpu_us_per_request_total"]
for scenario in dict.fromkeys(s for s, _ in rows):
    before, after = rows.get((scenario, "before"), {}), rows.get((scenario, "after"), {})
    paired = [after[r] / before[r] for r in before if r in after]
    if not paired:
        continue
    print(
        f"{scenario:28} before {statistics.median(before.values()):7.1f} us"
        f"  after {statistics.median(after.values()):7.1f} us"
        f"  ratio {statistics.median(paired):.2f}  (rounds {len(paired)})"
    )
