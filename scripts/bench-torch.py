#!/usr/bin/env python3
"""Side-by-side GPU bench: sparse-attn against PyTorch on the same GPU and the same tensors.

For each case of the matrix (pattern x sequence length x head_dim; bf16, batch 1, 16 query
heads and 16 kv heads) it draws q, k, v with torch (seeded), saves them to a safetensors
file, and times on them:

  sparse-attn   `sparse-attn bench --input ... --pattern ... --output ...` (the carried
                binary; CUDA events around each launch, plan compiled and uploaded once)
  FA2           torch.nn.functional.scaled_dot_product_attention under
                sdpa_kernel(SDPBackend.FLASH_ATTENTION) (FlashAttention-2): is_causal for
                causal. Windows and sinks are not expressible there, so windowed and mixed
                cases time causal SDPA instead, what a user without window support would run
                (marked `*`; it computes more pairs than the pattern allows)
  Flex          torch.nn.attention.flex_attention.flex_attention compiled with torch.compile,
                with a create_block_mask from a mask_mod implementing the pattern's token
                predicate exactly (docs/patterns.md: bottom-right aligned positions
                p = i + kv_len - q_len, a window of size W allows p - (W - 1) <= j <= p, sinks
                j < S, components united, then `causal` j <= p; per-head sets through the
                head index). The block-mask build is timed apart from the attention.

Every system: `--warmup` untimed calls, then `--iters` calls queued back to back with a CUDA
event between consecutive calls; the median (and minimum) is reported. TFLOP/s are counted
on the pattern's allowed (query, key) pairs, 4 * allowed * head_dim / time, for all three
(so FA2's `*` rows are effective throughput). sparse-attn's out and lse are checked against
Flex's (max abs error), and against FA2's out where FA2 computes the same pattern.

Results go to OUT_DIR/bench-torch.md and OUT_DIR/bench-torch.json (rewritten after every
case, so a run stopped by --budget or killed keeps what it had); temporary files go to
--work-dir. Without torch or without a GPU it says so and exits 0; bad arguments exit 2.

  python3 scripts/bench-torch.py [--quick] [--budget S] [--binary .gpu-carry/sparse-attn]
      [--out-dir DIR] [--patterns a,b] [--seq 4096,8192] [--head-dims 64,128]
      [--warmup N] [--iters N] [--seed S] [--work-dir DIR]
  python3 scripts/bench-torch.py --list [--json] [--quick ...]   # the case matrix, no torch
  python3 scripts/bench-torch.py --format-only RESULTS.json [--out-dir DIR]   # JSON -> md
  python3 scripts/bench-torch.py --self-test                 # checks of the pieces, no torch

scripts/gpu-run.sh torch runs it on a lent GPU machine; tests/scripts.rs tests it without one.
"""

import argparse
import datetime
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

# ---- the case matrix ------------------------------------------------------------------------

BATCH = 1
HEADS = 16
KV_HEADS = 16
DTYPE = "bf16"
SEQ_LENS = [4096, 8192, 16384, 32768]
HEAD_DIMS = [64, 128]
QUICK_SEQ_LENS = [8192, 32768]
QUICK_HEAD_DIMS = [128]

# One head's pattern: `causal`, `sinks` (S, 0 for none) and `window` (the size W of a
# {"sliding_window": {"size": W}}, None for none). No sinks and no window is dense.
HeadSpec = namedtuple("HeadSpec", ["causal", "sinks", "window"])

DENSE = HeadSpec(False, 0, None)
CAUSAL = HeadSpec(True, 0, None)

