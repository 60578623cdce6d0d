#!/usr/bin/env python3
"""Summarise a bench/run.sh result directory into results.json and results.md (medians of the
interleaved rounds, and Locus's ratio to each peer)."""
import glob, json, os, re, statistics, sys

out = sys.argv[1]
meta = dict(l.strip().split("=", 1) for l in open(f"{out}/meta.txt") if "=" in l and not l.startswith(" "))
def cpu_figures(path, requests):
    """The proxy's CPU per request and how busy both cores were, from run_wrk's .cpu file."""
    try:
        kv = dict(l.strip().split("=", 1) for l in open(path) if "=" in l)
    except OSError:
        return {}
    def busy(key):
        b0, t0, b1, t1 = map(int, kv[key].split())
        return 100.0 * (b1 - b0) / max(1, t1 - t0)
    seconds = int(kv["ticks"]) / int(kv["hz"])
    return {
        "cpu_us": seconds * 1e6 / requests if requests else None,
        # Requests one fully busy core would answer at this CPU per request.
        "per_core": requests / seconds if seconds else None,
        "load_busy": busy("load_core"),
        "proxy_busy": busy("proxy_core"),
    }

rows = {}
for f in sorted(glob.glob(f"{out}/raw/*-*-[0-9]*.txt")):
    name = os.path.basename(f)[:-4]
    # small-locus-nometrics-2: scenario first (no dashes), round last, target in between.
    scenario, rest = name.split("-", 1)
    target, _round = rest.rsplit("-", 1)
    if scenario == "warmup":
        continue
    text = open(f).read()
    m = re.search(r"RESULT (.*)", text)
    if not m:
        continue
    r = dict(kv.split("=") for kv in m.group(1).split())
    r = {k: int(v) for k, v in r.items()}
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    try:
        r["rss_kb"] = int(open(f + ".rss").read().strip())
    except (OSError, ValueError):
        r["rss_kb"] = None
    r.update(cpu_figures(f + ".cpu", r["requests"]))
    r["round"] = int(_round)
    rows.setdefault(scenario, {}).setdefault(target, []).append(r)

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

summary = {}
for scenario, targets in rows.items():
    summary[scenario] = {}
    for target, runs in targets.items():
        summary[scenario][target] = {
            "rps": med([r["rps"] for r in runs]),
            "rps_runs": [round(r["rps"]) for r in runs],
            "p50_ms": med([r["p50_us"] / 1000 for r in runs]),
            "p99_ms": med([r["p99_us"] / 1000 for r in runs]),
            "p999_ms": med([r["p999_us"] / 1000 for r in runs]),
            "errors": sum(r["sock_errors"] + r["non2xx"] for r in runs),
            "rss_peak_kb": med([r["rss_kb"] for r in runs]),
            "cpu_us": med([r.get("cpu_us") for r in runs]),
            "cpu_us_runs": [round(r["cpu_us"], 2) for r in runs if r.get("cpu_us")],
            "per_core": med([r.get("per_core") for r in runs]),
            "load_busy": med([r.get("load_busy") for r in runs]),
            "proxy_busy": med([r.get("proxy_busy") for r in runs]),
        }
json.dump({"meta": meta, "summary": summary}, open(f"{out}/results.json", "w"), indent=2)

titles = {"small": "keep-alive, 9-byte body", "1k": "keep-alive, 1 KiB body",
          "64k": "keep-alive, 64 KiB body", "newconn": "new connection per request"}
lines = [f"Run {meta.get('date')} on {meta.get('cpus')} cores ({meta.get('model')}); "
         f"{meta.get('params')}; Envoy {meta.get('envoy', '?').split(': ')[-1]}, nginx {meta.get('nginx')}, "
         f"HAProxy {meta.get('haproxy')}, Locus {meta.get('locus')}.", ""]
