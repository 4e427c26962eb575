#!/usr/bin/env python3
"""Static SASS report of the attention forward kernels: the speed gauge while no GPU is lent.

For every sa_attn_fwd_* kernel and architecture in the fatbins (one per head_dim file,
kernels/attention_fwd_hd<D>.cu) it reads the SASS that nvcc produced and reports resources
(registers, shared memory, spills, occupancy), the instruction mix of one dense steady-state
iteration of the mainloop, and the extra cost of a partial (masked) tile. The method -- how the
loop and the paths are chosen, what each column means -- is docs/sass-report.md; it automates
the hand reading issue 11's figures came from.

    python3 scripts/sass-report.py [--fatbin PATH...] [--cuobjdump PATH] [--json] [--check]
    python3 scripts/sass-report.py --sass DUMP.txt ...     # saved text, no CUDA toolchain

--sass takes saved `cuobjdump -sass` text; resource usage and indirect-branch targets are
read from the same file when present (save with `--save FILE`, or concatenate
`cuobjdump -res-usage -elf -sass FATBIN` of each fatbin into FILE). Exit status: 0 report
printed, 1 --check found a target missed (or a kernel that could not be analysed), 2 bad input.

Standard library only (python3 >= 3.8).
"""

import argparse
import ast
import glob
import heapq
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_RE_DEFAULT = r"^sa_attn_fwd_"

# ---------------------------------------------------------------------------------------------
# Hardware limits used by the occupancy formula (CUDA occupancy calculator / cuda_occupancy.h,
# CUDA Programming Guide "Compute Capabilities" table). Registers: 64K 32-bit registers per SM
# split over 4 sub-partitions, allocated per warp in units of 256 (= per thread rounded up to a
# multiple of 8). Shared memory: the per-SM capacity (228 KB on sm_90, of which one block may
# use 227 KB; 164 KB / 163 KB on sm_80), allocated in 128-byte units, plus 1 KB the driver
# reserves per block.
# ---------------------------------------------------------------------------------------------
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256          # registers, per warp
SUB_PARTITIONS = 4            # each owns REGS_PER_SM / 4 and whole warps
SMEM_ALLOC_UNIT = 128         # bytes
SMEM_RESERVED_PER_BLOCK = 1024
ARCH_LIMITS = {
    # cc: (max warps/SM, max blocks/SM, shared memory per SM, max shared memory per block)
    80: (64, 32, 164 * 1024, 163 * 1024),
    86: (48, 16, 100 * 1024, 99 * 1024),
    89: (48, 24, 100 * 1024, 99 * 1024),
    90: (64, 32, 228 * 1024, 227 * 1024),
    100: (64, 32, 228 * 1024, 227 * 1024),
}

# The issue-11 targets that --check enforces.
TARGET_NON_HMMA_PER_HMMA = 3.0   # sm_90, head_dim 128, dense steady state
TARGET_PARTIAL_RATIO = 1.3       # partial-tile iteration / full-tile iteration
DEFAULT_MASK_TRIP = 32           # entries per thread of a 64-key S tile (16 rows x 64 / 32)
DEFAULT_DETAIL = "sm_90:sa_attn_fwd_f16_hd128"

# ---------------------------------------------------------------------------------------------
# Instruction classes. Base opcode (text before the first '.') -> class; anything unlisted is
# "other" (conversions, SHFL, S2R, uniform-datapath U* instructions, NOP, ...).
# ---------------------------------------------------------------------------------------------
CLASSES = ["hmma", "ldsm", "ldgsts", "mufu", "fp32", "int", "branch", "barrier", "mem", "other"]
CLASS_TITLES = {
    "hmma": "HMMA (tensor core)",
    "ldsm": "LDSM (ldmatrix)",
    "ldgsts": "LDGSTS (cp.async)",
    "mufu": "MUFU (ex2, rcp, ...)",
    "fp32": "FP32 (FMUL FADD FFMA FMNMX FSEL FSETP ...)",
    "int": "integer / address (IMAD ISETP LEA SHF IADD3 LOP3 SEL MOV ...)",
    "branch": "branch / convergence (BRA BSSY BSYNC BREAK WARPSYNC ...)",
    "barrier": "barriers (BAR DEPBAR LDGDEPBAR ...)",
    "mem": "other memory (LDG STG LDS STS LDC ...)",
    "other": "other (F2FP SHFL S2R uniform U* NOP ...)",
}
_OPCLASS = {}
for _cls, _ops in {
    "hmma": "HMMA HGMMA IMMA DMMA BMMA",
    "ldsm": "LDSM",
    "ldgsts": "LDGSTS",
    "mufu": "MUFU",
    "fp32": "FADD FMUL FFMA FMNMX FSEL FSETP FSET FCHK FRND FSWZADD FADD32I FMUL32I FFMA32I "
            "HADD2 HMUL2 HFMA2 HMNMX2 HSET2 HSETP2",
    "int": "IMAD IMUL IMAD32I IMUL32I IADD IADD3 IADD32I ISCADD ISCADD32I ISETP ICMP IMNMX "
           "IABS INEG LEA LEA32I SHF SHL SHR LOP LOP3 LOP32I SEL MOV MOV32I PRMT VIADD VIADDMNMX "
           "VIMNMX VIMNMX3 POPC FLO BREV BMSK SGXT IDP IDP4A VABSDIFF VABSDIFF4 PLOP3 P2R R2P "
           "CS2R",
    "branch": "BRA BRX JMP JMX CALL RET EXIT BSSY BSYNC BREAK WARPSYNC BMOV KILL BPT YIELD "
              "NANOSLEEP",
    "barrier": "BAR DEPBAR LDGDEPBAR MEMBAR ERRBAR ARRIVES SYNCS",
    "mem": "LDG STG LDS STS LDC LD ST ATOM ATOMS ATOMG RED REDG LDL STL STSM LDSS CCTL "
           "UBLKCP UTMALDG UTMASTG",
}.items():
    for _op in _ops.split():
        _OPCLASS[_op] = _cls


def op_class(base):
    return _OPCLASS.get(base, "other")


# ---------------------------------------------------------------------------------------------
# Parsing the cuobjdump text
# ---------------------------------------------------------------------------------------------
class Ins:
    """One SASS instruction: `/*0390*/  @!P0 BRA 0x350 ;`."""

    __slots__ = ("addr", "guard", "op", "base", "args", "text", "cls")

    def __init__(self, addr, text):
        self.addr = addr
        self.text = text
        self.guard = None
        m = re.match(r"(@!?U?P(?:[0-6]|T))\s+(.*)", text)
        if m:
            self.guard, text = m.group(1), m.group(2)
        op, _, rest = text.partition(" ")
        self.op = op
        self.base = op.split(".")[0]
        rest = rest.strip()
        self.args = [a.strip() for a in rest.split(",")] if rest else []
        self.cls = op_class(self.base)

    @property
    def never(self):
        """`@!PT`: the guard is constant false, the instruction never executes."""
        return self.guard in ("@!PT", "@!UPT")

    def target(self):
        """Branch / call target: the trailing hex operand (`BRA 0x350`, `BRA P1, 0x350`)."""
        m = re.search(r"(0x[0-9a-f]+)\s*$", self.args[-1]) if self.args else None
        return int(m.group(1), 16) if m else None


_INS_RE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;")


def parse_dump(text):
    """Everything the report needs from cuobjdump text (-sass, optionally -res-usage, -elf).

    Returns dict with
      funcs:  {(arch, name): [Ins]}                  from -sass ("Function : NAME")
      res:    {(arch, name): {"REG": .., ...}}         from -res-usage ("Function NAME:")
      brx:    {(arch, name): {addr: [targets]}}        from -elf (EIATTR_INDIRECT_BRANCH_TARGETS)
      max_threads: {(arch, name): (x, y, z)}           from -elf (EIATTR_MAX_THREADS)
    `arch = sm_XX` lines (each ELF's header) set the architecture of what follows.
    """
    funcs, res, brx, max_threads = {}, {}, {}, {}
    arch = None
    cur = None          # SASS function being read
    res_fn = None       # -res-usage function whose REG line comes next
    info_fn = None      # .nv.info.<fn> section being read
    info_attr = None
    brx_off = None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch, cur, res_fn, info_fn = m.group(1), None, None, None
            continue
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch, cur = m.group(1), None
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = (arch, m.group(1))
            funcs[cur] = []
            continue
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            res_fn, cur = m.group(1), None
            continue
        if res_fn is not None and "REG:" in line:
            res[(arch, res_fn)] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            res_fn = None
            continue
        if line.startswith("."):
            cur = None
            info_fn = line.strip()[len(".nv.info."):] if line.startswith(".nv.info.") else None
            info_attr = None
            continue
        if cur is not None:
            m = _INS_RE.match(line)
            if m:
                funcs[cur].append(Ins(int(m.group(1), 16), m.group(2)))
            continue
        if info_fn is not None:
            m = re.search(r"Attribute:\s+(\w+)", line)
            if m:
                info_attr = m.group(1)
                continue
            key = (arch, info_fn)
            if info_attr == "EIATTR_INDIRECT_BRANCH_TARGETS":
                m = re.search(r"Offset of Indirect Branch: (0x[0-9a-f]+)", line)
                if m:
                    brx_off = int(m.group(1), 16)
                m = re.search(r"Targets: (.*)", line)
                if m and brx_off is not None:
                    brx.setdefault(key, {})[brx_off] = [int(t, 16) for t in m.group(1).split()]
            elif info_attr == "EIATTR_MAX_THREADS":
                m = re.search(r"Value:\s+(0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+)", line)
                if m:
                    max_threads[key] = tuple(int(v, 16) for v in m.groups())
    return {"funcs": {k: v for k, v in funcs.items() if v}, "res": res, "brx": brx,
            "max_threads": max_threads}


def parse_ptxas_report(text):
    """ptxas -v lines (the build's OUT_DIR/ptxas-report.txt): {(arch, fn): {...}}."""
    out, key = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            key = (m.group(2), m.group(1))
            out[key] = {}
            continue
        if key is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[key].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                            spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[key]["regs"] = int(m.group(1))
    return out


def parse_params_h(path):
    """Integer constants of params.h: enumerators and #defines, expressions evaluated."""
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    # Enumerators and #defines in the order they appear (an enumerator may use an earlier
    # #define and vice versa); an enumerator without a value is the previous one plus 1.
    raw = []
    for m in re.finditer(r"enum\s+\w*\s*\{(.*?)\}|^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([^\n]+)$",
                         text, flags=re.S | re.M):
        if m.group(1) is None:
            raw.append((m.group(2), m.group(3), False))
            continue
        for item in m.group(1).split(","):
            mi = re.match(r"\s*([A-Za-z_]\w*)\s*(?:=\s*(.+?))?\s*$", item, flags=re.S)
            if mi:
                raw.append((mi.group(1), mi.group(2), True))
    consts = {}
    last = -1
    for name, expr, in_enum in raw:
        try:
            val = last + 1 if expr is None else _eval_int(expr, consts)
        except ValueError:
            continue
        consts[name] = val
        if in_enum:
            last = val
    return consts


def _eval_int(expr, names):
    """Integer C constant expression (+ - * / % << >> | & parentheses, known names)."""
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ValueError(expr)

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and n.id in names:
            return names[n.id]
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            return -ev(n.operand) if isinstance(n.op, ast.USub) else ev(n.operand)
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: int(a / b), ast.FloorDiv: lambda: a // b,
                   ast.Mod: lambda: a % b, ast.LShift: lambda: a << b,
                   ast.RShift: lambda: a >> b, ast.BitOr: lambda: a | b,
                   ast.BitAnd: lambda: a & b}
            if type(n.op) in ops:
                return ops[type(n.op)]()
        raise ValueError(expr)

    return ev(tree)


# ---------------------------------------------------------------------------------------------
# Control flow
# ---------------------------------------------------------------------------------------------
_PRED = re.compile(r"^(U?P[0-6])$")
_REG = re.compile(r"^(U?R)(\d+)")