# name -> (description, per-head specs for `heads` heads, SDPA flash equivalent or None)
PATTERNS = {
    "dense": ("dense", lambda h: [DENSE] * h, "dense"),
    "causal": ("causal", lambda h: [CAUSAL] * h, "causal"),
    "window4096": ("causal window 4096", lambda h: [HeadSpec(True, 0, 4096)] * h, None),
    "sinks4-window4096": (
        "causal sinks 4 + window 4096",
        lambda h: [HeadSpec(True, 4, 4096)] * h,
        None,
    ),
    "mix": (
        "per head: first half causal, second half sinks 4 + window 1024",
        lambda h: [CAUSAL] * (h // 2) + [HeadSpec(True, 4, 1024)] * (h - h // 2),
        None,
    ),
}


def spec_json(s):
    """One head's pattern as docs/patterns.md JSON."""
    comps = []
    if s.sinks:
        comps.append({"sinks": {"count": s.sinks}})
    if s.window is not None:
        comps.append({"sliding_window": {"size": s.window}})
    return {"causal": s.causal, "components": comps}


def pattern_json(specs):
    """A head pattern set: one pattern when every head shares it, else {"heads": [...]}."""
    if all(s == specs[0] for s in specs):
        return spec_json(specs[0])
    return {"heads": [spec_json(s) for s in specs]}


def row_allowed(s, p, kv_len):
    """Keys allowed to the query at position p (docs/patterns.md), as a count."""
    end = min(kv_len, p + 1) if s.causal else kv_len
    if end <= 0:
        return 0
    if not s.sinks and s.window is None:
        return end
    spans = []
    if s.sinks:
        spans.append((0, min(s.sinks, end)))
    if s.window is not None:
        spans.append((max(0, p - (s.window - 1)), min(p + 1, end)))
    spans = sorted((a, b) for a, b in spans if a < b)
    total, reach = 0, 0
    for a, b in spans:
        a = max(a, reach)
        if a < b:
            total += b - a
            reach = b
    return total


@functools.lru_cache(maxsize=None)
def head_allowed(s, q_len, kv_len):
    shift = kv_len - q_len
    return sum(row_allowed(s, i + shift, kv_len) for i in range(q_len))


def allowed_pairs(specs, q_len, kv_len, batch=1):
    """Allowed (query, key) pairs over the batch and every head."""
    cache = {}
    total = 0
    for s in specs:
        if s not in cache:
            cache[s] = head_allowed(s, q_len, kv_len)
        total += cache[s]
    return batch * total


def head_groups(specs):
    """Runs of equal heads: [(start, end, spec)]."""
    groups = []
    for h, s in enumerate(specs):
        if groups and groups[-1][2] == s:
            groups[-1] = (groups[-1][0], h + 1, s)
        else:
            groups.append((h, h + 1, s))
    return groups


def case_matrix(quick=False, patterns=None, seqs=None, head_dims=None):
    """The cases in run order: sequence length, then head_dim, then pattern (a budget cut
    drops the longest sequences)."""
    seqs = seqs or (QUICK_SEQ_LENS if quick else SEQ_LENS)
    head_dims = head_dims or (QUICK_HEAD_DIMS if quick else HEAD_DIMS)
    patterns = patterns or list(PATTERNS)
    cases = []
    for n in seqs:
        for d in head_dims:
            for name in patterns:
                desc, specs_of, sdpa = PATTERNS[name]
                specs = specs_of(HEADS)
                cases.append(
                    {
                        "case": "%s-%dk-d%d" % (name, n // 1024, d) if n % 1024 == 0
                        else "%s-%d-d%d" % (name, n, d),
                        "pattern_name": name,
                        "description": desc,
                        "batch": BATCH,
                        "q_len": n,
                        "kv_len": n,
                        "heads": HEADS,
                        "kv_heads": KV_HEADS,
                        "head_dim": d,
                        "dtype": DTYPE,
                        "sdpa": sdpa,
                        "specs": specs,
                        "pattern": pattern_json(specs),
                    }
                )
    return cases


def case_flops(case, allowed):
    return 4 * allowed * case["head_dim"]


# ---- the report -----------------------------------------------------------------------------

def _num(x, fmt):
    return "n/a" if x is None else fmt % x


def tflops(flops, ms):
    if ms is None or ms <= 0:
        return None
    return flops / (ms * 1e-3) / 1e12


def speedup(other_ms, ours_ms):
    """Other system's time / sparse-attn's (> 1: sparse-attn is faster); equals the ratio of
    TFLOP/s on allowed pairs, sparse-attn's over the other's."""
    if other_ms is None or ours_ms is None or ours_ms <= 0:
        return None
    return other_ms / ours_ms


def markdown(doc):
    """bench-torch.md from the JSON document {"meta": ..., "results": [...], ...}."""
    meta = doc.get("meta", {})
    res = doc.get("results", [])
    out = []
    out.append("# sparse-attn vs PyTorch FA2 (SDPA flash) and FlexAttention: %s"
               % meta.get("date", "(no date)"))
    out.append("")
    for key, label in [("gpu", "GPU"), ("torch", "torch"), ("cuda", "CUDA (torch)"),
                       ("commit", "commit (.gpu-carry/COMMIT)"), ("binary", "sparse-attn binary")]:
        if meta.get(key):
            out.append("- %s: %s" % (label, meta[key]))
    out.append(
        "- shapes: %s, batch %s, %s query heads, %s kv heads; q, k, v ~ N(0, 1) from "
        "torch (seed %s), the same tensors for every system"
        % (meta.get("dtype", DTYPE), meta.get("batch", BATCH), meta.get("heads", HEADS),
           meta.get("kv_heads", KV_HEADS), meta.get("seed", "?"))
    )
    out.append(
        "- timing: %s warm-up calls, then the median (min) of %s calls queued back to back, "
        "CUDA events between consecutive calls; compilation, plan building and uploads "
        "outside the timing" % (meta.get("warmup", "?"), meta.get("iters", "?"))
    )
    out.append(
        "- TFLOP/s = 4 x allowed pairs x head_dim / median time, for every system; x FA2 "
        "and x Flex = their time / sparse-attn's (> 1: sparse-attn faster)"
    )
    out.append(
        "- FA2 `*`: the pattern has windows or sinks, which SDPA flash cannot express; "
        "the time is causal SDPA's, what a user would run instead (more pairs computed)"
    )
    out.append(
        "- Flex: compiled flex_attention with return_lse (sparse-attn writes lse too); "
        "mask ms = create_block_mask (BLOCK_SIZE 128), median of rebuilds after a first "
        "(compiling) build; the dense case runs without a block mask"
    )
    out.append(
        "- err: max |out_sparse-attn - out_Flex| (bf16 outputs), lse err: max |lse - "
        "lse_Flex| (natural log); `ok` when max |out - out_Flex| / max(1, |out_Flex|) <= %g "
        "and lse err <= %g" % (ERR_OUT_TOL, ERR_LSE_TOL)
    )
    if meta.get("note"):
        out.append("- " + meta["note"])
    out.append("")
    out.append(
        "| case | pattern | seq | d | density | sparse-attn ms | TFLOP/s | FA2 ms | TFLOP/s "
        "| Flex ms | TFLOP/s | Flex mask ms | x FA2 | x Flex | err | lse err | check "
        "| tiles visited / dense |"
    )
    out.append("|" + " --- |" * 18)
    notes = []
    for r in res:
        sa = r.get("sparse_attn") or {}
        fa = r.get("fa2") or {}
        fx = r.get("flex") or {}
        fa_mark = "" if fa.get("same_pattern", True) else "*"
        tiles = "n/a"
        if sa.get("tiles_visited") is not None and sa.get("tiles_dense"):
            tiles = "%d / %d (%.3f)" % (sa["tiles_visited"], sa["tiles_dense"],
                                        sa["tiles_visited"] / sa["tiles_dense"])
        cells = [
            r.get("case", "?"),
            r.get("description", ""),
            str(r.get("q_len", "?")),
            str(r.get("head_dim", "?")),
            _num(r.get("density"), "%.3f"),
            "FAIL" if sa.get("error") else _num(sa.get("ms"), "%.3f"),
            _num(sa.get("tflops"), "%.1f"),
            "FAIL" if fa.get("error") else _num(fa.get("ms"), "%.3f") + (fa_mark if fa.get("ms") is not None else ""),
            _num(fa.get("tflops"), "%.1f"),
            "FAIL" if fx.get("error") else _num(fx.get("ms"), "%.3f"),
            _num(fx.get("tflops"), "%.1f"),
            _num(fx.get("mask_ms"), "%.2f"),
            _num(r.get("x_fa2"), "%.2f") + (fa_mark if r.get("x_fa2") is not None else ""),
            _num(r.get("x_flex"), "%.2f"),
            _num(r.get("err_out"), "%.2e"),
            _num(r.get("err_lse"), "%.2e"),
            r.get("check", "n/a"),
            tiles,
        ]
        out.append("| " + " | ".join(cells) + " |")
        for system, d in [("sparse-attn", sa), ("FA2", fa), ("Flex", fx)]:
            if d.get("error"):
                notes.append("- %s, %s: %s" % (r.get("case", "?"), system, d["error"]))
        if r.get("count_mismatch"):
            notes.append("- %s: %s" % (r.get("case", "?"), r["count_mismatch"]))
    out.append("")
    extra = []
    for r in res:
        fx = r.get("flex") or {}
        sa = r.get("sparse_attn") or {}
        extra.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            r.get("case", "?"), _num(sa.get("ms_min"), "%.3f"),
            _num(r.get("err_out_fa2"), "%.2e"), _num(fx.get("compile_s"), "%.1f"),
            _num(fx.get("mask_first_ms"), "%.1f"), _num(sa.get("plan_ms"), "%.2f"),
            _num(r.get("wall_s"), "%.1f")))
    if extra:
        out.append("Details (one-time costs are not in the times above):")
        out.append("")
        out.append("| case | sparse-attn min ms | err vs FA2 (same pattern) "
                   "| Flex first call (compile) s | Flex first mask build ms "
                   "| sparse-attn plan ms (host) | case wall s |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        out.extend(extra)
        out.append("")
    if notes:
        out.append("Failures and warnings:")
        out.append("")
        out.extend(notes)
        out.append("")
    if doc.get("not_run"):
        out.append("Not run (%s): %s" % (doc.get("stopped") or "filtered",
                                        ", ".join(doc["not_run"])))
        out.append("")
    elif doc.get("stopped"):
        out.append("Stopped: %s" % doc["stopped"])
        out.append("")
    return "\n".join(out) + "\n"


def write_atomic(path, text):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_reports(doc, out_dir):
    """Writes bench-torch.json and bench-torch.md into out_dir (nothing else)."""
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, "bench-torch.json"), json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    write_atomic(os.path.join(out_dir, "bench-torch.md"), md)
    return md


