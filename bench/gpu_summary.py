"""The summary table of `bench/gpu_run.sh`: one row per part (status, wall time, headline numbers).

    python bench/gpu_summary.py OUT_DIR DEVICE

Reads ``OUT_DIR/parts.tsv`` (part, exit status, milliseconds, written by gpu_run.sh) and each part's JSON
(``OUT_DIR/<part>.json``); the headline numbers are every speed-up, ratio and overhead in that JSON (up
to six, found by name at any depth; for the Hessian each peer's time over modescape's) and, for the
surface, the sweep's seconds and the precision difference. Writes ``OUT_DIR/summary.json`` too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FILES = {"surface-autotune": "surface"}


def headline(obj, prefix: str = "", out: dict | None = None) -> dict[str, float]:
    """Numbers whose key names a speed-up, a ratio or an overhead, at any depth (``a.b.speedup_x``; NaN
    left out), and each peer's time over modescape's where a ``time_to`` table holds both (the Hessian)."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        times = obj.get("time_to")
        if isinstance(times, dict) and isinstance(times.get("modescape"), dict):
            ours = times["modescape"]
            tol = min(ours, key=float) if ours else None
            for peer, t in times.items():
                if peer != "modescape" and tol in t and ours[tol]:
                    out[f"{prefix}{peer}/modescape@{tol}"] = float(t[tol]) / float(ours[tol])
        for k, v in obj.items():
            key = f"{prefix}{k}"
            number = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
            if number and any(w in k for w in ("speedup", "ratio", "overhead")):
                out[key] = float(v)
            elif isinstance(v, (dict, list)) and k != "time_to":
                headline(v, key + ".", out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            headline(v, f"{prefix}{i}.", out)
    return out


def surface_numbers(d: dict) -> dict[str, float]:
    out = {}
    if "modescape" in d:
        out["sweep_s"] = d["modescape"]["seconds"]
        out["compile+probe_s"] = d["modescape"].get("warmup_seconds", 0.0)
    for k, v in d.get("fp32", {}).get("max_rel_diff", {}).items():
        out[f"bf16_rel_diff.{k}"] = v
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out, device = Path(argv[0]), (argv[1] if len(argv) > 1 else "")
    rows = []
    tsv = out / "parts.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        part, rc, ms = line.split("\t")
        rc = int(rc)
        status = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else f"failed ({rc})")
        f = out / f"{FILES.get(part, part)}.json"
        numbers: dict[str, float] = {}
        if rc == 0 and f.exists():
            d = json.loads(f.read_text())
            if part.startswith("surface"):
                numbers.update(surface_numbers(d))
            numbers.update(dict(list(headline(d).items())[:6]))
        rows.append({"part": part, "status": status, "seconds": int(ms) / 1000, "numbers": numbers})
    (out / "summary.json").write_text(json.dumps({"device": device, "parts": rows}, indent=2) + "\n")
    total = sum(r["seconds"] for r in rows)
    print(f"\nsummary ({device}; {total:.0f} s in all, results in {out}):")
    print(f"{'part':<18} {'status':<12} {'seconds':>8}  numbers")
    for r in rows:
        nums = ", ".join(f"{k} {v:.3g}" for k, v in r["numbers"].items()) or "-"
        print(f"{r['part']:<18} {r['status']:<12} {r['seconds']:>8.1f}  {nums}")
    return 0 if rows and all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