def pred_writes(ins):
    """Predicates an instruction may write. Destinations come first in SASS: the leading run
    of predicate operands (`ISETP P0, PT, ...`, `PLOP3 P0, PT, ...`) and a predicate right
    after a register destination (carry out: `IADD3 R1, P0, ...`, `LEA R1, P2, ...`).
    Over-approximating is safe: it only forgets what an earlier branch established."""
    if ins.cls == "branch" or ins.base == "P2R":
        return set()
    out = set()
    for i, a in enumerate(ins.args):
        tok = a.split()[0] if a else ""
        if tok == "PR":                        # R2P PR, R1, mask: any predicate
            return {"*"}
        if _PRED.match(tok):
            out.add(tok)
        elif tok in ("PT", "UPT"):
            continue
        elif i > 0:
            break
    return out


def reg_writes(ins):
    """Registers an instruction writes (its first operand), with the width of wide results."""
    if not ins.args or ins.cls in ("branch", "barrier") or ins.base in ("STG", "STS", "ST", "STL", "RED", "REDG", "LDGSTS"):
        return set()
    dest = ins.args[0]
    if (ins.base in ("SHFL", "LOP3") and _PRED.match(dest)) or dest == "PT":
        dest = ins.args[1] if len(ins.args) > 1 else ""   # SHFL.BFLY PT, R1, ...; LOP3.LUT P0, R1, ...
    m = _REG.match(dest)
    if not m or dest in ("RZ", "URZ"):
        return set()
    kind, n = m.group(1), int(m.group(2))
    width = 1
    mods = ins.op.split(".")
    if ins.base in ("HMMA", "IMMA", "DMMA"):
        width = 4
    elif ins.base == "LDSM":
        width = int(mods[-1]) if mods[-1].isdigit() else 1
    elif "128" in mods:
        width = 4
    elif "64" in mods or "WIDE" in mods or ins.base == "CS2R":
        width = 2
    return {f"{kind}{n + k}" for k in range(width)}


_READ_RE = re.compile(r"(?<![A-Z_])(U?R)(\d+)(\.64|\.128)?")


def reg_reads(ins):
    """Registers an instruction reads: every register operand but a destination
    (`[R120.64]` reads R120 and R121)."""
    args = ins.args
    if args and reg_writes(ins):
        args = args[1:]
    out = set()
    for a in args:
        for kind, n, wide in _READ_RE.findall(a):
            n = int(n)
            width = 2 if wide == ".64" else 4 if wide == ".128" else 1
            out.update(f"{kind}{n + k}" for k in range(width))
    return out


_CONST_OPERAND = re.compile(r"^(-?0x[0-9a-f]+|-?\d+(\.\d+)?|RZ|URZ|-?INF)$")


def const_move(ins):
    """Registers an unguarded instruction sets to a constant (`IMAD.MOV.U32 R1, RZ, RZ, -0x1`,
    `MOV R1, 0x0`, `CS2R R2, SRZ`, `HFMA2.MMA R1, -RZ, RZ, 0, 0`), else empty."""
    if ins.guard is not None or not ins.args:
        return set()
    imm = _CONST_OPERAND
    a = ins.args
    ok = ((ins.base in ("MOV", "MOV32I", "UMOV") and len(a) == 2 and imm.match(a[1]))
          or (ins.op.startswith("IMAD.MOV") and len(a) == 4 and a[1] == "RZ" and a[2] == "RZ"
              and imm.match(a[3]))
          or (ins.base == "CS2R" and len(a) == 2 and a[1] == "SRZ")
          or (ins.op == "HFMA2.MMA" and a[1:3] == ["-RZ", "RZ"]))
    return reg_writes(ins) if ok else set()


_REG_OPERAND = re.compile(r"^U?R\d+$")


def reg_copy(ins):
    """Registers an unguarded plain copy sets (`IMAD.MOV.U32 R1, RZ, RZ, R2`, `MOV R1, R2`)."""
    if ins.guard is not None or not ins.args:
        return set()
    a = ins.args
    ok = ((ins.base in ("MOV", "UMOV") and len(a) == 2 and _REG_OPERAND.match(a[1]))
          or (ins.op.startswith("IMAD.MOV") and len(a) == 4 and a[1] == "RZ" and a[2] == "RZ"
              and _REG_OPERAND.match(a[3])))
    return reg_writes(ins) if ok else set()


def writes_neg_inf(ins):
    """Sets a score to -inf: the effect of masking (`FSEL R1, R1, -INF, P0`)."""
    return any(a in ("-INF", "0xff800000", "-0x800000") for a in ins.args[1:])


class Edge:
    """A CFG edge with the predicate facts that hold when it is taken.

    need: [(pred, value)] that all hold on this edge (a taken `@!P0 BRA` gives P0=False);
    not_all: [(pred, value)] that do not all hold (the fall-through of `@P0 BRA P1, X`)."""

    __slots__ = ("dst", "need", "not_all")

    def __init__(self, dst, need=(), not_all=()):
        self.dst, self.need, self.not_all = dst, list(need), list(not_all)


def _guard_fact(g):
    if g is None or g in ("@PT", "@UPT"):
        return None
    return (g.lstrip("@!"), not g.startswith("@!"))


class Cfg:
    """Basic blocks of one function, their successor edges (with predicate facts), natural
    loops, per-block counts; post-dominators and liveness on request."""

    def __init__(self, ins, brx_targets=None):
        self.ins = ins
        self.unresolved = []          # addresses of indirect branches without known targets
        brx_targets = brx_targets or {}
        index = {x.addr: i for i, x in enumerate(ins)}
        n = len(ins)
        # CALL.REL.NOINC is a jump that pushes nothing: to a subroutine placed after the last
        # EXIT (which returns with RET.REL.NODEC through a register set before the call) it is
        # a call and execution continues after it; anywhere else it is a branch (sm_80 leaves
        # loops with `@P0 CALL.REL.NOINC <after the back edge>`).
        exits = [x.addr for x in ins if x.base == "EXIT"]
        last_exit = max(exits) if exits else ins[-1].addr
        self.subroutine_calls = set()
        for i, x in enumerate(ins):
            if x.base == "CALL" and (x.target() or 0) > last_exit:
                self.subroutine_calls.add(i)
        leaders = {0}
        for i, x in enumerate(ins):
            if x.cls != "branch" or x.base in ("BSSY", "BSYNC", "BREAK", "WARPSYNC", "BMOV", "NANOSLEEP", "YIELD"):
                continue
            t = x.target()
            if x.base in ("BRA", "JMP", "CALL") and t in index:
                leaders.add(index[t])
            for t in brx_targets.get(x.addr, []) if x.base in ("BRX", "JMX") else []:
                if t in index:
                    leaders.add(index[t])
            if i not in self.subroutine_calls:
                leaders.add(i + 1)
        self.starts = sorted(l for l in leaders if l < n)
        self.blocks = []              # [ (first index, last index) ]
        self.block_of = [0] * n
        for k, s in enumerate(self.starts):
            e = self.starts[k + 1] if k + 1 < len(self.starts) else n
            self.blocks.append((s, e - 1))
            for i in range(s, e):
                self.block_of[i] = k
        self.succ = [[] for _ in self.blocks]
        for k, (s, e) in enumerate(self.blocks):
            last = ins[e]
            ft = self.block_of[e + 1] if e + 1 < n else None
            fact = _guard_fact(last.guard)
            edges = []
            if last.never:
                edges = [Edge(ft)] if ft is not None else []
            elif last.base in ("BRA", "JMP") or (last.base == "CALL" and e not in self.subroutine_calls):
                t = last.target()
                conds = [fact] if fact else []
                if len(last.args) > 1:                       # BRA P1, target: taken iff P1
                    p = last.args[0]
                    if p not in ("PT", "UPT"):
                        conds.append((p.lstrip("!"), not p.startswith("!")))
                if t in index:
                    edges.append(Edge(self.block_of[index[t]], need=conds))
                if conds and ft is not None:
                    if len(conds) == 1:
                        edges.append(Edge(ft, need=[(conds[0][0], not conds[0][1])]))
                    else:
                        edges.append(Edge(ft, not_all=conds))
            elif last.base in ("BRX", "JMX"):
                ts = brx_targets.get(last.addr)
                if ts is None:
                    self.unresolved.append(last.addr)
                for t in ts or []:
                    if t in index:
                        edges.append(Edge(self.block_of[index[t]], need=[fact] if fact else []))
                if fact and ft is not None:
                    edges.append(Edge(ft, need=[(fact[0], not fact[1])]))
            elif last.base in ("EXIT", "RET", "KILL", "BPT"):
                if fact and ft is not None:
                    edges.append(Edge(ft, need=[(fact[0], not fact[1])]))
            elif ft is not None:
                edges.append(Edge(ft))
            # Two edges to one block (a branch to the next instruction): one, unconditional.
            if len({e.dst for e in edges}) < len(edges):
                edges = [Edge(d) for d in sorted({e.dst for e in edges})]
            self.succ[k] = edges
        self.pred = [[] for _ in self.blocks]
        for k, es in enumerate(self.succ):
            for e in es:
                self.pred[e.dst].append(k)
        # Per-block summaries: counts, registers written, predicates written (before / by the
        # last instruction), all precomputed for the path search.
        self.writes = []
        self.kills = []
        for s_, e_ in self.blocks:
            w = set()
            for x in ins[s_:e_ + 1]:
                w |= reg_writes(x)
            self.writes.append(w)
            pre, last = set(), pred_writes(ins[e_])
            for x in ins[s_:e_]:
                pre |= pred_writes(x)
            self.kills.append((frozenset(pre), frozenset(last)))
        # A subroutine call executes the subroutine: its cheapest way to a RET.
        self.subroutine = {}
        self.call_addrs = {ins[i].addr for i in self.subroutine_calls}
        for i in sorted(self.subroutine_calls):
            t = ins[i].target()
            if t in index and t not in self.subroutine:
                self.subroutine[t] = self._cheapest_return(self.block_of[index[t]])
        self.count = []
        for k in range(len(self.blocks)):
            c = {"n": 0, "never": 0, "ldg": 0}
            for cl in CLASSES:
                c[cl] = 0
            for x in self.exec_ins(k):
                if x.never:
                    c["never"] += 1
                    continue
                c["n"] += 1
                c[x.cls] += 1
                if x.base in ("LDG", "LD"):
                    c["ldg"] += 1
            self.count.append(c)
        # Instructions of a block guarded by a predicate that an outgoing edge contradicts
        # (`@P0 LDGSTS ...; @P0 BRA X`: on the fall-through P0 is false, so the guarded copies
        # do not run there): per (block, successor), their counts, subtracted by the path
        # search and the tallies. The predicate must not be rewritten after the instruction.
        self.dead = {}
        for k, (s_, e_) in enumerate(self.blocks):
            for e in self.succ[k]:
                if not e.need:
                    continue
                facts = dict(e.need)
                dead = []
                for i in range(s_, e_):                   # the branch itself still issues
                    x = ins[i]
                    f = _guard_fact(x.guard)
                    if x.never or f is None or facts.get(f[0], f[1]) == f[1]:
                        continue
                    if any(f[0] in pred_writes(y) for y in ins[i:e_ + 1]):
                        continue
                    dead.append(x)
                if dead:
                    self.dead[(k, e.dst)] = dead
        # Loops: an edge to a block at or above its source is a back edge; a head's natural
        # loop is the head plus every block that reaches one of its back-edge sources.
        self.latches = {}
        for u, es in enumerate(self.succ):
            for e in es:
                if e.dst <= u:
                    self.latches.setdefault(e.dst, set()).add(u)
        self.loops = {}
        for h, us in self.latches.items():
            body, stack = {h}, list(us)
            while stack:
                x = stack.pop()
                if x not in body:
                    body.add(x)
                    stack.extend(self.pred[x])
            self.loops[h] = body

    def _cheapest_return(self, entry):
        """The instructions of the fewest-instruction way from block `entry` to a RET
        (Dijkstra over the blocks; calls inside count as one instruction)."""
        dist, prev, heap = {entry: 0}, {}, [(0, entry)]
        while heap:
            d, b = heapq.heappop(heap)
            if d > dist.get(b, 1 << 60):
                continue
            ins = self.block_ins(b)
            d2 = d + sum(1 for x in ins if not x.never)
            if ins[-1].base == "RET" and ins[-1].guard is None:
                path = [b]
                while path[-1] in prev:
                    path.append(prev[path[-1]])
                return [x for k in reversed(path) for x in self.block_ins(k)]
            for e in self.succ[b]:
                if d2 < dist.get(e.dst, 1 << 60):
                    dist[e.dst], prev[e.dst] = d2, b
                    heapq.heappush(heap, (d2, e.dst))
        return []

    def exec_ins(self, k):
        """Block k's instructions as executed: a subroutine call followed by the subroutine's
        cheapest way to its RET."""
        out = []
        for x in self.block_ins(k):
            out.append(x)
            if x.base == "CALL" and x.target() in self.subroutine and x.addr in self.call_addrs:
                out.extend(self.subroutine[x.target()])
        return out

    def addr(self, k):
        return self.ins[self.blocks[k][0]].addr

    def block_ins(self, k):
        s, e = self.blocks[k]
        return self.ins[s:e + 1]

    def forward(self, k, body):
        """Edges of k that stay in `body` and go forward (back edges are never followed)."""
        return [e for e in self.succ[k] if e.dst in body and e.dst > k]

    def live_at(self, start, reg, body, limit=4000):
        """Whether `reg` is read, on some forward path from block `start` inside `body`, before
        an unguarded instruction writes it."""
        seen, stack, steps = set(), [start], 0
        while stack:
            b = stack.pop()
            if b in seen or b not in body:
                continue
            seen.add(b)
            dead = False
            for x in self.block_ins(b):
                steps += 1
                if reg in reg_reads(x):
                    return True
                if x.guard is None and reg in reg_writes(x):
                    dead = True
                    break
            if steps > limit:
                return True
            if not dead:
                stack.extend(f.dst for f in self.forward(b, body))
        return False

    def constants_in(self, body):
        """Per block of `body`, the registers that hold, on every forward path from the head
        of `body` to the block's entry, the value one const_move set (the same instruction
        on every path), unchanged since. An inner loop's head keeps none its loop writes
        (its back edge may bring them changed)."""
        head = min(body)
        inner = {h: b for h, b in self.loops.items() if h in body and h != head}
        cin, cout = {}, {}
        for k in sorted(body):
            preds = [p for p in self.pred[k] if p in body and p < k]
            if k == head or not preds:
                cur = {}
            else:
                cur = dict(cout[preds[0]])
                for p in preds[1:]:
                    o = cout[p]
                    cur = {r: a for r, a in cur.items() if o.get(r) == a}
            if k in inner:
                w = set().union(*(self.writes[b] for b in inner[k]))
                cur = {r: a for r, a in cur.items() if r not in w}
            cin[k] = set(cur)
            for x in self.block_ins(k):
                for r in reg_writes(x):
                    cur.pop(r, None)
                for r in const_move(x):
                    cur[r] = x.addr
            cout[k] = cur
        return cin

    def postdominators(self, body):
        """Immediate post-dominators in the forward DAG of `body` (None: the virtual exit)."""
        ipdom = {}
        for k in sorted(body, reverse=True):
            cur = "unset"
            for e in self.succ[k]:
                s = e.dst if (e.dst in body and e.dst > k) else None
                cur = s if cur == "unset" else self._meet(cur, s, ipdom)
            ipdom[k] = None if cur == "unset" else cur
        return ipdom

    @staticmethod
    def _meet(a, b, ipdom):
        while a != b:
            if a is None or b is None:
                return None
            if a < b:
                a = ipdom[a]
            else:
                b = ipdom[b]
        return a


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
def shortcut_edges(cfg, body, within=None):
    """Edges that skip the computation of a value set to a default just before:
    `key = -1; if (exists) key = ...;  use(key)` -- taking the skip leaves the default in
    place (a key that does not exist, a zero-filled row, a mask entry never evaluated). A
    dense steady-state iteration computes every such value, so the path search avoids them.

    For a block k ending in a two-way branch, the sides are the blocks between each successor
    and k's immediate post-dominator (the join). The defaults at k are registers set to a
    constant (const_move) in k or in the chain of blocks above it that each have a single
    predecessor (its extended basic block: the value reaches k unchanged unless written on the
    chain, which is checked). The edge into side A is a shortcut when a default is written on
    side B, not on side A, and read after the join before being written (the default is
    used). An edge that leaves an inner loop of `body` is never a shortcut."""
    ipdom = cfg.postdominators(body)
    head = min(body)
    inner = [b for h, b in cfg.loops.items() if h in body and h != head]
    consts_in = cfg.constants_in(body) if within is not None else None
    out = set()
    for k in body if within is None else body & within:
        es = cfg.forward(k, body)
        if len(es) != 2:
            continue
        # Leaving an inner loop (a search that found its answer, `break`) is how that loop
        # ends, not a skipped computation.
        es_in = [e for e in es if not any(k in b and e.dst not in b for b in inner)]
        if len(es_in) != 2:
            continue
        # With `within`: the registers the branch tests, those read by the last write of its
        # predicate (a copy of one is a default too).
        tested, fact = set(), _guard_fact(cfg.block_ins(k)[-1].guard)
        for x in reversed(cfg.block_ins(k)[:-1]) if within is not None else ():
            if fact and fact[0] in pred_writes(x):
                tested = reg_reads(x)
                break
        defaults, killed, d = set(), set(), k
        while True:
            ins = cfg.block_ins(d)[:-1] if d == k else cfg.block_ins(d)
            for x in reversed(ins):
                copied = reg_copy(x) if reg_reads(x) & tested else set()
                defaults |= (const_move(x) | copied) - killed
                killed |= reg_writes(x)
            preds = [p for p in cfg.pred[d] if p in body and p < d]
            if len(preds) != 1 or len(cfg.pred[d]) != 1:
                break
            d = preds[0]
        if consts_in is not None:
            defaults |= consts_in[d] - killed
        if not defaults:
            continue
        join = ipdom[k]
        sides = []
        for e in es:
            seen, stack, writes = set(), [e.dst], set()
            while stack:
                b = stack.pop()
                if b in seen or b == join or b not in body:
                    continue
                seen.add(b)
                writes |= cfg.writes[b]
                stack.extend(f.dst for f in cfg.forward(b, body))
            sides.append(writes & defaults)
        for i, e in enumerate(es):
            skipped = sides[1 - i] - sides[i]
            if skipped and (join is None or any(cfg.live_at(join, r, body) for r in skipped)):
                out.add((k, e.dst))
    return out