ERR_OUT_TOL = 2e-2
ERR_LSE_TOL = 1e-2


def finish_result(r):
    """Derived fields of one case's result: TFLOP/s, ratios, the check."""
    flops = r["flops"]
    for key in ("sparse_attn", "fa2", "flex"):
        d = r.get(key)
        if d and d.get("ms") is not None:
            d["tflops"] = tflops(flops, d["ms"])
    sa = (r.get("sparse_attn") or {}).get("ms")
    r["x_fa2"] = speedup((r.get("fa2") or {}).get("ms"), sa)
    r["x_flex"] = speedup((r.get("flex") or {}).get("ms"), sa)
    if r.get("err_out") is None:
        r["check"] = "n/a"
    else:
        err = r.get("err_out_scaled", r["err_out"])
        ok = err <= ERR_OUT_TOL and (r.get("err_lse") is None or r["err_lse"] <= ERR_LSE_TOL)
        r["check"] = "ok" if ok else "FAIL"
    return r


# ---- timing on the GPU (needs torch) --------------------------------------------------------

# Where the tensors live (a test harness may point it elsewhere).
DEVICE = "cuda"

def time_cuda(torch, fn, warmup, iters):
    """(median ms, min ms) of `iters` calls after `warmup`, CUDA events between calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    events[0].record()
    for i in range(iters):
        fn()
        events[i + 1].record()
    events[-1].synchronize()
    times = [events[i].elapsed_time(events[i + 1]) for i in range(iters)]
    return statistics.median(times), min(times)


def mask_mod_for(torch, specs, q_len, kv_len):
    """The pattern's token predicate as a FlexAttention mask_mod (None for all-dense heads)."""
    shift = kv_len - q_len
    groups = head_groups(specs)
    if len(groups) == 1 and groups[0][2] == DENSE:
        return None

    def pred(s, q_idx, kv_idx):
        p = q_idx + shift
        m = None
        if s.sinks:
            m = kv_idx < s.sinks
        if s.window is not None:
            w = (kv_idx >= p - (s.window - 1)) & (kv_idx <= p)
            m = w if m is None else (m | w)
        if s.causal:
            c = kv_idx <= p
            m = c if m is None else (m & c)
        if m is None:
            m = kv_idx >= 0
        return m

    if len(groups) == 1:
        s0 = groups[0][2]

        def mask_mod(b, h, q_idx, kv_idx):
            return pred(s0, q_idx, kv_idx)
        return mask_mod

    def mask_mod(b, h, q_idx, kv_idx):
        m = pred(groups[-1][2], q_idx, kv_idx)
        for start, end, s in reversed(groups[:-1]):
            m = torch.where(h < end, pred(s, q_idx, kv_idx), m)
        return m
    return mask_mod