for scenario in ["small", "1k", "64k", "newconn"]:
    if scenario not in summary:
        continue
    s = summary[scenario]
    lines += [f"**{titles[scenario]}** (medians of {len(next(iter(rows[scenario].values())))} interleaved rounds)", "",
              "| target | req/s | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MiB | Locus req/s ÷ target |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    locus = s.get("locus", {}).get("rps")
    for t in ["direct", "envoy", "nginx", "haproxy", "locus", "locus-nometrics"]:
        if t not in s:
            continue
        v = s[t]
        ratio = f"{locus / v['rps']:.2f}" if locus and t not in ("locus",) else "—"
        rss = f"{v['rss_peak_kb'] / 1024:.1f}" if v["rss_peak_kb"] else "—"
        lines.append(f"| {t} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['p999_ms']:.2f} | "
                     f"{v['errors']} | {rss} | {ratio} |")
    lines.append("")
    # What each proxy costs, from its own CPU time in the same runs: req/s is capped by
    # whichever core is full, and wrk shares its core with the backends.
    if any(s[t].get("cpu_us") for t in s if t != "direct"):
        lines += ["| target | CPU µs/request | req/s per core (at 100% of one core) | Locus ÷ target, per core | "
                  "load core busy % | proxy core busy % |", "|---|---:|---:|---:|---:|---:|"]
        locus_core = s.get("locus", {}).get("per_core")
        for t in ["envoy", "nginx", "haproxy", "locus", "locus-nometrics"]:
            v = s.get(t)
            if not v or not v.get("cpu_us"):
                continue
            ratio = f"{locus_core / v['per_core']:.2f}" if locus_core and t != "locus" else "—"
            lines.append(f"| {t} | {v['cpu_us']:.1f} | {v['per_core']:,.0f} | {ratio} | "
                         f"{v['load_busy']:.0f} | {v['proxy_busy']:.0f} |")
        lines.append("")
    # Round by round: each round runs every target one after the other, so Locus is compared
    # with each peer under the same minute's conditions (this machine drifts more between
    # minutes than the proxies differ).
    mine = {r["round"]: r for r in rows[scenario].get("locus", [])}
    paired = []
    for t in ["nginx", "haproxy", "envoy"]:
        pairs = [(mine[r["round"]], r) for r in rows[scenario].get(t, []) if r["round"] in mine]
        if len(pairs) < 3:
            continue
        rps = [a["rps"] / b["rps"] for a, b in pairs]
        p99 = [a["p99_us"] / max(1, b["p99_us"]) for a, b in pairs]
        cpu = [a["cpu_us"] / b["cpu_us"] for a, b in pairs if a.get("cpu_us") and b.get("cpu_us")]
        n = len(pairs)
        cpu_cell = (f"{statistics.median(cpu):.2f} ({sum(x < 1 for x in cpu)} of {len(cpu)})" if cpu else "—")
        paired.append(f"| {t} | {statistics.median(rps):.2f} ({sum(x > 1 for x in rps)} of {n}) | "
                      f"{statistics.median(p99):.2f} ({sum(x <= 1 for x in p99)} of {n}) | {cpu_cell} |")
    if paired:
        lines += ["| Locus ÷ target, round by round | req/s (rounds higher) | p99 (rounds lower or equal) | "
                  "CPU µs/request (rounds lower) |", "|---|---:|---:|---:|"] + paired + [""]
mem = ["| proxy | RSS idle MiB |", "|---|---:|"]
for t in ["envoy", "nginx", "haproxy", "locus"]:
    k = f"rss_idle_kb.{t}"
    if k in meta:
        mem.append(f"| {t} | {int(meta[k]) / 1024:.1f} |")
if "rss_10k_endpoints_kb.locus" in meta:
    mem.append(f"| locus with 10,000 endpoints in 100 zones | {int(meta['rss_10k_endpoints_kb.locus']) / 1024:.1f} |")
lines += ["**Memory**", ""] + mem + [""]
open(f"{out}/results.md", "w").write("\n".join(lines))
print("\n".join(lines))