def _apply_preds(state, kills):
    """Forgets the facts on predicates in `kills` ("*": every non-uniform predicate)."""
    if not kills:
        return state
    if "*" in kills:
        return {q: v for q, v in state.items() if q.startswith("U") and q not in kills}
    return {q: v for q, v in state.items() if q not in kills}


def _take(state, edge):
    """State after following `edge`, or None when it contradicts what is known."""
    st = dict(state)
    for p, v in edge.need:
        if st.get(p, v) != v:
            return None
        st[p] = v
    if edge.not_all:
        if all(st.get(p) == v for p, v in edge.not_all):
            return None
        unknown = [(p, v) for p, v in edge.not_all if p not in st]
        if len(unknown) == 1 and all(st.get(p) == v for p, v in edge.not_all if p in st):
            st[unknown[0][0]] = not unknown[0][1]
    return st


MAX_STATES = 4096


def best_path(cfg, body, head, ends, shortcuts, through=None):
    """The path from `head` to a latch in `ends` (its back edge to `head` taken) that
    maximises, in order: HMMA, LDGSTS; then minimises shortcut edges, global loads (LDG) and
    instructions. Back edges of inner loops are not followed (each inner loop body is walked
    once). A branch on a predicate that has not been rewritten since an earlier branch on it
    goes the same way (one thread's run cannot take both). With `through`, only paths that
    visit that block count. Returns (path blocks, score) or (None, None)."""
    def gain(k):
        c = cfg.count[k]
        return (c["hmma"], c["ldgsts"], 0, -c["ldg"], -c["n"])

    def add(a, b):
        return tuple(x + y for x, y in zip(a, b))

    # best[k] = {state key: (score, back pointer)}; state = predicate facts + `through` seen.
    best = {head: {(frozenset(), head == through): (gain(head), None)}}
    finals = []
    for k in sorted(body):
        if k not in best:
            continue
        if len(best[k]) > MAX_STATES:                  # keep the search bounded: best states
            best[k] = dict(sorted(best[k].items(), key=lambda kv: kv[1][0])[-MAX_STATES:])
        for key, (score, _) in best[k].items():
            facts, seen = key
            state = _apply_preds(dict(facts), cfg.kills[k][0])
            for e in cfg.succ[k]:
                if e.dst not in body:
                    continue
                st = _take(state, e)
                if st is None:
                    continue
                st = _apply_preds(st, cfg.kills[k][1])
                if e.dst == head:
                    if k in ends and (through is None or seen):
                        finals.append((score, k, key))
                    continue
                if e.dst <= k:
                    continue                                 # an inner loop's back edge
                sc = add(score, gain(e.dst))
                for x in cfg.dead.get((k, e.dst), ()):      # guarded off on this edge
                    sc = add(sc, (-(x.base == "HMMA"), -(x.base == "LDGSTS"), 0,
                                  x.base in ("LDG", "LD"), 1))
                if (k, e.dst) in shortcuts:
                    sc = sc[:2] + (sc[2] - 1,) + sc[3:]
                nkey = (frozenset(st.items()), seen or e.dst == through)
                slot = best.setdefault(e.dst, {})
                if nkey not in slot or sc > slot[nkey][0]:
                    slot[nkey] = (sc, (k, key))
    if not finals:
        return None, None
    score, k, key = max(finals, key=lambda f: f[0])
    path = []
    while True:
        path.append(k)
        bp = best[k][key][1]
        if bp is None:
            break
        k, key = bp
    path.reverse()
    return path, score


def tally(cfg, blocks):
    """Instruction counts of a list of blocks (a path), by class, plus shared-memory bytes."""
    t = {cl: 0 for cl in CLASSES}
    t.update(n=0, never=0, smem_bytes=0, ops={})
    for i, k in enumerate(blocks):
        nxt = blocks[i + 1] if i + 1 < len(blocks) else blocks[0]
        dead = {id(x) for x in cfg.dead.get((k, nxt), ())}
        for x in cfg.exec_ins(k):
            if id(x) in dead:
                continue                                  # guarded off on the edge taken
            if x.never:
                t["never"] += 1
                continue
            t["n"] += 1
            t[x.cls] += 1
            t["ops"][x.base] = t["ops"].get(x.base, 0) + 1
            t["smem_bytes"] += smem_read_bytes(x)
    return t


def tally_add(t, u, times):
    """t += times * u (tallies)."""
    for key, v in u.items():
        if key == "ops":
            for op, c in v.items():
                t["ops"][op] = t["ops"].get(op, 0) + times * c
        else:
            t[key] += times * v


def smem_read_bytes(x):
    """Bytes a warp reads from shared memory: ldmatrix .4/.2/.1 = 4/2/1 8x8 16-bit matrices
    (128 B each: 32 lanes x 16 B for .4); LDS = its width x 32 lanes."""
    mods = x.op.split(".")
    if x.base == "LDSM":
        return 128 * (int(mods[-1]) if mods[-1].isdigit() else 1)
    if x.base == "LDS":
        width = 4
        for m in mods[1:]:
            if m in ("U8", "S8"):
                width = 1
            elif m in ("U16", "S16"):
                width = 2
            elif m in ("64", "128"):
                width = int(m) // 8
        return 32 * width
    return 0


_IMM = re.compile(r"^-?0x[0-9a-f]+$|^-?\d+$")


def _counted_trip(cfg, head, body, x):
    """The trip count of `for (i = c; i < N; i += s)` whose exit compare is `x` (`ISETP ...
    Rcounter, N` with an immediate N), or None when the loop does not have that shape."""
    if x.base not in ("ISETP", "UISETP") or len(x.args) < 4 or not _IMM.match(x.args[3]):
        return None
    reg, lim = x.args[2].split(".")[0], int(x.args[3], 0)
    step = None
    for bb in body:
        for y in cfg.block_ins(bb):
            if (y.base in ("VIADD", "IADD3", "UIADD3") and len(y.args) >= 3
                    and y.args[0] == reg and y.args[1].split(".")[0] == reg
                    and _IMM.match(y.args[2])):
                step = int(y.args[2], 0)
    init = 0
    for y in reversed(cfg.ins[:cfg.blocks[head][0]]):
        if reg in reg_writes(y):
            if reg in const_move(y) and _IMM.match(y.args[-1]):
                init = int(y.args[-1], 0)
            break
    if step and step > 0:
        trip = (lim - init + step - 1) // step
        if 1 < trip <= 4096:
            return trip
    return None


