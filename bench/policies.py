#!/usr/bin/env python3
"""Policies report: every offloading policy of moesched-sim on every shipped trace.

Runs `moesched-sim compare --json -` once per (trace, GPU preset, cache budget) with every
non-oracle policy the simulator lists (plus `oracle`, whose TPOT and the lower bound's become
columns), then a few ablation runs, and writes

  bench/results/policies.csv  one row per (trace, gpu, budget, policy), columns
                              trace,gpu,cache_gb,gamma,policy,predictor,tpot_ms,oracle_tpot_ms,bound_tpot_ms
  bench/policies.md           summary tables, the issue-12 targets, ablations of promoe, spmoe and
                              moesched, and SD against plain decoding of the same prompts; generated
                              from the CSV (read back) plus the ablation runs: no hand-written numbers.

Policies: the names `moesched-sim compare --help` lists under --policies (on-demand, lru, lfu,
static, predict:*, moe-infinity, mixtral-offloading, promoe, spmoe, moesched, ...), every name
containing "oracle" excepted, plus `prefetch:CHANNEL` for each prediction channel the trace
records (read from the trace's safetensors header). A policy the tool refuses for a trace
(exit 2 naming field 'policies') is left out of that trace's rows and listed, with the tool's
message, in the md.

Columns: `gamma` is the trace's recorded draft length (0 = plain decoding; from the trace
header's provenance); `predictor` is what ran: the label the tool appends to a published
policy's row (`promoe [mlp_stride2]` -> mlp_stride2, `spmoe [fallback transition]` ->
`transition (fallback)`), else derived from the name (prefetch:C -> C, predict:X -> X,
moe-infinity -> activation-matrix, the baselines -> none). `tpot_ms` is the mean time per
output token; oracle_tpot_ms is the best offline reference's at the same point (the better of
`oracle`, Belady's fewest copies each issued as early as memory allows, and `oracle-aggressive`,
the time-aware one that fetches whenever the link is free; both read the run's future), and
bound_tpot_ms the lower bound's. Numbers are printed with 4 decimals: the same inputs give the same CSV byte for byte.

Budget rule (per trace, from the model's sizes the tool reports: expert bytes, experts in all,
experts per MoE layer): n = max(experts of one MoE layer, round(f x all experts)) slots for
f in --fractions (default 1/6, 1/3, 1/2; 1/3 of the mix model is the demo's default 0.15 GB),
passed as --cache-gb (n + 0.5) x expert bytes (rounded to 4 decimals of a GB), and checked
against the cache_experts the tool reports. A budget above what the GPU preset has left for
experts (the tool's default budget there) is not run; the md lists those points.

Traces (default): every traces/real/*.trace.safetensors (recorded on the project's own models)
and traces/synthetic/*.trace.safetensors (routing generated for published model shapes, Qwen3 and
Mixtral, with no recorded hidden state: the published policies fall back to routing-only
predictors there).

Exit status: 0 done; 1 a run failed (the message names the trace, GPU, budget and what
moesched-sim said; nothing is written), unless --keep-going: then the failed points are left out,
listed in the md, and the exit status is 0; 2 bad input (missing binary, missing or unreadable
trace, bad option), checked before any simulation.

Python 3 standard library only.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import io
import json
import math
import os
import platform
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["trace", "gpu", "cache_gb", "gamma", "policy", "predictor", "tpot_ms", "oracle_tpot_ms", "bound_tpot_ms"]
DEFAULT_SIMS = ["build/release/sim/moesched-sim", "build/test/sim/moesched-sim"]
DEFAULT_GPUS = ["rtx4090", "h200"]
GPU_LINK = {"rtx4090": "PCIe 4", "h200": "PCIe 5"}
DEFAULT_FRACTIONS = "1/6,1/3,1/2"
ABLATION_TRACES = ["mix-prose-sd4", "mix-code-plain", "fg-code-sd4"]
QUICK_TRACES = ["mix-prose-sd4", "mix-code-plain", "fg-code-sd4"]
CHECK_TRACES = ["mix-prose-sd4"]
PROMPT_SETS = ["mix-prose", "mix-code", "fg-prose", "fg-code"]
# Policies that read the replayed run's own future (beside the oracle): listed in the tables, marked
# FUTURE_MARK, never counted as a competitor ("best other", bold, winners, best plain/SD policy).
# `static` by default pins the replayed run's own most used experts (sim/src/registry.hpp).
FUTURE_KNOWING = {"static"}
FUTURE_MARK = " (future)"


def knows_future(policy: str) -> bool:
    return "oracle" in policy or policy.split(":")[0] in FUTURE_KNOWING


def rows_by_point(rows: list[dict]) -> dict:
    """{(trace, gpu, cache_gb): [rows of every policy at that point]}, in the rows' order."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["trace"], r["gpu"], r["cache_gb"]), []).append(r)
    return by


def fastest(rs: list[dict]) -> dict:
    """The row with the lowest TPOT (ties: the policy name first in order)."""
    return min(rs, key=lambda r: (float(r["tpot_ms"]), r["policy"]))


def prompt_sets_with_plain(traces: list[str]):
    """(prompt set, {trace name: path}, the set's plain trace) for each prompt set whose plain trace is given."""
    names = {trace_name(t): t for t in traces}
    for s in PROMPT_SETS:
        if f"{s}-plain" in names:
            yield s, names, names[f"{s}-plain"]

# Ablations: (switch, what it switches off). The switch names are the policies' `name:key=value`
# options (include/moesched/policy/{promoe,spmoe,moesched_policy,pipeline}.hpp, listed by
# `moesched-sim compare --help`); each variant changes one option from the policy's default.
ABLATIONS = {
    "promoe": [
        ("", "ProMoE as published (defaults)"),
        ("predictor=transition", "routing-only transition predictor instead of the learned MLP channel"),
        ("predictor=none", "no predictor: no prefetch at all"),
        ("stride=1", "no stride: predictions one layer ahead only"),
        ("chunks=1", "whole-expert copies instead of one per matrix"),
        ("preempt=off", "no early preemption at the gate"),
        ("touch=off", "prefetches do not touch the per-layer LRU"),
        ("lookahead=0", "unbounded lookahead"),
    ],
    "spmoe": [
        ("", "SP-MoE as published (defaults)"),
        ("predictor=transition", "routing-only transition predictor instead of the draft gate"),
        ("predictor=none", "no predictor: no prefetch at all"),
        ("cutoff=all", "no cutoff: drafting-time prefetch for every layer"),
        ("cutoff=closed", "the guide's closed-form cutoff instead of the solver"),
        ("batch=off", "drafting-time copies not submitted as one batch"),
        ("beyond=0", "no layer-ahead prefetch beyond the cutoff"),
        ("preempt=off", "no early preemption at the gate"),
    ],
    "moesched": [
        ("", "moesched (defaults)"),
        ("predictor=auto", "the trace's best channel instead of routing-only transitions"),
        ("predictor=none", "no predictor: no prefetch at all"),
        ("utility=off", "no learned reuse score (layer-clock victims, no utility admission)"),
        ("link=off", "no link-load admission test"),
        ("freq=off", "no long-run frequency class in the utility's state"),
        ("density=off", "evict by expected layers to next use, not layers held per expected hit (d / p)"),
        ("cutoff=off", "no SD cutoff: drafting-time prefetch for every layer"),
        ("batch=off", "drafting-time copies not submitted as one batch"),
        ("beyond=0", "no layer-ahead prefetch beyond the cutoff"),
        ("chunks=1", "whole-expert copies (chunks=auto off)"),
        ("preempt=off", "no early preemption at the gate"),
    ],
}


class InputError(Exception):
    """Bad input: exit 2."""


class RunError(Exception):
    """A simulator run failed: exit 1 unless --keep-going."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rel(path: str) -> str:
    p = os.path.abspath(path)
    return os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else path


# ---- inputs -------------------------------------------------------------------------------------

def find_sim(given: str | None) -> str:
    if given:
        p = given if os.path.isabs(given) else os.path.abspath(given)
        if not os.path.isfile(p):
            raise InputError(f"--sim {given}: no such file (build it: cmake --build BUILD --target moesched-sim)")
        if not os.access(p, os.X_OK):
            raise InputError(f"--sim {given}: not executable")
        return p
    for c in DEFAULT_SIMS:
        p = os.path.join(ROOT, c)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise InputError("moesched-sim not found at " + " or ".join(DEFAULT_SIMS) +
                     " (relative to " + ROOT + "); build it (cmake --build BUILD --target moesched-sim) "
                     "or pass --sim PATH")


def trace_header(path: str) -> dict:
    """Model name, MoE layers, experts per layer, channels and recorded gamma from the header."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise InputError(f"{rel(path)}: too short to be a safetensors file")
            n = struct.unpack("<Q", raw)[0]
            if n <= 0 or n > 100_000_000:
                raise InputError(f"{rel(path)}: header length {n} is not plausible")
            head = json.loads(f.read(n))
        meta = json.loads(head["__metadata__"]["moesched_trace"])
        model = meta["model"]
        prov = meta.get("provenance", {}) or {}
        gamma = int(prov.get("gamma") or 0) if prov.get("mode", "sd") == "sd" else 0
        return {
            "model": model["name"],
            "moe_layers": int(model["moe_layers"]),
            "experts_per_layer": int(model["experts_per_layer"]),
            "channels": [c["name"] for c in meta.get("channels", [])],
            "gamma": gamma,
            "acceptance_rate": prov.get("acceptance_rate") if gamma > 0 else None,
        }
    except OSError as e:
        raise InputError(f"{rel(path)}: cannot read: {e.strerror}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{rel(path)}: not a moesched trace header ({type(e).__name__}: {e})") from None