def build_block_mask(create_block_mask, mask_mod, heads, q_len, kv_len):
    try:
        return create_block_mask(mask_mod, None, heads, q_len, kv_len, device=DEVICE,
                                 BLOCK_SIZE=128, _compile=True)
    except TypeError:
        return create_block_mask(mask_mod, None, heads, q_len, kv_len, device=DEVICE,
                                 BLOCK_SIZE=128)


def last_line(text):
    lines = [l for l in (text or "").strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


class Runner:
    def __init__(self, args, torch):
        self.args = args
        self.torch = torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.attention.flex_attention as fa_mod
        self.F = F
        self.SDPBackend = SDPBackend
        self.sdpa_kernel = sdpa_kernel
        self.create_block_mask = fa_mod.create_block_mask
        self.aux = getattr(fa_mod, "AuxRequest", None)
        # Every case has its own shapes and mask_mod, so it recompiles: lift dynamo's limits.
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 1024)
        self.flex = torch.compile(fa_mod.flex_attention, dynamic=False)

    def flex_call(self, q, k, v, bm, gqa):
        """Flex's (out, lse): return_aux=AuxRequest(lse=True) where torch has it (2.9 and
        later), else the older return_lse=True."""
        if self.aux is not None:
            try:
                out, aux = self.flex(q, k, v, block_mask=bm, enable_gqa=gqa,
                                     return_aux=self.aux(lse=True))
                return out, aux.lse
            except Exception as e:  # noqa: BLE001 - fall back to the older argument once
                print("bench-torch.py: flex_attention(return_aux=AuxRequest(lse=True)) failed "
                      "(%s: %s); using return_lse=True from now on" % (type(e).__name__, e))
                self.aux = None
        return self.flex(q, k, v, block_mask=bm, enable_gqa=gqa, return_lse=True)

    def run_case(self, case, index, deadline):
        torch, args = self.torch, self.args
        r = {k: case[k] for k in ("case", "pattern_name", "description", "batch", "q_len",
                                  "kv_len", "heads", "kv_heads", "head_dim", "dtype",
                                  "pattern")}
        b, n, m, h, hk, d = (case["batch"], case["q_len"], case["kv_len"], case["heads"],
                             case["kv_heads"], case["head_dim"])
        allowed = allowed_pairs(case["specs"], n, m, b)
        r["allowed_pairs"] = allowed
        r["density"] = allowed / float(b * h * n * m)
        r["flops"] = case_flops(case, allowed)
        seed = args.seed + index
        r["seed"] = seed
        torch._dynamo.reset()
        torch.manual_seed(seed)
        dt = torch.bfloat16 if case["dtype"] == "bf16" else torch.float16
        # sparse-attn's layout, [batch, len, heads, head_dim].
        q = torch.randn(b, n, h, d, device=DEVICE, dtype=dt)
        k = torch.randn(b, m, hk, d, device=DEVICE, dtype=dt)
        v = torch.randn(b, m, hk, d, device=DEVICE, dtype=dt)
        work = args.work_dir
        inp = os.path.join(work, "qkv.safetensors")
        outp = os.path.join(work, "out.safetensors")
        patp = os.path.join(work, "pattern.json")
        for f in (inp, outp):
            if os.path.exists(f):
                os.remove(f)
        from safetensors.torch import load_file, save_file
        save_file({"q": q.cpu(), "k": k.cpu(), "v": v.cpu()}, inp)
        with open(patp, "w") as f:
            json.dump(case["pattern"], f)
        # PyTorch's layout, [batch, heads, len, head_dim].
        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        del q, k, v
        torch.cuda.synchronize()

        # 1. sparse-attn, in its own process (nothing else on the GPU meanwhile).
        sa = {}
        if not os.access(args.binary, os.X_OK):
            sa["error"] = "no sparse-attn binary at %s (run scripts/gpu-pack.sh)" % args.binary
        else:
            cmd = [args.binary, "bench", "--pattern", patp, "--input", inp, "--output", outp,
                   "--case", case["case"], "--warmup", str(args.warmup),
                   "--iters", str(args.iters)]
            limit = max(1.0, min(300.0, deadline - time.time())) if deadline else 300.0
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, timeout=limit)
                if p.returncode != 0:
                    sa["error"] = "exit %d: %s" % (p.returncode,
                                                   last_line(p.stderr) or last_line(p.stdout))
                else:
                    j = json.loads(last_line(p.stdout))
                    sa = {"ms": j.get("ms_median"), "ms_min": j.get("ms_min"),
                          "tiles_visited": j.get("tiles_visited"),
                          "tiles_dense": j.get("tiles_dense"),
                          "num_splits": j.get("num_splits"), "plan_ms": j.get("plan_ms"),
                          "allowed_pairs": j.get("allowed_pairs"),
                          "pattern": j.get("pattern")}
                    if j.get("allowed_pairs") != allowed:
                        r["count_mismatch"] = (
                            "allowed pairs: sparse-attn counts %s, this script %d"
                            % (j.get("allowed_pairs"), allowed))
            except subprocess.TimeoutExpired:
                sa["error"] = "timed out after %.0f s" % limit
            except (ValueError, OSError) as e:
                sa["error"] = "%s: %s" % (type(e).__name__, e)
        r["sparse_attn"] = sa
        out_sa = lse_sa = None
        if "error" not in sa and os.path.exists(outp):
            t = load_file(outp)
            out_sa = t["out"].to(DEVICE).transpose(1, 2).float()
            lse_sa = t["lse"].to(DEVICE).float()

        gqa = h != hk
        with torch.no_grad():
            # 2. FA2: SDPA's flash backend.
            fa = {"same_pattern": case["sdpa"] is not None,
                  "kind": case["sdpa"] or "causal (pattern not expressible)"}
            causal = case["sdpa"] != "dense"
            try:
                with self.sdpa_kernel(self.SDPBackend.FLASH_ATTENTION):
                    def sdpa():
                        return self.F.scaled_dot_product_attention(
                            qt, kt, vt, is_causal=causal, enable_gqa=gqa)
                    o = sdpa()
                    if out_sa is not None and fa["same_pattern"]:
                        r["err_out_fa2"] = (out_sa - o.float()).abs().max().item()
                    del o
                    fa["ms"], fa["ms_min"] = time_cuda(torch, sdpa, args.warmup, args.iters)
            except Exception as e:  # noqa: BLE001 - any failure is reported, not fatal
                fa["error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            r["fa2"] = fa

            # 3. FlexAttention with the pattern's block mask.
            fx = {}
            try:
                mm = mask_mod_for(torch, case["specs"], n, m)
                bm = None
                if mm is not None:
                    hs = None if len(head_groups(case["specs"])) == 1 else h
                    t0 = time.time()
                    bm = build_block_mask(self.create_block_mask, mm, hs, n, m)
                    torch.cuda.synchronize()
                    fx["mask_first_ms"] = (time.time() - t0) * 1e3
                    # Wall time to a synchronised result: the build is host work (tracing,
                    # launches) as much as GPU work.
                    builds = []
                    for _ in range(3):
                        t0 = time.time()
                        bm = build_block_mask(self.create_block_mask, mm, hs, n, m)
                        torch.cuda.synchronize()
                        builds.append((time.time() - t0) * 1e3)
                    fx["mask_ms"] = statistics.median(builds)
                t0 = time.time()
                o, lse = self.flex_call(qt, kt, vt, bm, gqa)
                torch.cuda.synchronize()
                fx["compile_s"] = time.time() - t0
                if out_sa is not None:
                    of = o.float()
                    diff = (out_sa - of).abs()
                    r["err_out"] = diff.max().item()
                    # bf16 rounds |out| >= 1 coarser: the check scales by max(1, |out|).
                    r["err_out_scaled"] = (diff / of.abs().clamp(min=1.0)).max().item()
                    del of, diff
                    lf = lse.float()
                    same_inf = torch.isinf(lse_sa) & torch.isinf(lf) & ((lse_sa > 0) == (lf > 0))
                    diff = torch.where(same_inf, torch.zeros_like(lf), (lse_sa - lf).abs())
                    r["err_lse"] = diff.max().item()
                del o, lse
                fx["ms"], fx["ms_min"] = time_cuda(
                    torch, lambda: self.flex_call(qt, kt, vt, bm, gqa), args.warmup, args.iters)
            except Exception as e:  # noqa: BLE001
                fx["error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            r["flex"] = fx
        del qt, kt, vt, out_sa, lse_sa
        torch.cuda.empty_cache()
        return finish_result(r)


# ---- the command line -----------------------------------------------------------------------

def int_list(text):
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % text)
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError("expected positive integers, got %r" % text)
    return vals


def pattern_list(text):
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in PATTERNS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            "unknown pattern(s) %s (known: %s)" % (", ".join(bad) or "(none)", ", ".join(PATTERNS)))
    return names