def loop_trip(cfg, head, body):
    """Trip count of a counted loop `for (i = c; i < N; i += s)`: the branch that continues
    or leaves the loop at its bottom -- the back edge itself (`@!P0 BRA head`), or on sm_80
    an exit just above an unconditional back edge (`@P0 CALL.REL.NOINC out; BRA head`) --
    tests a predicate set by comparing a counter with an immediate N (`ISETP.GE.U32.AND P0,
    PT, R126, 0x20, PT`); the counter is stepped by an immediate s in the loop body
    (`VIADD R126, R126, 0x1`, compared after the step) and starts at a constant c written
    before the loop (`CS2R R126, SRZ`; 0 when none is found). Trip = (N - c) / s rounded up;
    None when the loop does not have that shape. The compare is looked for in the latch and
    the blocks above it that flow only into it; a uniform compare moved into the predicate
    (`PLOP3.LUT P0, PT, PT, PT, UP2, 0x80, 0x0`) is followed; failing both, a rotated loop's
    compare is the last write of the predicate above the latch outside nested loops (the
    counter tested at the top of the body, the branch at its bottom)."""
    nested = set()
    for g, lb in cfg.loops.items():
        if g != head and g in body:
            nested |= lb
    for latch in sorted(cfg.latches.get(head, ())):
        # The latch and the blocks above it that flow only into it.
        chain, b = [latch], latch
        while len(chain) < 4:
            preds = [p for p in cfg.pred[b] if p in body]
            if len(preds) != 1 or preds[0] >= b:
                break
            b = preds[0]
            chain.append(b)
        fact_latch = None
        for blk in chain:
            ins = cfg.block_ins(blk)
            br = ins[-1]
            fact = _guard_fact(br.guard)
            if br.cls != "branch" or not fact:
                continue
            fact_latch = fact_latch or (blk, fact[0])
            want = fact[0]
            for x in reversed(ins[:-1]):
                if want not in pred_writes(x):
                    continue
                if (x.base == "PLOP3" and len(x.args) >= 5 and x.args[1:4] == ["PT", "PT", "PT"]
                        and x.args[4].startswith("UP") and x.args[5:6] == ["0x80"]):
                    want = x.args[4]             # P0 = UP2: a uniform compare moved over
                    continue
                trip = _counted_trip(cfg, head, body, x)
                if trip:
                    return trip
                break
            else:
                continue
            break
        if fact_latch:
            blk, want = fact_latch
            writers = [x for bb in sorted(body) if bb not in nested and bb <= blk
                       for x in cfg.block_ins(bb) if want in pred_writes(x)]
            if writers and writers[-1] not in cfg.block_ins(blk):
                trip = _counted_trip(cfg, head, body, writers[-1])
                if trip:
                    return trip
    return None


# ---------------------------------------------------------------------------------------------
# Per-kernel analysis
# ---------------------------------------------------------------------------------------------
class AnalysisError(Exception):
    pass


def loop_info(cfg, h, cache):
    """One inner loop: its iteration (the best path from its head to its back edge, by the
    same rule as the mainloop's, shortcuts avoided), its cheapest iteration (the earliest way
    round, shortcuts allowed), its trip count when the SASS shows it, the loops nested in it."""
    if h not in cache:
        lb = cfg.loops[h]
        it, _ = best_path(cfg, lb, h, cfg.latches[h], shortcut_edges(cfg, lb))
        cheap, _ = best_path(cfg, lb, h, cfg.latches[h], set())
        cache[h] = {
            "head": cfg.addr(h),
            "tally": tally(cfg, it) if it else None,
            "cheapest": tally(cfg, cheap)["n"] if cheap else None,
            "trip": loop_trip(cfg, h, lb),
            "nested": sorted(cfg.addr(g) for g in cfg.loops if g in lb and g != h),
        }
    return cache[h]


def expand_loops(cfg, path, mainhead, default_trip, cache):
    """Counts of one mainloop iteration along `path` with its inner loops run: the path walks
    each inner loop once; a loop it enters directly (not nested in another loop of the path)
    runs trip - 1 more iterations of its own iteration path. Loops nested in those run once
    per pass: their trip counts are data (the components of a mask program, binary searches).
    A loop whose trip count the SASS does not show runs `default_trip` times (None: once).
    Returns (tally, cheapest total instructions, [loop summaries])."""
    t = tally(cfg, path)
    cheapest = t["n"]
    onp = set(path)
    heads = [h for h in sorted(cfg.loops) if h in onp and h != mainhead]
    loops = []
    for h in heads:
        if any(h in cfg.loops[g] and g != h for g in heads):
            continue                                   # nested: one pass per outer iteration
        info = loop_info(cfg, h, cache)
        trip, source = info["trip"], "sass"
        if trip is None:
            trip, source = default_trip, ("--mask-trip" if default_trip else "unknown, run once")
        if info["tally"] and trip:
            tally_add(t, info["tally"], trip - 1)
            cheapest += (trip - 1) * (info["cheapest"] or info["tally"]["n"])
        loops.append({"head": hex(info["head"]),
                      "per_iteration": info["tally"]["n"] if info["tally"] else None,
                      "cheapest_iteration": info["cheapest"], "trip": trip, "trip_source": source,
                      "nested": [hex(a) for a in info["nested"]]})
    return t, cheapest, loops


def analyse_function(ins, brx_targets, mask_trip, all_detours=False):
    """The mainloop of one kernel, its dense steady-state path and its detours (see docs)."""
    cfg = Cfg(ins, brx_targets)
    if not any(x.cls == "hmma" and not x.never for x in ins):
        raise AnalysisError("no HMMA in the function")
    # The mainloop: the loop whose back edge jumps above its first HMMA (its head) with the
    # most HMMA in its body. Loops that also issue cp.async (LDGSTS) come first: the mainloop
    # streams K/V tiles, a rolled loop over k-steps inside it does not. Among equals the
    # innermost (a persistent outer loop would hold the same HMMAs and loads).
    cands = []
    for h, body in cfg.loops.items():
        n = sum(cfg.count[k]["hmma"] for k in body)
        if n:
            loads = any(cfg.count[k]["ldgsts"] for k in body)
            cands.append((loads, n, -len(body), h))
    if not cands:
        raise AnalysisError("no loop contains an HMMA")
    head = max(cands)[-1]
    body = cfg.loops[head]
    ends = cfg.latches[head]
    shortcuts = shortcut_edges(cfg, body)
    cache = {}

    dense, _ = best_path(cfg, body, head, ends, shortcuts)
    if dense is None:
        raise AnalysisError("no path from the mainloop head to its back edge")
    d, _, dense_loops = expand_loops(cfg, dense, head, None, cache)
    on_dense = set(dense)
    # The loader: dense-path instructions up to the last LDGSTS, less the math scheduled among
    # them (meaningful while the loads are issued together, as in the baseline kernel).
    loader = 0
    last_ld = max((i for i, k in enumerate(dense) if cfg.count[k]["ldgsts"]), default=None)
    if last_ld is not None:
        for k in dense[:last_ld + 1]:
            ks = cfg.block_ins(k)
            if k == dense[last_ld]:
                ks = ks[:max(i for i, x in enumerate(ks) if x.base == "LDGSTS") + 1]
            loader += sum(1 for x in ks if not x.never and x.cls not in ("hmma", "ldsm", "mufu", "fp32"))

    # Detours: regions the dense path skips, entered from one of its conditional branches;
    # each is costed as the best whole iteration through its entry block.
    detours = []
    for k in dense:
        for e in cfg.forward(k, body):
            if e.dst in on_dense:
                continue
            region, stack = set(), [e.dst]
            while stack:
                b = stack.pop()
                if b in region or b in on_dense or b not in body:
                    continue
                region.add(b)
                stack.extend(f.dst for f in cfg.forward(b, body))
            region_ins = [x for b in region for x in cfg.block_ins(b)]
            det = {"entry": e.dst, "region": region,
                   "masks": any(writes_neg_inf(x) for x in region_ins),
                   "tanh": any(x.op == "MUFU.TANH" for x in region_ins)}
            detours.append(det)
            if not (det["masks"] or all_detours):
                continue                          # only masking detours matter for the table
            path, _ = best_path(cfg, body, head, ends, shortcuts, through=e.dst)
            if path is not None:
                t, cheapest, loops = expand_loops(cfg, path, head, mask_trip, cache)
                det.update(path=path, path_once=tally(cfg, path)["n"], total=t["n"],
                           total_min=cheapest, loops=loops)
    # The partial tile: of the detours that write -inf into the scores (masking), the
    # costliest whole iteration.
    partial = max((x for x in detours if x["masks"] and "total" in x), key=lambda x: x["total"],
                  default=None)
    # Its two mask paths, when the detour dispatches between them: the interval form (one or
    # two intervals) and the general interpreter, each costed as the best whole iteration
    # through its own side of the dispatch.
    mask = None
    # Masking detours first (the select form), then those holding a loop (the bits form).
    def order(x):
        return (not x["masks"], x is not partial)
    for det in sorted((x for x in detours if x["masks"] or any(h in x["region"] for h in cfg.loops)),
                      key=order):
        mask = split_mask(cfg, body, det["region"])
        if mask is not None:
            mask["detour"] = det["entry"]
            mshort = shortcuts | shortcut_edges(cfg, body, within=det["region"])
            # The bits form selects -inf in a detour of its own after the scores, entered on a
            # flag the compiler may keep in a register bit (then no predicate ties the two):
            # each path that does not take it is charged that detour's extra, the select of
            # every entry.
            select = None
            if mask["form"] == "bits":
                sels = [x for x in detours if x["masks"] and "total" in x]
                if sels:
                    select = max(sels, key=lambda x: sum(
                        writes_neg_inf(y) for b in x["region"] for y in cfg.block_ins(b)))
                    mask["select"] = {"entry": select["entry"],
                                      "extra": select["total"] - d["n"]}
            for m in mask["interval"] + [t for t in [mask["interpreted"], mask["table"]] if t]:
                path, _ = best_path(cfg, body, head, ends, mshort, through=m["entry"])
                if path is not None:
                    trip = m["trip"] if m.get("gathered") else mask_trip
                    t, cheapest, loops = expand_loops(cfg, path, head, trip, cache)
                    # Charged unless the path already takes the select (a predicate kept).
                    charge = select is not None and select["entry"] not in path
                    add = mask["select"]["extra"] if charge else 0
                    if charge:
                        path = path + sorted(b for b in select["path"] if b not in set(path))
                    m.update(path=path, path_once=tally(cfg, path)["n"], total=t["n"] + add,
                             total_min=cheapest + add, loops=loops)
            break
    return cfg, head, dense, d, dense_loops, loader, detours, partial, shortcuts, mask


def _side(cfg, body, within, start, join):
    """The blocks of `within` reachable from `start` by forward edges before `join`."""
    seen, stack = set(), [start]
    while stack:
        b = stack.pop()
        if b in seen or b == join or b not in within:
            continue
        seen.add(b)
        stack.extend(f.dst for f in cfg.forward(b, body))
    return seen


def _side_facts(cfg, side, loop_heads):
    """(-inf writes, holds a loop, ISETP count, instruction count) of a set of blocks; @!PT
    instructions aside."""
    neg = cmp = n = 0
    for b in side:
        for x in cfg.block_ins(b):
            if x.never:
                continue
            n += 1
            neg += writes_neg_inf(x)
            cmp += x.base == "ISETP"
    return neg, any(b in loop_heads for b in side), cmp, n


# An unrolled mask either compares every entry it selects (the compare form: as many ISETP as
# -inf selects) or selects -inf into at least this many entries of a thread's S fragments (the
# bit-set form; one m16 row pair of 8 n8 tiles holds 16).
_MIN_UNROLLED_SELECTS = 16