def listed_policies(sim: str) -> list[str]:
    """The policy names `compare --help` lists under --policies, in order."""
    r = subprocess.run([sim, "compare", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        raise InputError(f"{rel(sim)} compare --help exited {r.returncode}: {r.stderr.strip()}")
    names, inside = [], False
    for line in r.stdout.splitlines():
        s = line.strip()
        if s.startswith("--policies"):
            inside = True
            continue
        if inside and s.startswith("--"):
            break
        m = re.match(r"^([a-z][a-z0-9_-]*(?::[a-z0-9_-]+)?): ", s) if inside else None
        if m and m.group(1) not in names:
            names.append(m.group(1))
    for need in ("on-demand", "lru", "oracle", "moesched"):
        if need not in names:
            raise InputError(f"{rel(sim)} compare --help does not list policy '{need}' under --policies "
                             f"(found: {', '.join(names) or 'none'}); is it an older moesched-sim?")
    return names


def parse_fractions(text: str) -> list[float]:
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            if "/" in item:
                a, b = item.split("/")
                v = float(a) / float(b)
            else:
                v = float(item)
        except (ValueError, ZeroDivisionError):
            raise InputError(f"--fractions: '{item}' is not a number or a fraction like 1/3") from None
        if not 0 < v <= 1:
            raise InputError(f"--fractions: {item} is not in (0, 1]")
        out.append(v)
    return out


# ---- running the simulator ---------------------------------------------------------------------

class Sim:
    def __init__(self, path: str, jobs: int):
        self.path, self.jobs, self.count, self.total, self.seconds, self.invocations = path, jobs, 0, 0, 0.0, 0

    def compare(self, trace: str, gpu: str, cache_gb: float | None, policies: list[str],
                extra: tuple[str, ...] = ()) -> tuple[int, dict | None, str]:
        cmd = [self.path, "compare", "--trace", trace, "--gpu", gpu, "--policies", ",".join(policies),
               "--json", "-", "--jobs", str(self.jobs), *extra]
        if cache_gb is not None:
            cmd += ["--cache-gb", f"{cache_gb:.4f}"]
        t0 = time.monotonic()
        self.invocations += 1
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        self.seconds += time.monotonic() - t0
        if r.returncode != 0:
            return r.returncode, None, r.stderr.strip() or r.stdout.strip()
        try:
            return 0, json.loads(r.stdout), ""
        except ValueError as e:
            return 70, None, f"moesched-sim wrote output that is not JSON ({e})"

    def step(self, what: str) -> None:
        self.count += 1
        log(f"[{self.count}/{self.total}] {what}")


def split_label(requested: str, label: str) -> tuple[str, str]:
    """(policy, predictor) from the requested name and the row label the tool wrote."""
    m = re.match(r"^(.*?) \[(fallback )?([^\]]+)\]$", label)
    if m:
        return requested, m.group(3) + (" (fallback)" if m.group(2) else "")
    if requested.startswith("prefetch:"):
        return requested, requested.split(":", 1)[1]
    if requested.startswith("predict:"):
        return requested, requested.split(":", 1)[1]
    if requested == "moe-infinity":
        return requested, "activation-matrix"
    return requested, "none"


REFERENCES = ["oracle", "oracle-aggressive"]


def run_point(sim: Sim, trace: str, gpu: str, cache_gb: float, policies: list[str], what: str):
    """Runs `policies` + the offline REFERENCES at one point. Returns (records by requested name,
    {reference: record}, bound, scenario, refused {name: message}). Raises RunError when the point
    cannot be run."""
    want = [p for p in policies if p not in REFERENCES] + REFERENCES
    rc, doc, err = sim.compare(trace, gpu, cache_gb, want)
    refused: dict[str, str] = {}
    if rc == 2 and "'policies'" in err:
        # find the policies the tool refuses here, one at a time, then run the rest together
        keep = []
        for p in want:
            prc, _, perr = sim.compare(trace, gpu, cache_gb, [p])
            if prc == 0:
                keep.append(p)
            elif prc == 2 and "'policies'" in perr:
                refused[p] = perr.splitlines()[-1] if perr else "refused"
            else:
                raise RunError(f"{rel(trace)} (gpu {gpu}, cache {cache_gb:.4f} GB), policy {p}: "
                               f"moesched-sim exited {prc}: {perr}")
        for ref in REFERENCES:
            if ref not in keep:
                raise RunError(f"{rel(trace)} (gpu {gpu}, cache {cache_gb:.4f} GB): {ref} was refused: {refused[ref]}")
        want = keep
        rc, doc, err = sim.compare(trace, gpu, cache_gb, want)
    sim.step(what + (f" ({len(refused)} refused)" if refused else ""))
    if rc != 0 or doc is None:
        raise RunError(f"{rel(trace)} (gpu {gpu}, cache {cache_gb:.4f} GB): moesched-sim exited {rc}: {err}")
    recs = doc.get("records", [])
    if len(recs) != len(want) + 1 or recs[-1].get("policy") != "lower-bound":
        raise RunError(f"{rel(trace)} (gpu {gpu}, cache {cache_gb:.4f} GB): expected {len(want)} records and the "
                       f"bound, got {len(recs)} records")
    by_name = {p: r for p, r in zip(want, recs[:-1])}
    refs = {ref: by_name.pop(ref) for ref in REFERENCES}
    return by_name, refs, recs[-1], doc["scenario"], refused


def best_reference(refs: dict) -> float:
    """The best (lowest) TPOT of the offline references."""
    return min(r["tpot_ms"]["mean"] for r in refs.values())


# ---- the matrix -------------------------------------------------------------------------------

def budgets_for(sim: Sim, trace: str, hdr: dict, gpu: str, fractions: list[float], cache: dict):
    """([(fraction label, slots, cache_gb)], expert bytes, experts, [(fraction, slots, cache_gb, room_gb)]
    above the GPU) from the model's sizes and what the GPU preset leaves for experts (a probe run, once
    per model and GPU: the tool's default budget)."""
    key = (hdr["model"], gpu)
    if key not in cache:
        rc, doc, err = sim.compare(trace, gpu, None, ["on-demand"])
        if rc != 0 or doc is None:
            raise RunError(f"{rel(trace)}: probe run (gpu {gpu}, policy on-demand) failed, exit {rc}: {err}")
        sc = doc["scenario"]
        cache[key] = {"expert_bytes": int(round(sc["expert_mb"] * 1e6)), "total": int(sc["total_experts"]),
                      "room_gb": float(sc["cache_gb"])}
    eb, tot, room = cache[key]["expert_bytes"], cache[key]["total"], cache[key]["room_gb"]
    layer = hdr["experts_per_layer"]
    out, above, seen = [], [], set()
    for f in fractions:
        n = min(tot, max(layer, int(round(f * tot))))
        if n in seen:
            continue
        seen.add(n)
        gb = round((n + 0.5) * eb / 1e9, 4)
        if gb <= room:
            out.append((f, n, gb))
        else:
            above.append((f, n, gb, room))
    return out, eb, tot, above


def fmt4(x: float) -> str:
    return f"{x:.4f}"


def trace_name(path: str) -> str:
    """traces/real/mix-prose-sd4.trace.safetensors -> mix-prose-sd4"""
    return os.path.basename(path).replace(".trace.safetensors", "")


def record_failure(args, failures: list, e: Exception) -> None:
    """Keep a run's failure for the md and say it; re-raise unless --keep-going."""
    failures.append(str(e))
    log(f"policies.py: error: {e}")
    if not args.keep_going:
        raise e


def run_matrix(args, sim: Sim, traces: list[str], gpus: list[str], fractions: list[float], policies_listed: list[str]):
    rows, refusals, failures, points, too_big = [], [], [], [], []
    sizes: dict = {}
    plan = []
    for t in traces:
        hdr = trace_header(t)
        base = [p for p in policies_listed if "oracle" not in p] + [f"prefetch:{c}" for c in hdr["channels"]]
        for g in gpus:
            try:
                bl, eb, tot, above = budgets_for(sim, t, hdr, g, fractions, sizes)
            except RunError as e:
                failures.append(str(e))
                if not args.keep_going:
                    raise
                continue
            for (f, n, gb) in bl:
                plan.append((t, hdr, g, f, n, gb, base, eb, tot))
            too_big += [(trace_name(t), g, f, n, gb, room) for (f, n, gb, room) in above]
    sim.total = sim.count + len(plan) + len(args.ablation_traces_resolved)
    for (t, hdr, g, f, n, gb, base, eb, tot) in plan:
        name = trace_name(t)
        try:
            recs, refs, bound, sc, refused = run_point(sim, t, g, gb, base, f"{name} {g} {gb:.4f} GB ({n} experts): "
                                                       f"{len(base)} policies + {len(REFERENCES)} references")
        except RunError as e:
            record_failure(args, failures, e)
            continue
        if int(sc["cache_experts"]) != n:
            raise RunError(f"{rel(t)} (gpu {g}): --cache-gb {gb:.4f} gave {sc['cache_experts']} experts, the rule "
                           f"asked for {n}")
        for p, m in refused.items():
            refusals.append((name, g, gb, p, m))
        points.append({"trace": name, "gpu": g, "cache_gb": fmt4(gb), "slots": n, "fraction": f,
                       "total": tot, "expert_mb": eb / 1e6, "bandwidth_gbps": sc.get("bandwidth_gbps"),
                       "compute_ms": bound.get("compute_only_tpot_ms"),
                       **{ref: refs[ref]["tpot_ms"]["mean"] for ref in REFERENCES}})
        for p in base:
            if p not in recs:
                continue
            r = recs[p]
            pol, pred = split_label(p, r["policy"])
            rows.append({"trace": name, "gpu": g, "cache_gb": fmt4(gb), "gamma": str(hdr["gamma"]), "policy": pol,
                         "predictor": pred, "tpot_ms": fmt4(r["tpot_ms"]["mean"]),
                         "oracle_tpot_ms": fmt4(best_reference(refs)), "bound_tpot_ms": fmt4(bound["tpot_ms"]["mean"])})
    return rows, refusals, failures, points, too_big


def run_ablations(args, sim: Sim, traces: list[str], gpu: str, fraction: float):
    """{trace: {"cache_gb", "slots", "rows": [(policy, switch, meaning, name, predictor, tpot)], ...}}"""
    out, failures = {}, []
    sizes: dict = {}
    for t in traces:
        hdr = trace_header(t)
        name = trace_name(t)
        try:
            (bl, _, _, above) = budgets_for(sim, t, hdr, gpu, [fraction], sizes)
            if not bl:
                raise RunError(f"{rel(t)} (gpu {gpu}): the ablation budget {above[0][2]:.4f} GB is above the "
                               f"{above[0][3]:.2f} GB the preset leaves for experts")
            (_, n, gb) = bl[0]
            names = ["lru"]
            for base, variants in ABLATIONS.items():
                for sw, _ in variants:
                    names.append(base + (":" + sw if sw else ""))
            recs, refs, bound, sc, refused = run_point(sim, t, gpu, gb, names, f"ablation {name} {gpu} {gb:.4f} GB: "
                                                       f"{len(names)} variants + {len(REFERENCES)} references")
        except RunError as e:
            record_failure(args, failures, e)
            continue
        rows = []
        late = {}  # name: (predictor jobs, results that came back after their layer's gate)
        for full, r in recs.items():
            pj = r.get("predictor")
            if isinstance(pj, dict) and (pj.get("jobs", 0) or pj.get("gpu_jobs", 0)):
                late[full] = (int(pj.get("jobs", 0)) + int(pj.get("gpu_jobs", 0)), int(pj.get("late", 0)))
        for base, variants in ABLATIONS.items():
            for sw, meaning in variants:
                full = base + (":" + sw if sw else "")
                if full in recs:
                    _, pred = split_label(full, recs[full]["policy"])
                    rows.append((base, sw, meaning, full, pred, recs[full]["tpot_ms"]["mean"]))
                else:
                    rows.append((base, sw, meaning, full, "refused", None))
        out[name] = {"cache_gb": gb, "slots": n, "rows": rows, "oracle": best_reference(refs),
                     "bound": bound["tpot_ms"]["mean"], "lru": recs["lru"]["tpot_ms"]["mean"] if "lru" in recs else None,
                     "refused": refused, "gamma": hdr["gamma"], "late": late}
    return out, failures


# spmoe with the same routing-only predictor on both sides is the check; spmoe as published runs the
# draft gate on the recorded SD trace but must fall back on the plain one (no draft model ran), so
# its row mixes SD modelling with a change of predictor (shown, not counted).
REWINDOW_POLICIES = ["lru", "spmoe:predictor=transition", "spmoe"]
REWINDOW_COUNTED = ["lru", "spmoe:predictor=transition"]
REWINDOW_MODES = ["nearby", "continuation"]


def run_rewindow(args, sim: Sim, traces: list[str], rows: list[dict]):
    """Issue 12 item 7's check: each plain trace re-cut by `moesched-sim --gamma G --acceptance-rate R`
    at its recorded SD sibling's gamma and acceptance rate, against that recorded SD trace, at the
    sibling's middle budget (from `rows`), for REWINDOW_POLICIES and both --rejected-routing modes.
    Returns ([{set, gamma, rate, gpu, cache_gb, policy, counted, recorded, <mode>..., predictor...}],
    failures)."""
    by = {}
    for r in rows:
        by.setdefault((r["trace"], r["gpu"], r["cache_gb"]), {})[r["policy"]] = float(r["tpot_ms"])
    out, failures = [], []
    for s, names, plain in prompt_sets_with_plain(traces):
        for gm in (2, 4, 8):
            sd = names.get(f"{s}-sd{gm}")
            if sd is None:
                continue
            hdr = trace_header(sd)
            rate = hdr.get("acceptance_rate")
            if not hdr["gamma"] or rate is None:
                log(f"{rel(sd)}: no recorded gamma and acceptance_rate in its provenance; not re-windowed")
                continue
            gpus = list(dict.fromkeys(g for (t, g, _) in by if t == trace_name(sd)))
            for g in gpus:
                bl = sorted({c for (t, gg, c) in by if t == trace_name(sd) and gg == g}, key=float)
                c = bl[len(bl) // 2]
                res = {}
                runs = [("recorded", sd, ())] + [(m, plain, ("--gamma", str(hdr["gamma"]), "--acceptance-rate",
                                                             f"{rate:.6f}", "--rejected-routing", m))
                                                 for m in REWINDOW_MODES]
                for (m, t, extra) in runs:
                    rc, doc, err = sim.compare(t, g, float(c), REWINDOW_POLICIES, extra)
                    if rc != 0 or doc is None:
                        e = RunError(f"{rel(t)} ({m}; gamma {hdr['gamma']}, rate {rate:.4f}, gpu {g}, cache {c} GB): "
                                     f"moesched-sim exited {rc}: {err}")
                        record_failure(args, failures, e)
                        continue
                    res[m] = {p: (r["tpot_ms"]["mean"], split_label(p, r["policy"])[1])
                              for p, r in zip(REWINDOW_POLICIES, doc["records"])}
                log(f"re-windowed {s}-plain at gamma {hdr['gamma']} on {g} {c} GB")
                if len(res) != len(runs):
                    continue
                for p in REWINDOW_POLICIES:
                    out.append({"set": s, "gamma": hdr["gamma"], "rate": rate, "gpu": g, "cache_gb": c, "policy": p,
                                "counted": p in REWINDOW_COUNTED, **{m: res[m][p][0] for m in res},
                                "pred_recorded": res["recorded"][p][1], "predictor": res["nearby"][p][1]})
    return out, failures


def run_sd_copies(args, sim: Sim, traces: list[str], rows: list[dict]):
    """The copy side of SD against plain decoding: per prompt set and GPU, at the middle budget, the best
    plain policy (from `rows`, future-knowing ones excluded) on the plain trace and spmoe on each recorded
    SD trace, with what the tool reports beyond TPOT: experts copied and link time per output token,
    and the hit rate. Returns ([{set, gpu, cache_gb, trace, gamma, policy, tpot, copies, link_ms, hit}],
    failures)."""
    by = rows_by_point(rows)
    out, failures = [], []
    for s, names, plain in prompt_sets_with_plain(traces):
        for g in dict.fromkeys(gg for (t, gg, _) in by if t == f"{s}-plain"):
            bl = sorted({c for (t, gg, c) in by if t == f"{s}-plain" and gg == g}, key=float)
            c = bl[len(bl) // 2]
            pr = [r for r in by[(f"{s}-plain", g, c)] if not knows_future(r["policy"])]
            if not pr:
                continue
            best = fastest(pr)["policy"]
            runs = [(plain, 0, best)] + [(names[f"{s}-sd{gm}"], gm, "spmoe") for gm in (2, 4, 8)
                                         if f"{s}-sd{gm}" in names and (f"{s}-sd{gm}", g, c) in by]
            for (t, gm, pol) in runs:
                rc, doc, err = sim.compare(t, g, float(c), [pol])
                if rc != 0 or doc is None:
                    record_failure(args, failures, RunError(f"{rel(t)} ({pol}, gpu {g}, cache {c} GB): moesched-sim exited "
                                                            f"{rc}: {err}"))
                    continue
                r = doc["records"][0]
                n = max(1, r["decode_tokens"])
                out.append({"set": s, "gpu": g, "cache_gb": c, "trace": trace_name(t), "gamma": gm, "policy": pol,
                            "tpot": r["tpot_ms"]["mean"], "copies": r["experts_copied"] / n,
                            "link_ms": r["link_busy_ms"] / n, "hit": r["hit_rate"]})
            log(f"SD copies: {s} on {g} {c} GB")
    return out, failures


def run_why(args, sim: Sim, traces: list[str], rows: list[dict]):
    """Where moesched is not the best policy that does not know the future: moesched and that policy run
    again at the point, for what the tool reports beyond TPOT (hit rate, experts copied and stall per
    output token). Returns ({(trace, gpu, cache_gb): {"moesched": {...}, "best": {...}}}, failures)."""
    names = {trace_name(t): t for t in traces}
    out, failures = {}, []
    for key, rs in rows_by_point(rows).items():
        ms = [r for r in rs if r["policy"] == "moesched"]
        others = [r for r in rs if r["policy"] != "moesched" and not knows_future(r["policy"])]
        if not ms or not others or key[0] not in names:
            continue
        best = fastest(others)
        if float(ms[0]["tpot_ms"]) <= float(best["tpot_ms"]):
            continue
        rc, doc, err = sim.compare(names[key[0]], key[1], float(key[2]), ["moesched", best["policy"]])
        if rc != 0 or doc is None:
            record_failure(args, failures, RunError(f"{rel(names[key[0]])} (moesched, {best['policy']}, gpu {key[1]}, "
                                                    f"cache {key[2]} GB): moesched-sim exited {rc}: {err}"))
            continue
        got = {}
        for name, r in zip(("moesched", "best"), doc["records"]):
            n = max(1, r["decode_tokens"])
            got[name] = {"hit": r["hit_rate"], "copies": r["experts_copied"] / n, "stall": r["decode_stall_ms"] / n}
        out[key] = got
    log(f"why: {len(out)} points where moesched is not the best policy, rerun for their hit rates and copies")
    return out, failures


def why_text(w: dict | None, bound_share: float) -> str:
    """One cell: what differs between moesched and the best policy at a point (run_why)."""
    parts = []
    if bound_share <= 1.02:
        parts.append("compute-bound (within 2% of the bound)")
    if w:
        m, b = w["moesched"], w["best"]
        if m["hit"] < b["hit"]:
            parts.append(f"fewer hits ({m['hit']:.3f} vs {b['hit']:.3f})")
        if m["copies"] > b["copies"]:
            parts.append(f"more copies/token ({m['copies']:.2f} vs {b['copies']:.2f})")
        if m["stall"] > b["stall"] and m["hit"] >= b["hit"] and m["copies"] <= b["copies"]:
            parts.append(f"copies later: stall/token {m['stall']:.4f} vs {b['stall']:.4f} ms at no fewer hits")
        if not parts:
            parts.append(f"stall/token {m['stall']:.4f} vs {b['stall']:.4f} ms")
    return "; ".join(parts) or "-"


# ---- outputs ----------------------------------------------------------------------------------

def write_csv(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        if rd.fieldnames != COLUMNS:
            raise InputError(f"{path}: columns {rd.fieldnames} are not {COLUMNS}")
        return list(rd)


def gmean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def machine_line() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    distro = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {distro or platform.system()}, Python {platform.python_version()}"


def git_line() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=ROOT).stdout.strip().splitlines()
        return f"HEAD {head}" + (f" with {len(dirty)} tracked files modified in the working tree" if dirty else " (clean)")
    except OSError:
        return "not a git checkout"


def generate_md(rows: list[dict], ablations: dict, refusals: list, failures: list, points: list, meta: dict,
                rewindow: list[dict], sdcopies: list[dict] | None = None, why: dict | None = None) -> str:
    L: list[str] = []
    add = L.append
    traces = list(dict.fromkeys(r["trace"] for r in rows))
    gpus = list(dict.fromkeys(r["gpu"] for r in rows))
    by_point = rows_by_point(rows)
    slots = {(p["trace"], p["gpu"], p["cache_gb"]): p for p in points}
    budgets = {}
    for (t, g, c) in by_point:
        budgets.setdefault((t, g), [])
        if c not in budgets[(t, g)]:
            budgets[(t, g)].append(c)
    for k in budgets:
        budgets[k].sort(key=float)
    gamma = {r["trace"]: int(r["gamma"]) for r in rows}

    def t_(r):
        return float(r["tpot_ms"])

    # per point: best other, moesched, oracle
    stats = []
    for key, rs in by_point.items():
        ms = [r for r in rs if r["policy"] == "moesched"]
        others = [r for r in rs if r["policy"] != "moesched" and not knows_future(r["policy"])]
        if not ms or not others:
            continue
        best = fastest(others)
        seers = [r for r in rs if r["policy"] != "moesched" and knows_future(r["policy"])]
        best_all = fastest(others + seers)
        stats.append({"key": key, "moesched": t_(ms[0]), "best": t_(best), "best_policy": best["policy"],
                      "best_all": t_(best_all),
                      "oracle": float(rs[0]["oracle_tpot_ms"]), "bound": float(rs[0]["bound_tpot_ms"]),
                      "sd": gamma[key[0]] > 0})
    sp_best = gmean([s["best"] / s["moesched"] for s in stats])
    vs_oracle = gmean([s["moesched"] / s["oracle"] for s in stats])
    worst_oracle = max(stats, key=lambda s: s["moesched"] / s["oracle"]) if stats else None
    not_best = [s for s in stats if s["moesched"] > s["best"]]
    ties = [s for s in stats if s["moesched"] == s["best"]]

    add("# Policies report: every moesched-sim policy on the shipped real traces")
    add("")
    add("Generated by `bench/policies.py` from `bench/results/policies.csv` (read back) and the ablation runs; "
        "do not edit by hand, run the script again.")
    add("")
    add("```sh")
    add(meta["command"])
    add("```")
    add("")
    add(f"- Date: {meta['date']}; wall time {meta['wall_s']:.0f} s ({meta['runs']} compare runs, "
        f"{meta['invocations']} moesched-sim invocations with the model-size probes, {meta['sim_s']:.0f} s in them).")
    add(f"- Machine: {meta['machine']}. The GPUs are simulated presets: " +
        ", ".join(f"`{g}` ({GPU_LINK.get(g, '?')}, "
                  f"{next((p['bandwidth_gbps'] for p in points if p['gpu'] == g), 0):.1f} GB/s asymptotic)" for g in gpus) + ".")
    add(f"- Simulator: `{meta['sim']}` (binary of {meta['sim_mtime']}); the checkout at report time: {meta['git']}.")
    add(f"- Matrix: {len(traces)} traces x {len(gpus)} GPU presets x budgets = {len(stats)} points, {len(rows)} rows. "
        + meta["matrix_note"])
    if meta.get("too_big"):
        add("- Not run, the budget being above what the GPU preset leaves for experts (weights, KV cache, workspace and "
            "draft model resident): " + "; ".join(f"{t} on {g} at {gb:.4f} GB ({n} slots; {room:.2f} GB left)"
                                                 for (t, g, f, n, gb, room) in meta["too_big"]) + ".")
    add("")
    add("**Budget rule.** For each trace's model: n = max(experts of one MoE layer, round(f x all experts)) expert "
        f"slots for f in {{{meta['fractions']}}}; `--cache-gb` = (n + 0.5) x one expert's bytes, rounded to 4 decimals "
        "(the tool's reported `cache_experts` is checked to equal n). The same budgets apply to every trace of a model, "
        "so plain and SD traces of the same prompts are compared at the same memory.")
    add("")
    models = {}
    for p in points:
        models.setdefault(p["trace"].split("-")[0], {})[p["cache_gb"]] = (p["slots"], p["total"], p["expert_mb"])
    add("| model (trace prefix) | expert MB | experts | budgets: GB = slots |")
    add("|---|---|---|---|")
    for m, d in models.items():
        first = next(iter(d.values()))
        add(f"| {m} | {first[2]:.3f} | {first[1]} | " +
            ", ".join(f"{c} = {v[0]}" for c, v in sorted(d.items(), key=lambda kv: float(kv[0]))) + " |")
    add("")
    add("**Columns.** `predictor` is what ran: the label moesched-sim appends to a published policy's row "
        "(`transition (fallback)` = the trace lacks the paper's channel, the routing-only fallback ran), else from the name "
        "(prefetch:C -> C, predict:X -> X, moe-infinity -> activation-matrix, baselines -> none). `gamma` is the trace's "
        "recorded draft length (0 = plain). The reference (`oracle_tpot_ms`, the tables' \"best reference\") is "
        "the faster of two offline schedules with perfect future knowledge: `oracle` (Belady: the fewest copies, each "
        "issued as early as memory allows) and `oracle-aggressive` (time-aware: fetch whenever the link is free, in "
        "place of the expert used furthest ahead if that use comes later); neither is proven optimal, so a policy can "
        "beat them; the bound is `lower-bound` (ARCHITECTURE.md). Policies marked "
        f"`{FUTURE_MARK.strip()}` ({', '.join(f'`{p}`' for p in sorted(FUTURE_KNOWING))}: the replayed run's own "
        "expert counts) know the run's future: they stay in the tables but are never the \"best other\" policy, "
        "never bold and never a winner.")
    add("")

    # ---- headline / targets
    add("## Headline and the issue's targets")
    add("")
    if stats:
        n_sd = sum(1 for s in stats if s["sd"])
        add(f"- moesched over the best other policy (policies that know the replayed run's future excluded: the "
            f"oracle and {', '.join(f'`{p}`' for p in sorted(FUTURE_KNOWING))}), geometric mean of (best other TPOT / "
            f"moesched TPOT) over all {len(stats)} points: **{sp_best:.4f}x** (target at least 1.15x: "
            f"**{'met' if sp_best >= 1.15 else 'not met'}**).")
        # How much room the target leaves: what moesched would score if it ran exactly the reference's
        # schedule, or reached the lower bound, at every point.
        room_ref = gmean([s["best"] / s["oracle"] for s in stats])
        room_bound = gmean([s["best"] / s["bound"] for s in stats])
        need = (f"moesched would have to come within {100 * (room_ref / 1.15 - 1):.1f}% of the reference in geometric "
                f"mean (it is {100 * (vs_oracle - 1):.1f}% off)" if room_ref >= 1.15 else
                "no policy can reach it without beating the reference, which knows the future")
        add(f"  - headroom: a policy that matched the offline reference at every point would score {room_ref:.4f}x, "
            f"one at the lower bound everywhere {room_bound:.4f}x. For 1.15x, {need}.")
        sp_all = gmean([s["best_all"] / s["moesched"] for s in stats])
        add(f"  - with {', '.join(f'`{p}`' for p in sorted(FUTURE_KNOWING))} counted among the others (by default it "
            f"pins the replayed run's own most used experts, knowledge of the future): {sp_all:.4f}x")
        synth = meta.get("synthetic", set())
        for label, sel in (("plain traces", [s for s in stats if not s["sd"]]), ("SD traces", [s for s in stats if s["sd"]]),
                           ("recorded traces (traces/real)", [s for s in stats if s["key"][0] not in synth]),
                           ("synthetic traces (traces/synthetic: generated routing, no hidden states)",
                            [s for s in stats if s["key"][0] in synth])):
            if sel:
                add(f"  - {label} ({len(sel)} points): {gmean([s['best'] / s['moesched'] for s in sel]):.4f}x")
        for g in gpus:
            sel = [s for s in stats if s["key"][1] == g]
            add(f"  - {g} ({len(sel)} points): {gmean([s['best'] / s['moesched'] for s in sel]):.4f}x")
        for m in models:
            sel = [s for s in stats if s["key"][0].startswith(m + "-")]
            add(f"  - {m} traces ({len(sel)} points): {gmean([s['best'] / s['moesched'] for s in sel]):.4f}x")
        add(f"- moesched over the best offline reference (`oracle` or the time-aware `oracle-aggressive`, whichever is "
            f"faster at the point), geometric mean of (moesched TPOT / reference TPOT): **{vs_oracle:.4f}x** "
            f"(target within 1.10x: **{'met' if vs_oracle <= 1.10 else 'not met'}** in geometric mean); worst point "
            f"{worst_oracle['key'][0]} {worst_oracle['key'][1]} {worst_oracle['key'][2]} GB at "
            f"{worst_oracle['moesched'] / worst_oracle['oracle']:.3f}x; points above 1.10x: "
            f"{sum(1 for s in stats if s['moesched'] / s['oracle'] > 1.10)} of {len(stats)}; points where moesched beats the "
            f"reference: {sum(1 for s in stats if s['moesched'] < s['oracle'])}.")
        refpts = [p for p in points if all(ref in p for ref in REFERENCES)]
        if refpts:
            faster = [p for p in refpts if p["oracle-aggressive"] < p["oracle"]]
            add(f"- The time-aware reference `oracle-aggressive` is faster than Belady's schedule (`oracle`) at "
                f"{len(faster)} of {len(refpts)} points; geometric mean of (oracle-aggressive / oracle): "
                f"{gmean([p['oracle-aggressive'] / p['oracle'] for p in refpts]):.4f}x. Neither is proven optimal; "
                f"the gap to the lower bound is what no schedule is shown to close.")
        add(f"- moesched is the best policy that does not know the future (ties included) at {len(stats) - len(not_best)} of {len(stats)} points "
            f"({len(ties)} ties at 4 decimals); not the best at {len(not_best)} (listed below). SD points: {n_sd}.")
    sdplain = sd_vs_plain(rows, budgets, gamma)
    mid = [x for x in sdplain if x["mid"]]
    if mid:
        wins = [x for x in mid if x["spmoe"] < x["best_plain"]]
        add(f"- spmoe on the recorded SD traces against the best policy on the plain trace of the same prompts, at the "
            f"middle (default) budget: spmoe-SD is faster at {len(wins)} of {len(mid)} (prompt set, gamma, GPU) points "
            f"(target: faster everywhere: **{'met' if len(wins) == len(mid) else 'not met'}**); at all budgets: "
            f"{sum(1 for x in sdplain if x['spmoe'] < x['best_plain'])} of {len(sdplain)}." + sd_feasibility(mid)
            + sd_copy_note(sdcopies or []))
    counted = [x for x in rewindow if x["counted"]]
    if counted:
        ok = [x for x in counted if abs(x["nearby"] / x["recorded"] - 1) <= 0.10]
        add(f"- SD re-windowing of the plain traces at the recorded gamma and acceptance rate against the recorded SD "
            f"traces ({', '.join(REWINDOW_COUNTED)}; middle budget): within 10% at **{len(ok)} of {len(counted)}** points "
            f"(target: all: **{'met' if len(ok) == len(counted) else 'not met'}**); worst "
            f"{100 * max(abs(x['nearby'] / x['recorded'] - 1) for x in counted):.1f}%.")
    if failures:
        add(f"- **{len(failures)} runs failed** (--keep-going): listed at the end.")
    add("")

    if not_best:
        add("### Points where moesched is not the best policy (future-knowing ones excluded)")
        add("")
        add("Bound share = moesched's TPOT over the lower bound: near 1.00 the point is compute-bound and every policy is "
            "within a few tenths of a percent of it. Why = what differs between the two runs at the point (moesched's "
            "value first; both policies run again for it): the hit rate, experts copied per output token, and decode "
            "stall per output token.")
        add("")
        add("| trace | gpu | cache GB | moesched ms | best other | its ms | moesched slower by | bound share | why |")
        add("|---|---|---|---|---|---|---|---|---|")
        for s in sorted(not_best, key=lambda s: (traces.index(s["key"][0]), gpus.index(s["key"][1]), float(s["key"][2]))):
            share = s["moesched"] / s["bound"]
            add(f"| {s['key'][0]} | {s['key'][1]} | {s['key'][2]} | {s['moesched']:.4f} | {s['best_policy']} | "
                f"{s['best']:.4f} | {100 * (s['moesched'] / s['best'] - 1):.1f}% | {share:.3f} | "
                f"{why_text((why or {}).get(s['key']), share)} |")
        add("")
        if why:
            n_cb = sum(1 for s in not_best if s["moesched"] / s["bound"] <= 1.02)
            n_hit = sum(1 for s in not_best if s["key"] in why and why[s["key"]]["moesched"]["hit"] < why[s["key"]]["best"]["hit"])
            n_cp = sum(1 for s in not_best if s["key"] in why and why[s["key"]]["moesched"]["copies"] > why[s["key"]]["best"]["copies"])
            add(f"Of these {len(not_best)} points: {n_cb} are compute-bound (moesched within 2% of the lower bound); "
                f"moesched has the lower hit rate at {n_hit} and copies more experts per output token at {n_cp}.")
            add("")
        from collections import Counter
        cnt = Counter(s["best_policy"] for s in not_best)
        add("Winners at those points: " + ", ".join(f"{k} {v}" for k, v in cnt.most_common()) + ".")
        add("")

    # ---- summary tables
    add("## TPOT per trace (ms per output token)")
    add("")
    add("One table per trace; columns are GPU x budget (GB). **Bold** = the best policy at that point that does not know "
        f"the run's future (ties all bold; rows marked `{FUTURE_MARK.strip()}` are shown, never bold); the oracle and the "
        "lower bound close each table, then moesched's ratio to the best other and to the oracle.")
    add("")
    for t in traces:
        cols = [(g, c) for g in gpus for c in budgets.get((t, g), [])]
        if not cols:
            continue
        add(f"### {t} (gamma {gamma[t]})")
        add("")
        add("| policy | predictor | " + " | ".join(f"{g} {c}" for g, c in cols) + " |")
        add("|---|---|" + "---|" * len(cols))
        pols = list(dict.fromkeys(r["policy"] for (tt, g, c), rs in by_point.items() if tt == t for r in rs))
        best = {}
        for col in cols:
            rs = by_point.get((t,) + col, [])
            fair = [r for r in rs if not knows_future(r["policy"])]
            best[col] = min(t_(r) for r in fair) if fair else None
        for p in pols:
            cells, preds = [], []
            for col in cols:
                r = next((r for r in by_point.get((t,) + col, []) if r["policy"] == p), None)
                if r is None:
                    cells.append("refused")
                    continue
                preds.append(r["predictor"])
                v = r["tpot_ms"]
                cells.append(f"**{v}**" if t_(r) == best[col] and not knows_future(p) else v)
            pred = "/".join(dict.fromkeys(preds)) or "-"
            add(f"| {p}{FUTURE_MARK if knows_future(p) else ''} | {pred} | " + " | ".join(cells) + " |")
        for ref in REFERENCES:
            add(f"| {ref} | (future) | " + " | ".join(fmt4(slots[(t,) + col][ref]) if (t,) + col in slots else "-"
                                                    for col in cols) + " |")
        add("| best reference | (future) | " + " | ".join(by_point[(t,) + col][0]["oracle_tpot_ms"] for col in cols) + " |")
        add("| lower bound | | " + " | ".join(by_point[(t,) + col][0]["bound_tpot_ms"] for col in cols) + " |")
        cells_b, cells_o = [], []
        for col in cols:
            s = next((s for s in stats if s["key"] == (t,) + col), None)
            cells_b.append(f"{s['best'] / s['moesched']:.3f}x" if s else "-")
            cells_o.append(f"{s['moesched'] / s['oracle']:.3f}x" if s else "-")
        add("| best other / moesched | | " + " | ".join(cells_b) + " |")
        add("| moesched / best reference | | " + " | ".join(cells_o) + " |")
        add("")

    # ---- ablations
    add("## Ablations: each mechanism switched off on its own")
    add("")
    if ablations:
        first = next(iter(ablations.values()))
        add(f"GPU `{meta['ablation_gpu']}`, the middle budget of each trace (f = {meta['ablation_fraction']}); variants are "
            "the policies' `name:key=value` switches (include/moesched/policy/promoe.hpp, spmoe.hpp, moesched_policy.hpp, "
            "pipeline.hpp; `moesched-sim compare --help` lists them). Each cell: TPOT ms (change against the policy's "
            "default; + = slower without the mechanism). On plain traces the SD switches (cutoff, batch) have "
            "nothing to act on.")
        add("")
        tr = list(ablations)
        for base in ABLATIONS:
            add(f"### {base}")
            add("")
            add("| variant | switches off | " + " | ".join(f"{t} ({ablations[t]['cache_gb']:.4f} GB)" for t in tr) + " |")
            add("|---|---|" + "---|" * len(tr))
            for i, (sw, meaning) in enumerate(ABLATIONS[base]):
                cells = []
                for t in tr:
                    rws = [r for r in ablations[t]["rows"] if r[0] == base]
                    ref = rws[0][5]
                    r = rws[i]
                    if r[5] is None:
                        cells.append("refused")
                    elif i == 0:
                        cells.append(f"{r[5]:.4f} [{r[4]}]")
                    else:
                        cells.append(f"{r[5]:.4f} ({100 * (r[5] / ref - 1):+.1f}%) [{r[4]}]")
                add(f"| `{base}{':' + sw if sw else ''}` | {meaning} | " + " | ".join(cells) + " |")
            add("")
        add("| reference | " + " | ".join(tr) + " |")
        add("|---|" + "---|" * len(tr))
        add("| lru | " + " | ".join(f"{ablations[t]['lru']:.4f}" if ablations[t]["lru"] else "-" for t in tr) + " |")
        add("| best reference | " + " | ".join(f"{ablations[t]['oracle']:.4f}" for t in tr) + " |")
        add("| lower bound | " + " | ".join(f"{ablations[t]['bound']:.4f}" for t in tr) + " |")
        add("")
        add("Bracketed: the predictor that ran.")
        add("")
        # generated observations: switches that changed nothing, and switches equal to no prediction
        for base in ABLATIONS:
            same, as_none = [], []
            for i, (sw, _) in enumerate(ABLATIONS[base]):
                if i == 0:
                    continue
                vals = [[r for r in ablations[t]["rows"] if r[0] == base] for t in tr]
                if all(v[i][5] is not None and v[i][5] == v[0][5] for v in vals):
                    same.append(f"`{sw}`")
                none_i = next((k for k, (w, _) in enumerate(ABLATIONS[base]) if w == "predictor=none"), None)
                if sw != "predictor=none" and none_i is not None and \
                        all(v[i][5] is not None and v[i][5] == v[none_i][5] for v in vals):
                    as_none.append(f"`{sw}`")
            if same:
                add(f"- {base}: " + ", ".join(same) + " left TPOT unchanged on all ablation traces.")
            if as_none:
                add(f"- {base}: " + ", ".join(as_none) + " gave exactly the TPOT of `predictor=none` on all ablation "
                    "traces (the variant prefetches nothing useful).")
                for sw in as_none:
                    full = f"{base}:{sw.strip('`')}"
                    jl = [ablations[t].get("late", {}).get(full) for t in tr]
                    if all(x is not None and x[0] > 0 for x in jl):
                        add(f"  - {sw}: predictions back after their layer's gate (too late to use): " +
                            ", ".join(f"{t} {x[1]} of {x[0]}" for t, x in zip(tr, jl)) + ".")
        add("")
        for t in tr:
            for p, m in ablations[t]["refused"].items():
                add(f"- {t}: `{p}` refused: {m}")
    else:
        add("No ablation runs in this invocation.")
    add("")

    # ---- SD vs plain
    add("## SD re-windowing check")
    add("")
    add("`moesched-sim --gamma G --acceptance-rate R` re-cuts a plain trace's decoding into SD windows; here each "
        "`-plain` trace is re-cut at its recorded SD sibling's gamma and acceptance rate (accepted / drafted, from the "
        "sibling's provenance) and compared with the sibling replayed as recorded, at the sibling's middle budget. "
        "Rejected drafts take another token's routing (`--rejected-routing nearby`, the default), or the real "
        "continuation's (`continuation`, shown for comparison). The same prompts decode to the same output only under "
        "greedy decoding, which the recorder uses. The check counts lru and spmoe with the same routing-only predictor "
        "on both sides; spmoe as published (last row of each group, not counted) runs the draft gate on the recorded "
        "SD trace but has to fall back on the plain one, which has no draft_gate channel.")
    add("")
    if rewindow:
        add("| prompts | gamma | rate | gpu | cache GB | policy | recorded SD ms | re-cut (nearby) ms | error | "
            "re-cut (continuation) ms | error | predictor (recorded / re-cut) |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for x in rewindow:
            add(f"| {x['set']} | {x['gamma']} | {x['rate']:.3f} | {x['gpu']} | {x['cache_gb']} | {x['policy']}"
                f"{'' if x['counted'] else ' (not counted)'} | "
                f"{x['recorded']:.4f} | {x['nearby']:.4f} | {100 * (x['nearby'] / x['recorded'] - 1):+.1f}% | "
                f"{x['continuation']:.4f} | {100 * (x['continuation'] / x['recorded'] - 1):+.1f}% | "
                f"{x['pred_recorded']} / {x['predictor']} |")
        add("")
        for m in REWINDOW_MODES:
            for what, sel in (("counted rows", [x for x in rewindow if x["counted"]]), ("all rows", rewindow)):
                errs = sorted(abs(x[m] / x["recorded"] - 1) for x in sel)
                add(f"- {m}, {what}: |error| median {100 * errs[len(errs) // 2]:.1f}%, max {100 * errs[-1]:.1f}%, "
                    f"within 10% at {sum(1 for e in errs if e <= 0.10)} of {len(errs)}.")
    else:
        add("No plain trace with a recorded SD sibling in this invocation.")
    add("")

    add("## SD against plain decoding of the same prompts")
    add("")
    add("For each prompt set: spmoe on the recorded SD traces (sd2, sd4, sd8) against the best policy (future-knowing "
        "ones excluded) on the "
        "`-plain` trace of the same prompts, at the same budget (TPOT per output token, so the draft model's time is "
        "included in SD). Win = spmoe-SD below the best plain policy. Also shown: the best policy on the SD trace, and "
        "the SD trace's best offline reference and lower bound at the same budget: where the bound is at or above the "
        "best plain policy, no SD schedule can win; where the reference is below it, one exists.")
    add("")
    if sdplain:
        add("| prompts | gpu | cache GB | best plain (policy) | gamma | spmoe SD | spmoe SD / best plain | best SD (policy) "
            "| SD reference | SD bound | SD wins |")
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for x in sdplain:
            add(f"| {x['set']} | {x['gpu']} | {x['cache_gb']}{' (default)' if x['mid'] else ''} | {x['best_plain']:.4f} "
                f"({x['best_plain_policy']}) | {x['gamma']} | {x['spmoe']:.4f} | {x['spmoe'] / x['best_plain']:.3f} | "
                f"{x['best_sd']:.4f} ({x['best_sd_policy']}) | {x['sd_ref']:.4f} | {x['sd_bound']:.4f} | "
                f"{'yes' if x['spmoe'] < x['best_plain'] else ('no (unreachable)' if x['sd_bound'] >= x['best_plain'] else 'no')} |")
        add("")
        wins = [x for x in sdplain if x["spmoe"] < x["best_plain"]]
        add(f"**When SD with spmoe wins**: {len(wins)} of {len(sdplain)} points.")
        for s in PROMPT_SETS:
            for g in gpus:
                sel = [x for x in sdplain if x["set"] == s and x["gpu"] == g]
                if not sel:
                    continue
                w = [x for x in sel if x["spmoe"] < x["best_plain"]]
                desc = ", ".join(f"gamma {x['gamma']} at {x['cache_gb']} GB ({x['spmoe'] / x['best_plain']:.3f})" for x in w)
                add(f"- {s} on {g}: {len(w)} of {len(sel)}" + (f": {desc}" if w else "") + ".")
        wins_any = [x for x in sdplain if x["best_sd"] < x["best_plain"]]
        add(f"- With the best policy on the SD trace instead of spmoe, SD wins at {len(wins_any)} of {len(sdplain)} points.")
        add("-" + sd_feasibility(sdplain, " (all budgets)"))
        add("- Compute alone (the lower bound's compute-only TPOT: every expert resident, no copy) per output token, "
            "plain against SD, middle budget: where SD costs more compute per token than plain decoding, it can only "
            "win by amortising copies over the verified tokens.")
        for s_ in PROMPT_SETS:
            for g in gpus:
                pl = next((p for p in points if p["trace"] == f"{s_}-plain" and p["gpu"] == g and p.get("compute_ms")), None)
                sds = [p for gm in (2, 4, 8) for p in points
                       if p["trace"] == f"{s_}-sd{gm}" and p["gpu"] == g and p.get("compute_ms")]
                if pl is None or not sds:
                    continue
                seen = {}
                for p in sds:
                    seen.setdefault(p["trace"], p["compute_ms"])
                add(f"  - {s_} on {g}: plain {pl['compute_ms']:.4f} ms; " +
                    ", ".join(f"{t.rsplit('-', 1)[1]} {v:.4f} ({v / pl['compute_ms']:.2f}x)" for t, v in seen.items()) + ".")
        if sdcopies:
            add("- Copies per output token (experts copied and link time over the run's decode tokens, and the hit "
                "rate), middle budget: the best plain policy on the plain trace against spmoe on each SD trace. SD "
                "verifies gamma + 1 tokens per pass, so each layer needs the union of their experts: fewer expert uses "
                "per output token, but a wider set per pass, which the same cache holds less of.")
            add("")
            add("| prompts | gpu | cache GB | trace | policy | TPOT ms | experts copied / token | link ms / token | hit rate |")
            add("|---|---|---|---|---|---|---|---|---|")
            for x in sdcopies:
                add(f"| {x['set']} | {x['gpu']} | {x['cache_gb']} | {x['trace']} | {x['policy']} | {x['tpot']:.4f} | "
                    f"{x['copies']:.2f} | {x['link_ms']:.4f} | {x['hit']:.3f} |")
            add("")
    else:
        add("No plain/SD pair of the same prompts in this invocation.")
    add("")

    # ---- refusals / failures
    add("## Policies the tool refused, and failed runs")
    add("")
    if refusals:
        add("| trace | gpu | cache GB | policy | moesched-sim said |")
        add("|---|---|---|---|---|")
        for (t, g, c, p, m) in refusals:
            add(f"| {t} | {g} | {c:.4f} | {p} | {m} |")
    else:
        add("None: every listed policy ran on every trace (published policies whose paper predictor needs a channel "
            "the trace lacks fall back, and their `predictor` column says so).")
    add("")
    if failures:
        for f in failures:
            add(f"- FAILED: {f}")
        add("")
    return "\n".join(L) + "\n"


def sd_copy_note(sdcopies: list[dict]) -> str:
    """The headline's reason for the SD result: spmoe-SD's experts copied per output token against the
    best plain policy's at the middle budget (from run_sd_copies)."""
    ratios = []
    for x in sdcopies:
        base = next((y for y in sdcopies if y["set"] == x["set"] and y["gpu"] == x["gpu"] and not y["gamma"]), None)
        if x["gamma"] and base is not None and base["copies"] > 0:
            ratios.append(x["copies"] / base["copies"])
    if not ratios:
        return ""
    return (f" Why: there, spmoe-SD copies {min(ratios):.2f}-{max(ratios):.2f}x the experts per output token that "
            f"the best plain policy copies (more at {sum(1 for v in ratios if v > 1)} of {len(ratios)}), on top of "
            "its extra compute (section \"SD against plain decoding\").")


def sd_vs_plain(rows, budgets, gamma):
    by = rows_by_point(rows)
    out = []
    for s in PROMPT_SETS:
        plain = f"{s}-plain"
        gpus = list(dict.fromkeys(g for (t, g, c) in by if t == plain))
        for g in gpus:
            bl = budgets.get((plain, g), [])
            for c in bl:
                pr = by.get((plain, g, c))
                if not pr:
                    continue
                pr = [r for r in pr if not knows_future(r["policy"])]
                if not pr:
                    continue
                bp = fastest(pr)
                for gm in (2, 4, 8):
                    t = f"{s}-sd{gm}"
                    sr = by.get((t, g, c))
                    if not sr:
                        continue
                    sp = next((r for r in sr if r["policy"] == "spmoe"), None)
                    if sp is None:
                        continue
                    sr = [r for r in sr if not knows_future(r["policy"])]
                    bs = fastest(sr)
                    out.append({"set": s, "gpu": g, "cache_gb": c, "mid": c == bl[len(bl) // 2],
                                "gamma": gamma.get(t, gm), "best_plain": float(bp["tpot_ms"]),
                                "best_plain_policy": bp["policy"], "spmoe": float(sp["tpot_ms"]),
                                "best_sd": float(bs["tpot_ms"]), "best_sd_policy": bs["policy"],
                                "sd_ref": float(sp["oracle_tpot_ms"]), "sd_bound": float(sp["bound_tpot_ms"])})
    return out


def sd_feasibility(xs: list[dict], scope: str = "") -> str:
    """How many (prompt set, gamma, GPU) points SD could win at all: the SD trace's lower bound (no
    schedule is faster) and its best offline reference (a schedule that exists) against the best
    online policy on the plain trace."""
    if not xs:
        return ""
    never = sum(1 for x in xs if x["sd_bound"] >= x["best_plain"])
    ref = sum(1 for x in xs if x["sd_ref"] < x["best_plain"])
    return (f" Reachable at all{scope}: at {never} of {len(xs)} the SD trace's lower bound is already at or above the best "
            f"plain policy (no SD schedule can win there); the SD trace's offline reference beats it at {ref}.")


# ---- main ----------------------------------------------------------------------------------------

def resolve_traces(names: list[str]) -> list[str]:
    out = []
    for n in names:
        p = n if (os.sep in n or n.endswith(".safetensors")) else os.path.join(ROOT, "traces", "real", n + ".trace.safetensors")
        if not (os.sep in n or n.endswith(".safetensors")) and not os.path.isfile(p):
            p = os.path.join(ROOT, "traces", "synthetic", n + ".trace.safetensors")
        if not os.path.isabs(p) and not os.path.exists(p):
            p = os.path.join(ROOT, p)
        if not os.path.isfile(p):
            raise InputError(f"trace {n}: no such file ({rel(p)})")
        out.append(os.path.abspath(p))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/policies.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2] +
        "\nExamples:\n  python3 bench/policies.py                       # the full report (writes the CSV and md)\n"
        "  python3 bench/policies.py --quick --out-csv /tmp/q.csv --out-md /tmp/q.md\n"
        "  python3 bench/policies.py --check --sim build/report/sim/moesched-sim   # self-check (a few seconds)\n")
    ap.add_argument("--sim", help="the moesched-sim binary (default: " + ", then ".join(DEFAULT_SIMS) + ", under the repository)")
    ap.add_argument("--out-csv", default=os.path.join(ROOT, "bench", "results", "policies.csv"),
                    help="CSV to write (default: bench/results/policies.csv)")
    ap.add_argument("--out-md", default=os.path.join(ROOT, "bench", "policies.md"), help="report to write (default: bench/policies.md)")
    ap.add_argument("--traces", nargs="+", metavar="T",
                    help="traces: names under traces/real or traces/synthetic (mix-prose-sd4) or paths (default: every "
                         "trace of both folders)")
    ap.add_argument("--gpus", default=",".join(DEFAULT_GPUS), help="GPU presets, comma-separated (default: %(default)s)")
    ap.add_argument("--fractions", default=DEFAULT_FRACTIONS,
                    help="budgets as fractions of all experts (the rule above), comma-separated (default: %(default)s)")
    ap.add_argument("--ablation-traces", nargs="*", metavar="T", default=ABLATION_TRACES,
                    help="traces of the ablation tables (default: %(default)s; the option with no names skips the ablations)")
    ap.add_argument("--ablation-gpu", default="rtx4090", help="GPU preset of the ablations (default: %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="a subset: traces " + ", ".join(QUICK_TRACES) + ", rtx4090 only, the middle budget (1/3) only")
    ap.add_argument("--check", action="store_true",
                    help="self-check: runs " + ", ".join(CHECK_TRACES) + " on rtx4090 at 1/3 into a temporary folder twice, "
                    "checks the CSV's columns, values (tpot >= bound, every listed policy present), that both runs "
                    "agree byte for byte and that the md has its sections; writes nothing else")
    ap.add_argument("--jobs", type=int, default=2, help="moesched-sim --jobs (policies in parallel; default: %(default)s)")
    ap.add_argument("--keep-going", action="store_true",
                    help="on a failed run, record it in the md and go on (exit 0); default: stop and exit 1")
    return ap


def produce(args, sim: Sim, listed: list[str], traces: list[str], gpus: list[str], fractions: list[float],
            out_csv: str, out_md: str, matrix_note: str) -> int:
    t0 = time.monotonic()
    args.ablation_traces_resolved = resolve_traces(args.ablation_traces) if args.ablation_traces else []
    rows, refusals, failures, points, too_big = run_matrix(args, sim, traces, gpus, fractions, listed)
    mid = fractions[len(fractions) // 2]
    abl, afail = run_ablations(args, sim, args.ablation_traces_resolved, args.ablation_gpu, mid) \
        if args.ablation_traces_resolved else ({}, [])
    failures += afail
    write_csv(out_csv, rows)
    back = read_csv(out_csv)
    rewindow, rfail = run_rewindow(args, sim, traces, back)
    failures += rfail
    sdcopies, cfail = run_sd_copies(args, sim, traces, back)
    failures += cfail
    why, wfail = run_why(args, sim, traces, back)
    failures += wfail
    cmd = "python3 bench/policies.py" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    meta = {"command": cmd, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
"wall_s": time.monotonic() - t0, "sim_s": sim.seconds, "runs": sim.count, "invocations": sim.invocations, "machine": machine_line(),
            "sim": rel(sim.path), "git": git_line(),
            "sim_mtime": datetime.datetime.fromtimestamp(os.path.getmtime(sim.path), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "matrix_note": matrix_note,
            "fractions": ", ".join(args.fractions.split(",")), "too_big": too_big,
            "synthetic": {trace_name(t) for t in traces if os.path.basename(os.path.dirname(t)) == "synthetic"}, "ablation_gpu": args.ablation_gpu,
            "ablation_fraction": args.fractions.split(",")[len(fractions) // 2].strip()}
    md = generate_md(back, abl, refusals, failures, points, meta, rewindow, sdcopies, why)
    os.makedirs(os.path.dirname(os.path.abspath(out_md)) or ".", exist_ok=True)
    with open(out_md + ".tmp", "w") as f:
        f.write(md)
    os.replace(out_md + ".tmp", out_md)
    log(f"policies.py: {len(back)} rows -> {rel(out_csv)}; report -> {rel(out_md)} ({meta['wall_s']:.0f} s)")
    if failures and not args.keep_going:
        return 1
    return 0


def self_check(args, sim: Sim, listed: list[str]) -> int:
    traces = resolve_traces(CHECK_TRACES)
    args.fractions = "1/3"
    args.ablation_traces = CHECK_TRACES
    problems = []
    with tempfile.TemporaryDirectory(prefix="policies-check-") as d:
        outs = []
        for i in range(2):
            c, m = os.path.join(d, f"p{i}.csv"), os.path.join(d, f"p{i}.md")
            rc = produce(args, sim, listed, traces, ["rtx4090"], [1 / 3], c, m, "self-check subset")
            if rc != 0:
                problems.append(f"run {i} exited {rc}")
            outs.append((c, m))
        a, b = open(outs[0][0]).read(), open(outs[1][0]).read()
        if a != b:
            problems.append("the two runs' CSVs differ (not deterministic)")
        rows = read_csv(outs[0][0])
        hdr = trace_header(traces[0])
        want = [p for p in listed if "oracle" not in p] + [f"prefetch:{c}" for c in hdr["channels"]]
        got = [r["policy"] for r in rows]
        if got != want:
            problems.append(f"policies {got} are not the listed {want}")
        for r in rows:
            try:
                t, o, bd = float(r["tpot_ms"]), float(r["oracle_tpot_ms"]), float(r["bound_tpot_ms"])
            except ValueError:
                problems.append(f"row {r}: not numbers")
                continue
            if not (t > 0 and o > 0 and bd > 0):
                problems.append(f"row {r['policy']}: non-positive TPOT")
            if t < bd * 0.9999 or o < bd * 0.9999:
                problems.append(f"row {r['policy']}: TPOT {t} or oracle {o} below the bound {bd}")
            if not r["predictor"]:
                problems.append(f"row {r['policy']}: empty predictor")
        md = open(outs[0][1]).read()
        for sec in ("## Headline", "## TPOT per trace", "## Ablations", "### promoe", "### spmoe", "### moesched",
                    "## SD re-windowing check", "## SD against plain"):
            if sec not in md:
                problems.append(f"md lacks section '{sec}'")
    # the report's explanations, on hand-made numbers
    w = {"moesched": {"hit": 0.70, "copies": 5.0, "stall": 0.5}, "best": {"hit": 0.75, "copies": 4.0, "stall": 0.4}}
    if why_text(w, 1.5) != "fewer hits (0.700 vs 0.750); more copies/token (5.00 vs 4.00)":
        problems.append(f"why_text, fewer hits and more copies: {why_text(w, 1.5)!r}")
    late = {"moesched": {"hit": 0.8, "copies": 4.0, "stall": 0.5}, "best": {"hit": 0.8, "copies": 4.0, "stall": 0.4}}
    if why_text(late, 1.01) != ("compute-bound (within 2% of the bound); copies later: stall/token 0.5000 vs 0.4000 ms "
                                "at no fewer hits"):
        problems.append(f"why_text, compute-bound and later copies: {why_text(late, 1.01)!r}")
    if why_text(None, 1.5) != "-":
        problems.append(f"why_text without a rerun: {why_text(None, 1.5)!r}")
    cp = [{"set": "a", "gpu": "g", "gamma": 0, "copies": 2.0}, {"set": "a", "gpu": "g", "gamma": 4, "copies": 3.0},
          {"set": "a", "gpu": "g", "gamma": 8, "copies": 1.0}, {"set": "b", "gpu": "g", "gamma": 4, "copies": 9.0}]
    note = sd_copy_note(cp)
    if "0.50-1.50x" not in note or "more at 1 of 2" not in note or sd_copy_note([]) != "":
        problems.append(f"sd_copy_note on two pairs (and none): {note!r}")
    fx = [{"best_plain": 1.0, "sd_bound": 1.0, "sd_ref": 1.2}, {"best_plain": 1.0, "sd_bound": 0.8, "sd_ref": 0.9},
          {"best_plain": 1.0, "sd_bound": 0.9, "sd_ref": 1.0}]
    feas = sd_feasibility(fx, " (x)")
    if "Reachable at all (x): at 1 of 3" not in feas or "reference beats it at 1." not in feas or sd_feasibility([]) != "":
        problems.append(f"sd_feasibility: bound at the plain best counts as unreachable, a tied reference does not win: {feas!r}")
    # a bad input must be an error naming it
    try:
        resolve_traces(["no-such-trace"])
        problems.append("a missing trace was not refused")
    except InputError as e:
        if "no-such-trace" not in str(e):
            problems.append(f"missing-trace error does not name it: {e}")
    for p in problems:
        log(f"policies.py --check: FAIL: {p}")
    if not problems:
        log(f"policies.py --check: OK ({len(rows)} rows, deterministic, sections present)")
    return 1 if problems else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.jobs < 1:
            raise InputError(f"--jobs {args.jobs}: must be at least 1")
        sim = Sim(find_sim(args.sim), args.jobs)
        listed = listed_policies(sim.path)
        if args.check:
            return self_check(args, sim, listed)
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        fractions = parse_fractions(args.fractions)
        note = "Full matrix: every shipped trace, both presets, three budgets each where the preset holds them; nothing reduced."
        if args.quick:
            traces = resolve_traces(args.traces or QUICK_TRACES)
            gpus, fractions, args.fractions = ["rtx4090"], [1 / 3], "1/3"
            args.ablation_traces = [a for a in args.ablation_traces if a in [os.path.basename(t).split(".")[0] for t in traces]]
            note = "QUICK SUBSET (--quick): " + ", ".join(os.path.basename(t).split(".")[0] for t in traces) + \
                   " on rtx4090 at the middle budget only."
        elif args.traces:
            traces = resolve_traces(args.traces)
            note = "Subset of traces given by --traces."
        else:
            traces = sorted(glob.glob(os.path.join(ROOT, "traces", "real", "*.trace.safetensors"))) + \
                sorted(glob.glob(os.path.join(ROOT, "traces", "synthetic", "*.trace.safetensors")))
            if not traces:
                raise InputError(f"no traces under {os.path.join(ROOT, 'traces', 'real')}")
        for t in traces:
            trace_header(t)  # every header readable before any work
        return produce(args, sim, listed, traces, gpus, fractions, args.out_csv, args.out_md, note)
    except InputError as e:
        log(f"policies.py: error: {e}")
        return 2
    except RunError as e:
        log(f"policies.py: error: {e} (use --keep-going to record failures and go on)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