def head_dim_list(text):
    vals = int_list(text)
    bad = [v for v in vals if v not in (64, 128)]
    if bad:
        raise argparse.ArgumentTypeError("head_dim must be 64 or 128, got %s" % bad)
    return vals


def positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds, got %r" % text)
    if not v > 0:
        raise argparse.ArgumentTypeError("expected a positive number of seconds, got %r" % text)
    return v


def count(lo):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected an integer, got %r" % text)
        if v < lo:
            raise argparse.ArgumentTypeError("expected an integer >= %d, got %d" % (lo, v))
        return v
    return parse


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench-torch.py",
        description="sparse-attn vs SDPA flash (FA2) and FlexAttention on one GPU, same tensors.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print the case matrix and exit")
    mode.add_argument("--self-test", action="store_true",
                      help="check the case list, the pair counts and the report writer")
    mode.add_argument("--format-only", metavar="RESULTS.json",
                      help="write bench-torch.md from a results JSON and exit")
    ap.add_argument("--json", action="store_true",
                    help="with --list: the cases as JSON (pattern, shape, allowed pairs)")
    ap.add_argument("--quick", action="store_true",
                    help="seq %s, head_dim %s, every pattern"
                    % (",".join(map(str, QUICK_SEQ_LENS)), ",".join(map(str, QUICK_HEAD_DIMS))))
    ap.add_argument("--patterns", type=pattern_list, help="subset of: " + ", ".join(PATTERNS))
    ap.add_argument("--seq", type=int_list, help="sequence lengths (default %s)"
                    % ",".join(map(str, SEQ_LENS)))
    ap.add_argument("--head-dims", type=head_dim_list, help="64 and/or 128")
    ap.add_argument("--budget", type=positive_float, metavar="SECONDS",
                    help="stop before a case that would not finish in time; write what is done")
    ap.add_argument("--warmup", type=count(0), default=5, help="untimed calls (default 5)")
    ap.add_argument("--iters", type=count(1), default=20, help="timed calls (default 20)")
    ap.add_argument("--seed", type=count(0), default=0, help="seed of case 0 (case i: seed + i)")
    ap.add_argument("--binary", default=os.path.join(ROOT, ".gpu-carry", "sparse-attn"),
                    help="the sparse-attn binary (default .gpu-carry/sparse-attn)")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or "/tmp/bench-torch-out",
                    help="where bench-torch.md and .json go (default $OUT)")
    ap.add_argument("--work-dir", help="temporary inputs and outputs (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.json and not args.list:
        ap.error("--json goes with --list")
    return ap, args


def meta_base(args):
    commit = None
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(args.binary)), "COMMIT")) as f:
            commit = " ".join(l.strip() for l in f if l.strip())
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "commit": commit,
        "binary": args.binary,
        "dtype": DTYPE,
        "batch": BATCH,
        "heads": HEADS,
        "kv_heads": KV_HEADS,
        "warmup": args.warmup,
        "iters": args.iters,
        "seed": args.seed,
        "quick": args.quick,
        "budget_s": args.budget,
    }