def split_mask(cfg, body, region):
    """The paths of a masking detour (TokenMask, see docs), in one of two forms.

    The **select form** (older kernels, the fixtures): the mask writes -inf inside the detour.
    The dispatch `if (intervals > 0 && tile >= 0)` is the first block of the region (by
    address) ending in a two-way branch whose sides (the blocks between each successor and the
    branch's immediate post-dominator, inside the region) both write -inf, one holding a loop
    -- the interpreter's rolled loop over the fragment entries -- and the other none, which
    compares every entry it selects (or selects at least _MIN_UNROLLED_SELECTS). In that
    loop-free side the split `if (intervals == 1)` is the first two-way branch whose sides both
    write -inf and hold no loop; two intervals make the side with more ISETP per -inf (two
    compares per element and interval).

    The **bits form** (TokenMask::bits, today's kernels): the detour computes the tile's mask
    bits before the scores exist and writes no -inf (one select after the scores does). The
    dispatch is the first branch (by address) whose one side holds every loop of the region
    (the table-driven kinds and the interpreter) and whose other side holds none (both
    interval paths); in it the split is the first branch with two loop-free sides of unequal
    size (at least 8 instructions each), two intervals the larger.

    In both forms the looped side's outermost loops are the interpreter's (the largest trip
    count: 32 entries) and, where the kernel has it, the table-driven kinds' row loop (a
    smaller trip count, the lane's fragment rows). Returns None without a dispatch, else a
    dict with the branch blocks and, per path, its first block (`entry`); `interval` lists one
    path per side of the split (`intervals` 1 and 2), or the one side (`intervals` None) when
    there is no split."""
    ipdom = cfg.postdominators(body)
    heads = {h for h in cfg.loops if h in region}

    def two_sides(k, within):
        es = cfg.forward(k, body)
        if len(es) != 2 or cfg.block_ins(k)[-1].base != "BRA":
            return None
        sides = [_side(cfg, body, within, e.dst, ipdom[k]) for e in es]
        return [(e.dst, s, _side_facts(cfg, s, heads)) for e, s in zip(es, sides)]

    def facts(f):
        return {"isetp_per_neg_inf": round(f[2] / f[0], 2) if f[0] else None,
                "instr_per_neg_inf": round(f[3] / f[0], 2) if f[0] else None,
                "instructions": f[3]}

    # The outermost loops of the region: the table-driven kinds' row loop (a small trip count
    # the SASS shows: the lane's 2 or 4 fragment rows) and the interpreter's (the largest
    # trip, 32 entries, or one the SASS does not show).
    outer = [h for h in sorted(heads) if not any(h in cfg.loops[g] and g != h for g in heads)]
    trips = {h: loop_trip(cfg, h, cfg.loops[h]) for h in outer}
    def nested(h):
        return any(g != h and g in cfg.loops[h] for g in heads)
    rowloops = [h for h in outer if trips[h] is not None and trips[h] <= 8]
    # Of two row loops of the same trip, the table-driven kinds' is the larger (its components'
    # kinds branch; the gathered tiles' search, below, is a few straight blocks).
    table_head = min(rowloops, key=lambda h: (trips[h], -len(cfg.loops[h]), h)) if rowloops else None
    others = [h for h in outer if h != table_head]
    interp_head = max(others, key=lambda h: (trips[h] or 32, -h)) if others else None
    # Kernels since the gathered mask (TokenMask::gathered_bits) have no interpreter: the other
    # rolled loop is the gathered tiles' -- no loop nested in it (its search is unrolled) and
    # at most 8 trips (the SASS may not show them: then the table-driven kinds' row count).
    gathered = (table_head is not None and interp_head is not None and not nested(interp_head)
                and (trips[interp_head] is None or trips[interp_head] <= 8))

    select_form, bits_form = [], []
    for k in sorted(region):
        sides = two_sides(k, region)
        if sides is None:
            continue
        looped = [sd for sd in sides if sd[2][1]]
        if len(looped) != 1:
            continue
        free = next(sd for sd in sides if not sd[2][1])
        if all(f[0] for _, _, f in sides):
            if free[2][2] >= free[2][0] or free[2][0] >= _MIN_UNROLLED_SELECTS:
                select_form.append((-free[2][0], k, looped[0], free))
        elif not any(f[0] for _, _, f in sides):
            if table_head is None:
                bits_form.append((0, k, looped[0], free))
            elif table_head in looped[0][1]:
                bits_form.append((-free[2][3], k, looped[0], free))
    # The interval side holds both interval paths: of the candidates, the one whose loop-free
    # side selects the most entries (select form), or (bits form) whose other side enters the
    # table-driven kinds' row loop and which is largest, the first by address among equals.
    form = "select" if select_form else "bits"
    for _, k, (ientry, lside, _), (vent, vside, vfacts) in sorted(select_form or bits_form)[:1]:
        table = None
        interpreted = {"entry": ientry}
        if table_head is not None and interp_head is not None:
            table = {"entry": table_head, "trip": trips[table_head]}
            interpreted = {"entry": interp_head}
            if gathered:
                interpreted.update(gathered=True, trip=trips[interp_head] or trips[table_head])
        elif table_head is not None and form == "bits":
            # No second loop: the gathered tiles' path is loop-free (one search per lane,
            # shuffles) -- the loop-free side, of 8 instructions or more, of a branch in the
            # looped side whose other side holds the table-driven kinds' row loop (`tile >= 0`)
            # -- or the kernel has none (its walk lists no gathered tile).
            table = {"entry": table_head, "trip": trips[table_head]}
            interpreted = None
            for j in sorted(lside):
                sub = two_sides(j, lside)
                if sub is None:
                    continue
                with_table = [sd for sd in sub if table_head in sd[1]]
                free = [sd for sd in sub if not sd[2][1] and sd[2][3] >= 8 and table_head not in sd[1]]
                if len(with_table) == 1 and len(free) == 1:
                    interpreted = {"entry": free[0][0], "gathered": True, "trip": None}
                    break
        out = {"dispatch": k, "form": form, "split": None, "split_compare": None,
               "split_agrees": None, "interpreted": interpreted, "table": table,
               "interval": [dict(entry=vent, intervals=None, **facts(vfacts))]}
        for j in sorted(vside):
            sub = two_sides(j, vside)
            if sub is None or any(f[1] for _, _, f in sub):
                continue
            if form == "select":
                if not all(f[0] for _, _, f in sub):
                    continue
                key = lambda sd: sd[2][2] / sd[2][0]   # ISETP per -inf: two compares per interval
            else:
                if any(f[0] or f[3] < 8 for _, _, f in sub):
                    continue
                key = lambda sd: sd[2][3]
            sub.sort(key=key)
            if key(sub[0]) == key(sub[1]):
                continue                     # as many instructions: not the split
            out["split"] = j
            out["interval"] = [dict(entry=e, intervals=n + 1, **facts(f))
                               for n, (e, _, f) in enumerate(sub)]
            out["split_compare"], out["split_agrees"] = _compare_with_one(cfg, j, sub[0][0])
            break
        return out
    return None


def _compare_with_one(cfg, k, one):
    """The cross-check of the split: when block k's branch tests a predicate that k sets by
    comparing a register with 1 for (in)equality (`ISETP.NE.AND P0, PT, R116, 0x1, PT`),
    whether the side it takes on equality is `one`. Returns (compare text, True/False), or
    (None, None) when the test has another shape."""
    br = cfg.block_ins(k)[-1]
    fact = _guard_fact(br.guard)
    if not fact or len(br.args) > 1:
        return None, None
    for x in reversed(cfg.block_ins(k)[:-1]):
        if fact[0] not in pred_writes(x):
            continue
        mods = x.op.split(".")
        if (x.base != "ISETP" or len(x.args) < 4 or x.args[0] != fact[0] or x.args[1] != "PT"
                or not ({"EQ", "NE"} & set(mods)) or "AND" not in mods
                or not _IMM.match(x.args[3]) or int(x.args[3], 0) != 1
                or (len(x.args) > 4 and x.args[4] != "PT")):
            return x.text, None
        holds_on_equal = "EQ" in mods
        for e in cfg.succ[k]:
            if (fact[0], holds_on_equal) in e.need:
                return x.text, e.dst == one
        return x.text, None
    return None, None


def arch_cc(arch):
    """sm_90a -> 90."""
    m = re.match(r"sm_(\d+)", arch or "")
    return int(m.group(1)) if m else 0