def cmd_list(args):
    cases = case_matrix(args.quick, args.patterns, args.seq, args.head_dims)
    if args.json:
        keys = ("case", "pattern_name", "description", "batch", "q_len", "kv_len", "heads",
                "kv_heads", "head_dim", "dtype", "sdpa", "pattern")
        print(json.dumps([dict({k: c[k] for k in keys},
                               allowed_pairs=allowed_pairs(c["specs"], c["q_len"], c["kv_len"],
                                                           c["batch"]))
                          for c in cases], indent=1))
        return 0
    print("%d cases (bf16, batch %d, %d heads, %d kv heads):" % (len(cases), BATCH, HEADS, KV_HEADS))
    for c in cases:
        a = allowed_pairs(c["specs"], c["q_len"], c["kv_len"], c["batch"])
        print("  %-26s %-62s allowed %14d  density %.4f  FA2 %s" % (
            c["case"], c["description"], a,
            a / float(c["batch"] * c["heads"] * c["q_len"] * c["kv_len"]),
            c["sdpa"] or "causal*"))
    return 0


def cmd_format_only(args):
    try:
        with open(args.format_only) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print("bench-torch.py: cannot read %s: %s" % (args.format_only, e), file=sys.stderr)
        return 1
    if not isinstance(doc, dict) or not isinstance(doc.get("results", []), list):
        print("bench-torch.py: %s: expected {\"meta\": ..., \"results\": [...]}" % args.format_only,
              file=sys.stderr)
        return 1
    doc["results"] = [finish_result(r) if "flops" in r else r for r in doc.get("results", [])]
    os.makedirs(args.out_dir, exist_ok=True)
    md = markdown(doc)
    write_atomic(os.path.join(args.out_dir, "bench-torch.md"), md)
    sys.stdout.write(md)
    return 0


def brute_allowed(s, q_len, kv_len):
    """The contract's predicate pair by pair (docs/patterns.md), for the self-test."""
    shift = kv_len - q_len
    total = 0
    for i in range(q_len):
        p = i + shift
        for j in range(kv_len):
            union = not s.sinks and s.window is None
            if s.sinks and j < s.sinks:
                union = True
            if s.window is not None and p - (s.window - 1) <= j <= p:
                union = True
            if union and (not s.causal or j <= p):
                total += 1
    return total


def fake_doc():
    """A results document as a run would write it, for the writer's tests."""
    cases = case_matrix(True, ["causal", "mix"], [8192], [128])
    res = []
    for i, c in enumerate(cases):
        a = allowed_pairs(c["specs"], c["q_len"], c["kv_len"])
        r = {k: c[k] for k in ("case", "pattern_name", "description", "batch", "q_len",
                               "kv_len", "heads", "kv_heads", "head_dim", "dtype")}
        r.update({"allowed_pairs": a, "density": a / float(16 * 8192 * 8192),
                  "flops": case_flops(c, a),
                  "sparse_attn": {"ms": 2.0, "tiles_visited": 100, "tiles_dense": 200,
                                  "plan_ms": 0.5},
                  "fa2": {"ms": 3.0, "same_pattern": c["sdpa"] is not None},
                  "flex": {"ms": 4.0, "mask_ms": 1.5, "compile_s": 9.0, "mask_first_ms": 800.0},
                  "err_out": 3.9e-3, "err_lse": 2.0e-5})
        if i == 1:
            r["flex"] = {"error": "RuntimeError: fake failure"}
            r["err_out"] = r["err_lse"] = None
        res.append(finish_result(r))
    return {"meta": {"date": "2030-01-01T00:00Z", "gpu": "Fake GPU", "torch": "0.0",
                     "warmup": 5, "iters": 20, "seed": 0},
            "results": res, "not_run": ["causal-32k-d128"], "stopped": "budget"}