def occupancy(arch, regs, threads, smem_block):
    """CTAs and warps per SM from registers, threads and shared memory (see docs)."""
    lim = ARCH_LIMITS.get(arch_cc(arch))
    if lim is None or regs is None or threads is None:
        return None
    max_warps, max_blocks, smem_sm, smem_block_max = lim
    warps_per_block = -(-threads // 32)
    regs_per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    warps_by_regs = (REGS_PER_SM // SUB_PARTITIONS // regs_per_warp) * SUB_PARTITIONS
    by = {
        "threads": max_warps // warps_per_block,
        "blocks": max_blocks,
        "registers": warps_by_regs // warps_per_block,
    }
    if smem_block is not None:
        alloc = -(-(smem_block + SMEM_RESERVED_PER_BLOCK) // SMEM_ALLOC_UNIT) * SMEM_ALLOC_UNIT
        by["shared memory"] = smem_sm // alloc if smem_block <= smem_block_max else 0
    ctas = min(by.values())
    limiter = min(by, key=lambda k: (by[k], k != "registers"))
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * warps_per_block, "limited_by": limiter,
            "regs_per_warp": regs_per_warp, "by": by}


def block_m_of(kernel):
    """Query rows per block from a `_m<N>` name suffix (`sa_attn_fwd_f16_hd64_m128`), or None."""
    m = re.search(r"_m(\d+)(?:_|$)", kernel)
    return int(m.group(1)) if m else None


def smem_pitch(head_dim):
    """Elements per shared-memory row of a head_dim-wide tile (tile_io.cuh: smem_pitch)."""
    return (head_dim + 63) // 64 * 64


def smem_rows_for(kernel, consts):
    """params.h's dynamic shared-memory rows for a kernel, as (constant name, rows).

    params.h defines SA_FWD_SMEM_ROWS, or one SA_FWD_SMEM_ROWS_<SHAPE> per tile shape with
    SA_FWD_BLOCK_M_<SHAPE> query rows. The shape is the one the kernel's name carries: its
    `_m<N>` suffix matched against SA_FWD_BLOCK_M_<SHAPE> (or SA_FWD_BLOCK_M), or the shape's
    name as a word (`..._decode_...`). An untagged name takes SA_FWD_SMEM_ROWS, else the
    PREFILL shape, else the only one. (None, None) when nothing fits."""
    rows = {k[len("SA_FWD_SMEM_ROWS"):].lstrip("_"): v for k, v in consts.items()
            if re.match(r"^SA_FWD_SMEM_ROWS(_[A-Z0-9]+)?$", k)}
    name = lambda shape: "SA_FWD_SMEM_ROWS" + (f"_{shape}" if shape else "")
    bm = block_m_of(kernel)
    if bm is not None:
        for shape in sorted(rows):
            if consts.get("SA_FWD_BLOCK_M" + (f"_{shape}" if shape else "")) == bm:
                return name(shape), rows[shape]
    tokens = set(kernel.lower().split("_"))
    for shape in sorted(rows):
        if shape and shape.lower() in tokens:
            return name(shape), rows[shape]
    for shape in ("", "PREFILL"):
        if shape in rows:
            return name(shape), rows[shape]
    if len(rows) == 1:
        shape = next(iter(rows))
        return name(shape), rows[shape]
    return None, None


def kv_stages_for(kernel, head_dim, consts):
    """K/V tile buffers of a kernel (kernel_traits.cuh: kStages): SA_FWD_KV_STAGES_STEP in the
    step shape (SA_FWD_BLOCK_M_STEP rows) up to head_dim SA_FWD_STAGED_MAX_D, else 1."""
    staged = consts.get("SA_FWD_KV_STAGES_STEP")
    if (staged and head_dim and block_m_of(kernel) == consts.get("SA_FWD_BLOCK_M_STEP")
            and head_dim <= consts.get("SA_FWD_STAGED_MAX_D", 0)):
        return staged
    return 1


# What the workers of `analyse` read: set before the pool forks, so they inherit it unpickled.
_WORK = None


def _analyse_at(i):
    """Worker: the row of the i-th selected kernel, without its trace (cfg objects stay here)."""
    dump, ptxas, consts, opts, keys = _WORK
    row = analyse_one(keys[i], dump, ptxas, consts, opts)
    row.pop("_trace", None)
    return row


def analyse(dump, ptxas, consts, kernel_re, opts):
    """One report row (a dict, the JSON's `kernels[]`) per selected kernel and architecture, in
    (arch, kernel) order. Kernels are analysed independently: with --jobs above 1 (default: the
    CPUs) by forked workers, which return their rows without the trace; --trace analyses the
    detail kernel once more here for it."""
    global _WORK
    keys = sorted(k for k in dump["funcs"] if re.search(kernel_re, k[1]))
    jobs = min(opts.jobs or os.cpu_count() or 1, len(keys))
    pool = None
    if jobs > 1 and "fork" in mp.get_all_start_methods():
        _WORK = (dump, ptxas, consts, opts, keys)
        pool = mp.get_context("fork").Pool(jobs)
    if pool is None:
        return [analyse_one(k, dump, ptxas, consts, opts) for k in keys]
    try:
        # Small chunks: kernels differ several-fold in analysis time (head_dim 256 and 512).
        rows = pool.map(_analyse_at, range(len(keys)), chunksize=1)
    finally:
        pool.close()
        pool.join()
        _WORK = None
    if opts.trace and opts.detail_key in keys:
        rows[keys.index(opts.detail_key)] = analyse_one(opts.detail_key, dump, ptxas, consts, opts)
    return rows


def analyse_one(key, dump, ptxas, consts, opts):
    """The report row of one (arch, kernel) of the dump."""
    arch, name = key
    ins = dump["funcs"][key]
    row = {"arch": arch, "kernel": name}
    m = re.search(r"_(f16|bf16)_hd(\d+)", name)
    head_dim = int(m.group(2)) if m else None
    row["dtype"], row["head_dim"] = (m.group(1), head_dim) if m else (None, None)
    # Resources.
    res = dump["res"].get((arch, name), {})
    px = ptxas.get((arch, name), {})
    row["registers"] = res.get("REG", px.get("regs"))
    row["stack"] = res.get("STACK", px.get("stack"))
    row["local"] = res.get("LOCAL")
    row["spill_stores"] = px.get("spill_stores")
    row["spill_loads"] = px.get("spill_loads")
    row["ldl_stl"] = sum(1 for x in ins if x.base in ("LDL", "STL") and not x.never)
    # cuobjdump counts the driver's 1 KB per-block reservation as static shared memory on
    # sm_90 and newer (a kernel without __shared__ shows SHARED:1024 there, 0 on sm_80);
    # the occupancy formula adds the reservation itself, so it is taken out here.
    shared = res.get("SHARED")
    if shared is not None and arch_cc(arch) >= 90 and shared >= SMEM_RESERVED_PER_BLOCK:
        shared -= SMEM_RESERVED_PER_BLOCK
    row["static_smem"] = shared
    # Threads per block: --threads, else the kernel's launch bound (every forward entry
    # declares its block size there: 128, or 32 for the one-warp step shape), else
    # params.h's SA_FWD_THREADS.
    mt = dump["max_threads"].get((arch, name))
    row["max_threads"] = mt[0] * mt[1] * mt[2] if mt else None
    threads = opts.threads or row["max_threads"] or consts.get("SA_FWD_THREADS")
    row["threads"] = threads
    stages = kv_stages_for(name, head_dim, consts)
    row["kv_stages"] = stages
    rows_name, smem_rows = ("--smem-rows", opts.smem_rows) if opts.smem_rows else smem_rows_for(name, consts)
    if stages > 1 and not opts.smem_rows and "SA_FWD_SMEM_ROWS_STEP_STAGED" in consts:
        rows_name, smem_rows = "SA_FWD_SMEM_ROWS_STEP_STAGED", consts["SA_FWD_SMEM_ROWS_STEP_STAGED"]
    row["smem_rows_from"] = rows_name
    # params.h: dynamic shared memory is SA_FWD_SMEM_ROWS* rows of head_dim 16-bit elements,
    # rows padded to the 64-element swizzle span (tile_io.cuh: smem_pitch; 96 -> 128);
    # above head_dim 256 the V tile holds the block's half of the columns
    # (kernel_traits.cuh: kOCols).
    dyn = None
    if smem_rows and head_dim and name.startswith("sa_attn_fwd"):
        dyn = smem_rows * smem_pitch(head_dim) * 2
        block_n = consts.get("SA_FWD_BLOCK_N")
        if head_dim > 256 and block_n:
            dyn -= block_n * (smem_pitch(head_dim) - smem_pitch(head_dim // 2)) * 2
    row["dynamic_smem"] = dyn
    block_smem = dyn + (shared or 0) if dyn is not None else None
    row["smem_per_block"] = block_smem
    row["occupancy"] = occupancy(arch, row["registers"], threads, block_smem)
    # Mainloop.
    try:
        cfg, head, dense, d, dense_loops, loader, detours, partial, shortcuts, mask = analyse_function(
            ins, dump["brx"].get((arch, name), {}), opts.mask_trip,
            all_detours=(arch, name) == opts.detail_key)
    except AnalysisError as e:
        row["error"] = str(e)
        return row
    row["unresolved_indirect_branches"] = [hex(a) for a in cfg.unresolved]
    row["mainloop"] = {"head": hex(cfg.addr(head)), "blocks": len(cfg.loops[head]),
                       "back_edges": [hex(cfg.ins[cfg.blocks[u][1]].addr) for u in sorted(cfg.latches[head])]}
    hm = d["hmma"]
    row["dense"] = {k: d[k] for k in CLASSES + ["n", "never"]}
    row["dense"]["ops"] = dict(sorted(d["ops"].items(), key=lambda kv: -kv[1]))
    row["dense"]["non_hmma_per_hmma"] = round((d["n"] - hm) / hm, 3) if hm else None
    row["dense"]["smem_bytes_per_hmma"] = round(d["smem_bytes"] / hm, 1) if hm else None
    row["dense"]["loader"] = loader
    row["dense"]["loader_per_ldgsts"] = round(loader / d["ldgsts"], 1) if d["ldgsts"] else None
    # K/V bytes a block streams per iteration (each LDGSTS.128 copies 16 bytes per thread)
    # and instructions per K/V byte (every warp runs the same path: n over its 32 x 16 B per
    # LDGSTS): the decode kernels' bandwidth gauge -- a memory-bound launch wants few.
    row["dense"]["kv_bytes_per_iteration"] = d["ldgsts"] * 16 * threads if threads else None
    row["dense"]["instr_per_kv_byte"] = round(d["n"] / (d["ldgsts"] * 512), 4) if d["ldgsts"] else None
    # K/V bytes in flight per SM, the bandwidth gauge of a memory-bound (decode) launch: each
    # resident block keeps one of its tile loads in flight (K_i+1 during P.V_i, V_i during
    # Q.K_i^T: half an iteration's K/V), or with S stages 2 S - 1 (staged step blocks: V_i,
    # K_i+1 and V_i+1 during Q.K_i^T), times the blocks per SM. By Little's law an SM
    # streams at most this / the DRAM latency (H100/H200: ~36 B/ns per SM at full bandwidth,
    # so ~30 KB at ~0.8 us).
    occ = row["occupancy"]
    kvb = row["dense"]["kv_bytes_per_iteration"]
    row["dense"]["kv_tile_loads_in_flight"] = 2 * stages - 1
    row["dense"]["kv_bytes_in_flight_per_sm"] = (occ["ctas_per_sm"] * (2 * stages - 1) * kvb // 2
                                                 if occ and kvb else None)
    row["dense"]["path"] = [hex(cfg.addr(k)) for k in dense]
    row["dense"]["loops"] = dense_loops
    row["detours"] = []
    for det in detours:
        row["detours"].append({
            "entry": hex(cfg.addr(det["entry"])), "blocks": len(det["region"]),
            "writes_neg_inf": det["masks"], "tanh": det["tanh"],
            "iteration": det.get("total"), "iteration_min": det.get("total_min"),
            "extra": det["total"] - d["n"] if det.get("total") is not None else None,
        })
    # The interpreted mask is the partial tile of old (a mask detour without a dispatch
    # keeps that meaning: its costliest path, `mask_path` None).
    interp = (mask["interpreted"] if mask and mask["interpreted"] and "total" in mask["interpreted"]
              else None)
    if interp is not None:
        partial = dict(interp, entry=mask["detour"])
    elif mask is not None and mask["interpreted"] is None:
        partial = None          # no gathered tile to mask: the interval and table paths say all
    if partial:
        row["partial"] = {
            "entry": hex(cfg.addr(partial["entry"])),
            "mask_path": (("gathered" if interp.get("gathered") else "interpreted")
                          if interp is not None else None),
            "via": hex(cfg.addr(interp["entry"])) if interp is not None else None,
            "path_once": partial["path_once"],
            "iteration": partial["total"],
            "iteration_min": partial["total_min"],
            "ratio": round(partial["total"] / d["n"], 3),
            "ratio_min": round(partial["total_min"] / d["n"], 3),
            "loops": partial["loops"],
            "path": [hex(cfg.addr(k)) for k in partial["path"]],
        }
    else:
        row["partial"] = None
    row["mask"] = None
    if mask:
        def branch(k):
            if k is None:
                return None
            last = cfg.block_ins(k)[-1]
            return {"at": hex(last.addr), "test": last.text}
        def selecting(m):
            """Instructions of the path's own blocks (off the dense path) that select -inf."""
            own = [k for k in m.get("path", []) if k not in on_dense]
            return sum(cfg.count[k]["n"] for k in own
                       if any(writes_neg_inf(x) for x in cfg.block_ins(k) if not x.never))
        on_dense = set(dense)
        split = branch(mask["split"])
        if split:
            split.update(compare=mask["split_compare"], compare_agrees=mask["split_agrees"])
        row["mask"] = {
            "detour": hex(cfg.addr(mask["detour"])),
            "dispatch": branch(mask["dispatch"]),
            "split": split,
            "interval": [{
                "intervals": m["intervals"],
                "entry": hex(cfg.addr(m["entry"])),
                "isetp_per_neg_inf": m["isetp_per_neg_inf"],
                "instr_per_neg_inf": m["instr_per_neg_inf"],
                "iteration": m.get("total"),
                "extra": m["total"] - d["n"] if "total" in m else None,
                "ratio": round(m["total"] / d["n"], 3) if "total" in m else None,
                "selecting": selecting(m) if "total" in m else None,
                "loops": m.get("loops", []),
                "path": [hex(cfg.addr(k)) for k in m.get("path", [])],
            } for m in mask["interval"]],
            "interpreted": ({"entry": hex(cfg.addr(mask["interpreted"]["entry"])),
                             "gathered": bool(mask["interpreted"].get("gathered"))}
                            if mask["interpreted"] else None),
            "form": mask["form"],
            "select": ({"entry": hex(cfg.addr(mask["select"]["entry"])),
                        "extra": mask["select"]["extra"]} if mask.get("select") else None),
            "table": ({
                "entry": hex(cfg.addr(mask["table"]["entry"])),
                "rows": mask["table"]["trip"],
                "iteration": mask["table"].get("total"),
                "ratio": (round(mask["table"]["total"] / d["n"], 3)
                          if "total" in mask["table"] else None),
                "loops": mask["table"].get("loops", []),
                "path": [hex(cfg.addr(k)) for k in mask["table"].get("path", [])],
            } if mask.get("table") else None),
        }
    row["_trace"] = (cfg, dense, shortcuts, partial, mask)
    return row


# ---------------------------------------------------------------------------------------------
# Targets and output
# ---------------------------------------------------------------------------------------------
def resolve_detail(spec, keys):
    """The (arch, kernel) of the per-class breakdown: ARCH:KERNEL as given; the default names
    sm_90 f16 hd128, whose largest tile shape (`_m<N>`) is taken when names carry shapes."""
    arch, _, kern = (spec or "").partition(":")
    if (arch, kern) in keys or spec != DEFAULT_DETAIL:
        return (arch, kern) if spec else None
    cands = [k for k in keys if k[0] == "sm_90" and re.search(r"_f16_hd128(_|$)", k[1])]
    return max(cands, key=lambda k: block_m_of(k[1]) or 0, default=None)


def check_targets(rows):
    """Issue 11's targets; returns a list of (ok, text), ok None for a figure reported only.
    The non-HMMA-per-HMMA target is held by the sm_90 head_dim-128 kernels of the largest
    tile shape (block rows from the name's `_m<N>`; names without it count as one shape), the
    dense prefill steady state; smaller (decode) shapes are reported only. The partial-tile
    target is held by the interval mask (1 and 2 intervals) where the mask detour dispatches
    between its paths (the table-driven kinds' bits and the gathered tiles' -- the interpreter
    in older kernels -- are reported only), else by the partial tile."""
    largest = {}
    for r in rows:
        key = (r["arch"], r["dtype"], r["head_dim"])
        largest[key] = max(largest.get(key, 0), block_m_of(r["kernel"]) or 0)
    out = []
    for r in rows:
        tag = f"{r['arch']} {r['kernel']}"
        if "error" in r:
            out.append((False, f"{tag}: not analysed: {r['error']}"))
            continue
        key = (r["arch"], r["dtype"], r["head_dim"])
        if (r["arch"].startswith("sm_90") and r["head_dim"] == 128
                and (block_m_of(r["kernel"]) or 0) == largest[key]):
            v = r["dense"]["non_hmma_per_hmma"]
            out.append((v is not None and v <= TARGET_NON_HMMA_PER_HMMA,
                        f"{tag}: {v} non-HMMA instructions per HMMA (target <= {TARGET_NON_HMMA_PER_HMMA})"))
        p, mk = r["partial"], r.get("mask")
        ivl = [m for m in (mk or {}).get("interval", [])]
        if ivl:
            # The target is the interval path's (the common partial tiles: causal diagonals,
            # window edges); the interpreter of the table-driven kinds is reported only.
            for m in ivl:
                n = {1: "1 interval", 2: "2 intervals"}.get(m["intervals"], "intervals")
                out.append((m["ratio"] is not None and m["ratio"] <= TARGET_PARTIAL_RATIO,
                            f"{tag}: partial tile, interval mask ({n}) {m['ratio']}x a full tile "
                            f"(target <= {TARGET_PARTIAL_RATIO})"))
            tb = mk.get("table")
            if tb and tb.get("ratio") is not None:
                out.append((None, f"{tag}: partial tile, table-driven kinds {tb['ratio']}x a full "
                                  f"tile (reported only: each row's cheapest component once)"))
            if p is not None and p["mask_path"] == "gathered":
                out.append((None, f"{tag}: partial tile, gathered tiles {p['ratio']}x a full tile "
                                  f"(reported only: a search per row)"))
            elif p is not None:
                what = "gathered tiles" if tb else "the table-driven kinds"
                out.append((None, f"{tag}: partial tile, interpreted mask {p['ratio']}x a full tile "
                                  f"(reported only: {what})"))
        elif p is not None:
            out.append((p["ratio"] <= TARGET_PARTIAL_RATIO,
                        f"{tag}: partial tile {p['ratio']}x a full tile (target <= {TARGET_PARTIAL_RATIO})"))
        spills = (r["spill_stores"] or 0) + (r["spill_loads"] or 0)
        out.append((spills == 0 and (r["stack"] or 0) == 0,
                    f"{tag}: {spills} bytes spilled, stack {r['stack']}"
                    + ("" if r["spill_stores"] is not None else " (no ptxas report: stack frame only)")))
        out.append((r["ldl_stl"] == 0 and (r["local"] or 0) == 0,
                    f"{tag}: {r['ldl_stl']} LDL/STL, LOCAL {r['local']}"))
    return out


def fmt_kb(b):
    return "?" if b is None else f"{b / 1024:.1f}K"


def print_decode_gauge(rows, out):
    """Decode steps are bound by K/V bandwidth: per decode-sized kernel (64- and 16-row
    blocks, list walk), the K/V bytes its resident blocks keep in flight per SM and the
    instructions it issues per K/V byte."""
    sel = [r for r in rows if "error" not in r and r.get("dense") and block_m_of(r["kernel"]) in (16, 64)
           and not r["kernel"].endswith("_rt") and r["dense"].get("kv_bytes_in_flight_per_sm")]
    if not sel:
        return
    print("\ndecode gauge (K/V bandwidth): per SM, the K/V bytes the resident blocks keep in flight "
          "(one tile load each, 3 in staged step blocks) and the instructions per K/V byte (per warp)",
          file=out)
    for r in sel:
        d, occ = r["dense"], r["occupancy"]
        print(f"  {r['arch']}  {r['kernel']:<30} {occ['ctas_per_sm']:>2} CTAs x {r['threads']:>3} threads  "
              f"x {d.get('kv_tile_loads_in_flight', 1)} loads  "
              f"{fmt_kb(d['kv_bytes_in_flight_per_sm']):>7} in flight  {d['instr_per_kv_byte']:.4f} instr/B", file=out)


def print_table(rows, detail, out):
    """One line per kernel and architecture, then the detail kernel's breakdown."""
    kw = max([28] + [len(r["kernel"]) for r in rows])   # the kernel column's width
    head = (f"{'arch':<6} {'kernel':<{kw}} {'REG':>4} {'spill':>5} {'LDL':>4} {'smem':>6} "
            f"{'CTA':>3} {'warp':>4} | {'HMMA':>4} {'LDSM':>4} {'LDGSTS':>6} {'instr':>5} "
            f"{'/HMMA':>5} {'smB/H':>5} {'loader':>6} | {'ivl1':>5} {'xfull':>5} {'ivl2':>5} {'xfull':>5} "
            f"| {'table':>5} {'xfull':>5} | {'interp':>6} {'xfull':>5} {'mask/it':>7} {'trip':>4}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        occ = r["occupancy"] or {}
        spill = "?" if r["spill_stores"] is None else str(r["spill_stores"] + r["spill_loads"])
        left = (f"{r['arch']:<6} {r['kernel']:<{kw}} {r['registers'] if r['registers'] is not None else '?':>4} "
                f"{spill:>5} {r['ldl_stl']:>4} {fmt_kb(r['smem_per_block']):>6} "
                f"{occ.get('ctas_per_sm', '?'):>3} {occ.get('warps_per_sm', '?'):>4}")
        if "error" in r:
            print(f"{left} | not analysed: {r['error']}", file=out)
            continue
        d, p = r["dense"], r["partial"]
        mid = (f"{d['hmma']:>4} {d['ldsm']:>4} {d['ldgsts']:>6} {d['n']:>5} "
               f"{d['non_hmma_per_hmma']:>5.2f} {d['smem_bytes_per_hmma']:>5.0f} {d['loader']:>6}")
        ivl = {m["intervals"]: m for m in (r["mask"] or {}).get("interval", []) if m["iteration"] is not None}
        ivs = " ".join(f"{ivl[n]['iteration']:>5} {ivl[n]['ratio']:>5.2f}" if n in ivl else f"{'-':>5} {'-':>5}"
                       for n in (1, 2))
        tb = (r["mask"] or {}).get("table") or {}
        tbs = (f"{tb['iteration']:>5} {tb['ratio']:>5.2f}" if tb.get("iteration") is not None
               else f"{'-':>5} {'-':>5}")
        if p:
            lp = p["loops"][0] if p["loops"] else None
            right = (f"{p['iteration']:>6} {p['ratio']:>5.2f} "
                     f"{(lp['per_iteration'] if lp else '-'):>7} {(lp['trip'] if lp else '-'):>4}")
        else:
            right = f"{'-':>6} {'-':>5} {'-':>7} {'-':>4}"
        print(f"{left} | {mid} | {ivs} | {tbs} | {right}", file=out)
    if detail is None:
        return
    r, d = detail, detail["dense"]
    print(f"\n{r['arch']} {r['kernel']}: one dense steady-state iteration of the mainloop "
          f"(head {r['mainloop']['head']}, {len(d['path'])} blocks)", file=out)
    for cl in CLASSES:
        ops = [f"{o} {c}" for o, c in d["ops"].items() if op_class(o) == cl]
        extra = f"  ({', '.join(ops[:8])}{', ...' if len(ops) > 8 else ''})" if cl not in ("hmma", "ldsm", "ldgsts", "mufu") and ops else ""
        print(f"  {CLASS_TITLES[cl]:<62} {d[cl]:>5}{extra}", file=out)
    print(f"  {'total executed':<62} {d['n']:>5}  = {d['non_hmma_per_hmma']:.2f} non-HMMA per HMMA", file=out)
    print(f"  {'never executed (@!PT), not in the total':<62} {d['never']:>5}", file=out)
    print(f"  shared memory read: {d['smem_bytes_per_hmma']:.0f} B per HMMA; loader: {d['loader']} "
          f"instructions, {d['loader_per_ldgsts']} per LDGSTS", file=out)
    if d.get("instr_per_kv_byte") is not None:
        kvb = d.get("kv_bytes_per_iteration")
        per_block = f"{kvb} B of K/V per iteration per block, " if kvb else ""
        print(f"  K/V streamed: {per_block}{d['instr_per_kv_byte']:.4f} instructions per K/V byte "
              f"(per warp: instr / (LDGSTS x 512 B))", file=out)
        if d.get("kv_bytes_in_flight_per_sm"):
            loads = d.get("kv_tile_loads_in_flight", 1)
            print(f"  K/V in flight per SM: {fmt_kb(d['kv_bytes_in_flight_per_sm'])} "
                  f"({'one tile load' if loads == 1 else f'{loads} tile loads'} per resident block)", file=out)
    occ = r["occupancy"]
    if occ:
        print(f"  occupancy: {occ['ctas_per_sm']} CTAs, {occ['warps_per_sm']} warps per SM "
              f"(limited by {occ['limited_by']}; {r['registers']} registers -> {occ['regs_per_warp']} "
              f"per warp; {r['threads']} threads; {fmt_kb(r['smem_per_block'])} shared per block "
              f"from {r['smem_rows_from']})", file=out)
    for lp in d["loops"]:
        print(f"  inner loop {lp['head']} on the dense path: {lp['per_iteration']} instructions per "
              f"iteration, {lp['trip']} iterations ({lp['trip_source']})", file=out)
    p, mk = r["partial"], r["mask"]
    if mk:
        sp = mk["split"]
        print(f"  partial tile, interval mask (causal, windows, sinks, chunks): dispatch "
              f"`{mk['dispatch']['test']}` at {mk['dispatch']['at']}"
              + (f", split `{sp['test']}` at {sp['at']}" if sp else ", no split between 1 and 2 intervals")
              + (f" (`{sp['compare']}`)" if sp and sp["compare"] else ""), file=out)
        for m in mk["interval"]:
            what = {1: "1 interval ", 2: "2 intervals"}.get(m["intervals"], "intervals  ")
            if m["iteration"] is None:
                print(f"    {what} at {m['entry']}: no path", file=out)
                continue
            if mk.get("form") == "bits":
                sel = mk["select"]
                print(f"    {what} at {m['entry']}: {m['iteration']} instructions per iteration = "
                      f"{m['ratio']:.2f}x full (+{m['extra']}: "
                      + (f"+{m['extra'] - sel['extra']} the bits, +{sel['extra']} the select at "
                         f"{sel['entry']}" if sel else "the bits; no select found")
                      + ")", file=out)
                continue
            print(f"    {what} at {m['entry']}: {m['iteration']} instructions per iteration = "
                  f"{m['ratio']:.2f}x full (+{m['extra']}: {m['selecting']} in the blocks selecting "
                  f"-inf, {m['instr_per_neg_inf']} instructions and {m['isetp_per_neg_inf']} ISETP per "
                  f"-inf; the rest per-row bounds and the program's loads)", file=out)
        tb = mk.get("table")
        if tb and tb["iteration"] is not None:
            print(f"  partial tile, table-driven kinds (table_bits: global tokens, dilation, block "
                  f"masks, BigBird) at {tb['entry']}: {tb['iteration']} instructions per iteration = "
                  f"{tb['ratio']:.2f}x full ({tb['rows']} fragment rows, each with its cheapest "
                  f"component once: every further component, key block or listed key adds its own "
                  f"pass)", file=out)
        if sp and sp["compare_agrees"] is False:
            print(f"    warning: the split's compare sends `intervals == 1` the other way "
                  f"({sp['compare']}): the sides are told apart by their instructions per -inf", file=out)
    if p:
        what = (f"partial tile, interpreted mask (the rolled general interpreter) at {p['via']} in the "
                f"mask detour at {p['entry']}" if p["mask_path"] == "interpreted"
                else f"partial tile, gathered tiles (gathered_bits: per row a prefix of the ascending "
                     f"gathered keys, one unrolled binary search) at {p['via']} in the mask detour at "
                     f"{p['entry']}" if p["mask_path"] == "gathered"
                else f"partial tile: the mask detour at {p['entry']}")
        each = "every entry evaluated" if p["mask_path"] != "gathered" else "every row searched"
        print(f"  {what}: {p['iteration']} instructions per "
              f"iteration = {p['ratio']:.2f}x full ({each}; cheapest exits: "
              f"{p['iteration_min']} = {p['ratio_min']:.2f}x)", file=out)
        for lp in p["loops"]:
            print(f"    inner loop {lp['head']}: {lp['per_iteration']} instructions per entry "
                  f"(cheapest exit {lp['cheapest_iteration']}), {lp['trip']} entries per thread "
                  f"({'from the SASS loop compare' if lp['trip_source'] == 'sass' else lp['trip_source']})"
                  + (f"; loops nested in it ({', '.join(lp['nested'])}) run once per entry"
                     if lp["nested"] else ""), file=out)
    # The other detours, grouped by cost (the baseline loader has one paged branch per chunk).
    groups = {}
    for x in r["detours"]:
        if x["extra"] is not None and x["entry"] != (p or {}).get("entry"):
            tag = (x["extra"], x["writes_neg_inf"], x["tanh"])
            groups.setdefault(tag, []).append(x["entry"])
    if groups:
        print("  other detours of the dense path (extra instructions per iteration, entry): "
              + ", ".join(f"+{extra} at {es[0]}" + (f" and {len(es) - 1} more" if len(es) > 1 else "")
                          + (" (writes -inf)" if neg else "") + (" (tanh)" if tanh else "")
                          for (extra, neg, tanh), es in sorted(groups.items(), key=lambda g: int(g[1][0], 16))),
              file=out)
    if r.get("unresolved_indirect_branches"):
        print(f"  warning: indirect branches without targets (no -elf text): "
              f"{', '.join(r['unresolved_indirect_branches'])}", file=out)


def print_trace(row, out):
    """The detail kernel's dense path block by block, and what the partial path adds."""
    cfg, dense, shortcuts, partial, mask = row["_trace"]
    print(f"\ntrace {row['arch']} {row['kernel']}: dense path", file=out)
    onp = set(dense)
    for i, k in enumerate(dense):
        c = cfg.count[k]
        last = cfg.block_ins(k)[-1]
        nxt = dense[i + 1] if i + 1 < len(dense) else None
        skipped = [cfg.addr(e.dst) for e in cfg.succ[k] if e.dst != nxt and e.dst > k and e.dst in cfg.loops[dense[0]]]
        avoided = [cfg.addr(e.dst) for e in cfg.succ[k] if (k, e.dst) in shortcuts]
        print(f"  {cfg.addr(k):#07x} {c['n']:4d} instr  HMMA {c['hmma']:3d} LDGSTS {c['ldgsts']:2d}  "
              f"ends {last.text[:48]:<48}"
              + (f" skips {', '.join(hex(a) for a in skipped)}" if skipped else "")
              + (f" (shortcut avoided: {', '.join(hex(a) for a in avoided)})" if avoided else ""),
              file=out)
    paths = [("interval mask, " + {1: "1 interval", 2: "2 intervals"}.get(m["intervals"], "intervals"), m)
             for m in (mask or {}).get("interval", [])]
    paths.append(("interpreted mask" if mask else "partial", partial))
    for what, m in paths:
        if m and m.get("path"):
            extra = [k for k in m["path"] if k not in onp]
            print(f"  {what} path adds blocks: {', '.join(hex(cfg.addr(k)) for k in extra)}", file=out)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def find_cuobjdump(explicit):
    if explicit:
        return explicit
    local = os.path.join(ROOT, ".toolchain", "cuobjdump", "nvidia", "cu13", "bin", "cuobjdump")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("cuobjdump")


FWD_FATBINS = "attention_fwd_hd*.fatbin"


def newest_fatbins():
    """The forward kernels' fatbins (one per head_dim file) of the newest release build."""
    pats = [os.path.join(ROOT, "target", "release", "build", "sparse-attn-*", "out")]
    if os.environ.get("CARGO_TARGET_DIR"):
        pats.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "build", "sparse-attn-*",
                                 "out"))
    outs = [d for pat in pats for d in glob.glob(pat) if glob.glob(os.path.join(d, FWD_FATBINS))]
    if not outs:
        return []
    newest = max(outs, key=lambda d: max(os.path.getmtime(f) for f in glob.glob(os.path.join(d, FWD_FATBINS))))
    return sorted(glob.glob(os.path.join(newest, FWD_FATBINS)))


def dump_fatbin(fatbin, cuobjdump):
    """`cuobjdump -res-usage`, `-elf` (for the .nv.info attributes) and `-sass` of the fatbin.
    cuobjdump runs nvdisasm for -sass: its folder goes first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(os.path.abspath(cuobjdump)) + os.pathsep + env.get("PATH", "")
    parts = []
    for flag in ("-res-usage", "-elf", "-sass"):
        p = subprocess.run([cuobjdump, flag, fatbin], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env, universal_newlines=True)
        if p.returncode != 0:
            raise RuntimeError(f"{cuobjdump} {flag} {fatbin} failed: {p.stderr.strip()}")
        if flag == "-elf":
            # Only the .nv.info attribute sections matter; the rest (hex dumps) is large.
            keep, lines = False, []
            for line in p.stdout.splitlines():
                if re.match(r"\s*arch = ", line):
                    lines.append(line)
                    continue
                if line.startswith("."):
                    keep = line.startswith(".nv.info.")
                if keep:
                    lines.append(line)
            parts.append("\n".join(lines))
        else:
            parts.append(p.stdout)
    return "\n".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--fatbin", nargs="+",
                     help="the forward kernels' fatbins, attention_fwd_hd*.fatbin (default: those of "
                          "the newest build under target/release)")
    src.add_argument("--sass", help="saved cuobjdump text instead of a fatbin (-sass; -res-usage, -elf optional)")
    ap.add_argument("--cuobjdump", help="cuobjdump binary (default: .toolchain/cuobjdump, then PATH)")
    ap.add_argument("--ptxas-report", help="ptxas -v output (default: ptxas-report.txt beside the fatbin)")
    ap.add_argument("--params", default=os.path.join(ROOT, "kernels", "include", "sparse_attn", "params.h"),
                    help="params.h for SA_FWD_THREADS and SA_FWD_SMEM_ROWS*")
    ap.add_argument("--threads", type=int, help="threads per block (default: the kernel's launch bound, else SA_FWD_THREADS)")
    ap.add_argument("--smem-rows", type=int, help="dynamic shared memory rows (default: SA_FWD_SMEM_ROWS*)")
    ap.add_argument("--mask-trip", type=int, default=DEFAULT_MASK_TRIP,
                    help="entries per thread of an inner mask loop whose trip count the SASS does not show")
    ap.add_argument("--kernels", default=KERNEL_RE_DEFAULT, help="regex of the kernels reported")
    ap.add_argument("--detail", default=DEFAULT_DETAIL,
                    help="ARCH:KERNEL of the per-class breakdown ('' for none)")
    ap.add_argument("--trace", action="store_true", help="print the detail kernel's paths block by block")
    ap.add_argument("--save", help="also write the cuobjdump text read from the fatbin to this file")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--check", action="store_true", help="exit 1 unless issue 11's targets hold")
    ap.add_argument("--jobs", type=int, default=None,
                    help="processes analysing kernels and cuobjdump runs at once (default: the CPUs; 1: none)")
    a = ap.parse_args(argv)

    ptxas_text = None
    if a.sass:
        try:
            text = open(a.sass, encoding="utf-8", errors="replace").read()
        except OSError as e:
            print(f"sass-report: {e}", file=sys.stderr)
            return 2
        source = a.sass
    else:
        fatbins = a.fatbin or newest_fatbins()
        missing = [f for f in fatbins if not os.path.exists(f)]
        if not fatbins or missing:
            print(f"sass-report: no {' '.join(missing) or FWD_FATBINS} (build with nvcc: cargo build "
                  "--release, or pass --fatbin / --sass)", file=sys.stderr)
            return 2
        tool = find_cuobjdump(a.cuobjdump)
        if not tool:
            print("sass-report: cuobjdump not found; run scripts/install-cuda.sh --with-cuobjdump "
                  "or pass --cuobjdump", file=sys.stderr)
            return 2
        try:
            # cuobjdump runs are separate processes: up to --jobs of them at once.
            with ThreadPoolExecutor(max_workers=max(1, a.jobs or os.cpu_count() or 1)) as ex:
                text = "\n".join(ex.map(lambda f: dump_fatbin(f, tool), fatbins))
        except (RuntimeError, OSError) as e:
            print(f"sass-report: {e}", file=sys.stderr)
            return 2
        if a.save:
            with open(a.save, "w", encoding="utf-8") as f:
                f.write(text)
        dirs = sorted({os.path.dirname(os.path.abspath(f)) for f in fatbins})
        source = fatbins[0] if len(fatbins) == 1 else (
            os.path.join(dirs[0], FWD_FATBINS) if len(dirs) == 1 else " ".join(fatbins))
        beside = os.path.join(dirs[0], "ptxas-report.txt")
        if not a.ptxas_report and os.path.exists(beside):
            a.ptxas_report = beside
    if a.ptxas_report:
        try:
            ptxas_text = open(a.ptxas_report, encoding="utf-8", errors="replace").read()
        except OSError as e:
            print(f"sass-report: {e}", file=sys.stderr)
            return 2
    try:
        consts = parse_params_h(a.params)
    except OSError as e:
        print(f"sass-report: {e}", file=sys.stderr)
        return 2

    dump = parse_dump(text)
    ptxas = parse_ptxas_report(ptxas_text) if ptxas_text else {}
    a.detail_key = resolve_detail(a.detail, [k for k in dump["funcs"] if re.search(a.kernels, k[1])])
    rows = analyse(dump, ptxas, consts, a.kernels, a)
    if not rows:
        print(f"sass-report: no kernel matching /{a.kernels}/ in {source}", file=sys.stderr)
        return 2
    checks = check_targets(rows)
    detail = next((r for r in rows if (r["arch"], r["kernel"]) == a.detail_key and "error" not in r), None)

    if a.json:
        for r in rows:
            r.pop("_trace", None)
        print(json.dumps({"source": source, "params": {k: v for k, v in consts.items() if k.startswith("SA_FWD_")},
                          "kernels": rows,
                          "targets": [{"ok": ok, "what": t} for ok, t in checks if ok is not None],
                          "reported_only": [t for ok, t in checks if ok is None],
                          "targets_met": all(ok for ok, _ in checks if ok is not None)}, indent=1))
    else:
        out = sys.stdout
        shown = os.path.abspath(source)
        print(f"sass-report: {os.path.relpath(shown, ROOT) if shown.startswith(ROOT + os.sep) else shown}", file=out)
        print_table(rows, detail, out)
        if a.trace and detail:
            print_trace(detail, out)
        print_decode_gauge(rows, out)
        print("\nissue-11 targets:", file=out)
        for ok, t in checks:
            if ok is None:
                print(f"  --   {t}", file=out)
                continue
            print(f"  {'ok  ' if ok else 'MISS'} {t}", file=out)
    if a.check and not all(ok for ok, _ in checks if ok is not None):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