def cmd_self_test():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    for s in [DENSE, CAUSAL, HeadSpec(True, 0, 5), HeadSpec(True, 3, 4), HeadSpec(False, 2, 3),
              HeadSpec(True, 4, 1), HeadSpec(True, 20, 4)]:
        for q_len, kv_len in [(17, 17), (9, 23), (23, 9), (1, 13)]:
            got = head_allowed(s, q_len, kv_len)
            want = brute_allowed(s, q_len, kv_len)
            check(got == want, "allowed %s q %d kv %d: %d != %d" % (s, q_len, kv_len, got, want))
    full = case_matrix()
    check(len(full) == 5 * 4 * 2, "full matrix has %d cases" % len(full))
    check({c["q_len"] for c in full} == {4096, 8192, 16384, 32768}, "sequence lengths")
    check({c["head_dim"] for c in full} == {64, 128}, "head dims")
    check(len({c["case"] for c in full}) == len(full), "case names are unique")
    quick = case_matrix(quick=True)
    check(len(quick) == 5 * len(QUICK_SEQ_LENS) * len(QUICK_HEAD_DIMS), "quick matrix")
    mix = [c for c in full if c["pattern_name"] == "mix"][0]
    check(len(mix["pattern"]["heads"]) == HEADS, "mix is a head set")
    check(head_groups(mix["specs"]) == [(0, 8, CAUSAL), (8, 16, HeadSpec(True, 4, 1024))],
          "mix groups")
    sw = [c for c in full if c["pattern_name"] == "sinks4-window4096"][0]
    check(sw["pattern"] == {"causal": True, "components": [{"sinks": {"count": 4}},
                                                         {"sliding_window": {"size": 4096}}]},
          "sinks + window JSON")
    # The mask_mod FlexAttention gets, evaluated pair by pair on plain integers, allows what
    # the contract allows (a stand-in for torch.where; comparisons, & and | act on bools).
    class ScalarTorch(object):
        @staticmethod
        def where(c, a, b):
            return a if c else b

    for specs in [[DENSE] * 2, [CAUSAL] * 2, [HeadSpec(True, 3, 4)] * 2,
                  [CAUSAL, HeadSpec(True, 2, 3), HeadSpec(True, 2, 3), DENSE]]:
        for q_len, kv_len in [(13, 13), (7, 19), (19, 7)]:
            mm = mask_mod_for(ScalarTorch, specs, q_len, kv_len)
            got = sum(1 for h in range(len(specs)) for i in range(q_len) for j in range(kv_len)
                      if mm is None or bool(mm(0, h, i, j)))
            want = sum(brute_allowed(s, q_len, kv_len) for s in specs)
            check(got == want, "mask_mod of %s q %d kv %d allows %d pairs, the contract %d"
                  % (specs, q_len, kv_len, got, want))
    # The closed forms against a count by hand: 4 sinks + window 1024, causal, 4096 tokens.
    check(head_allowed(HeadSpec(True, 4, 1024), 4096, 4096) == 3682810, "sinks+window count")
    check(head_allowed(CAUSAL, 4096, 4096) == 4096 * 4097 // 2, "causal count")
    doc = fake_doc()
    md = markdown(doc)
    for needle in ["| case | pattern | seq | d |", "| causal-8k-d128 |", "| mix-8k-d128 |",
                   "1.50 |", "3.000* |", "FAIL", "fake failure", "Not run (budget): causal-32k-d128",
                   "Fake GPU"]:
        check(needle in md, "markdown lacks %r" % needle)
    r0 = doc["results"][0]
    check(abs(r0["x_fa2"] - 1.5) < 1e-12 and abs(r0["x_flex"] - 2.0) < 1e-12, "ratios")
    check(abs(r0["sparse_attn"]["tflops"] - r0["flops"] / 2e-3 / 1e12) < 1e-9, "TFLOP/s")
    check(r0["check"] == "ok", "check ok")
    tmp = tempfile.mkdtemp(prefix="bench-torch-selftest.")
    try:
        write_reports(doc, tmp)
        check(sorted(os.listdir(tmp)) == ["bench-torch.json", "bench-torch.md"], "files written")
        with open(os.path.join(tmp, "bench-torch.json")) as f:
            check(json.load(f)["results"][0]["case"] == "causal-8k-d128", "JSON round trip")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        for f in failures:
            print("self-test FAILED: " + f)
        return 1
    print("bench-torch.py self-test: ok (%d cases in the full matrix, %d quick)"
          % (len(full), len(quick)))
    return 0


def skip(args, why):
    """No torch or no GPU: say so, leave a report that says so, exit 0."""
    print("bench-torch.py: %s: nothing to time" % why)
    doc = {"meta": dict(meta_base(args), note="not run: " + why), "results": [],
           "stopped": why}
    try:
        write_reports(doc, args.out_dir)
    except OSError as e:
        print("bench-torch.py: cannot write the report to %s: %s" % (args.out_dir, e))
    return 0


def cmd_run(args):
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        return skip(args, "no torch (%s: %s)" % (type(e).__name__, e))
    if not torch.cuda.is_available():
        return skip(args, "no GPU (torch %s: torch.cuda.is_available() is False)"
                    % getattr(torch, "__version__", "?"))
    start = time.time()
    deadline = start + args.budget if args.budget else None
    cases = case_matrix(args.quick, args.patterns, args.seq, args.head_dims)
    meta = meta_base(args)
    meta.update({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "cuda": torch.version.cuda})
    own_work = args.work_dir is None
    if own_work:
        args.work_dir = tempfile.mkdtemp(prefix="bench-torch.")
    os.makedirs(args.work_dir, exist_ok=True)
    doc = {"meta": meta, "results": [], "not_run": [], "stopped": None}
    write_reports(doc, args.out_dir)
    print("bench-torch.py: %d cases on %s (torch %s); budget %s; results in %s" % (
        len(cases), meta["gpu"], meta["torch"],
        "%.0f s" % args.budget if args.budget else "none", args.out_dir))
    sys.stdout.flush()
    try:
        runner = Runner(args, torch)
        longest = 0.0
        for i, case in enumerate(cases):
            now = time.time()
            # The next case is assumed to cost up to 1.5x the longest so far (compilation
            # dominates: every case recompiles Flex), and at least 10 s.
            if deadline is not None and now + max(10.0, 1.5 * longest) > deadline:
                doc["stopped"] = "budget: %.0f s of %.0f s used" % (now - start, args.budget)
                doc["not_run"] = [c["case"] for c in cases[i:]]
                break
            t0 = time.time()
            try:
                r = runner.run_case(case, i, deadline)
            except Exception as e:  # noqa: BLE001 - one broken case must not lose the rest
                r = {"case": case["case"], "description": case["description"],
                     "q_len": case["q_len"], "head_dim": case["head_dim"],
                     "sparse_attn": {"error": "case failed: %s: %s" % (type(e).__name__, e)}}
                try:
                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001
                    pass
            r["wall_s"] = time.time() - t0
            longest = max(longest, r["wall_s"])
            doc["results"].append(r)
            write_reports(doc, args.out_dir)
            sa, fa, fx = (r.get(k) or {} for k in ("sparse_attn", "fa2", "flex"))
            print("[%4.0fs] %-24s sparse-attn %s ms  FA2 %s ms  Flex %s ms  err %s  (%.1f s)" % (
                time.time() - start, case["case"], _num(sa.get("ms"), "%.3f"),
                _num(fa.get("ms"), "%.3f"), _num(fx.get("ms"), "%.3f"),
                _num(r.get("err_out"), "%.1e"), r["wall_s"]))
            sys.stdout.flush()
        else:
            doc["stopped"] = None
    finally:
        if own_work:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    md = write_reports(doc, args.out_dir)
    sys.stdout.write("\n" + md)
    return 0


def main(argv=None):
    _, args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        return cmd_list(args)
    if args.self_test:
        return cmd_self_test()
    if args.format_only:
        return cmd_format_only(args)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
