//! The safe forward-attention API: plan once (validate, pick the kernel, compute the launch
//! geometry), then run on a backend as many times as needed.
//!
//! ```no_run
//! use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, SeqLens};
//! let problem = AttnProblem::new(
//!     SeqLens::Uniform { batch: 1, q_len: 128, kv_len: 128 }, 8, 2, 64, DType::F16)?;
//! let plan = AttnPlan::new(&problem, &AttnOptions::causal())?;
//! let n = problem.q_elems();
//! let q = vec![half::f16::from_f32(0.1); n];
//! let kv = vec![half::f16::from_f32(0.1); problem.kv_elems()];
//! let (out, lse) = plan.run_emulated(&q, &kv, &kv, &Default::default())?;
//! # Ok::<(), sparse_attn::Error>(())
//! ```

use std::ffi::c_void;

use crate::emu::{self, GuardedBuffer};
use crate::error::{Error, Result};
use crate::ffi::SaAttnFwdParams;
use crate::kernels::{self, FwdTiles, KernelDesc, Launch};
use crate::pattern::{
    BlockSparseMeta, HeadPatterns, MaskComponent, MaskProgram, Pattern, SparseShape,
};
use crate::shape::{AttnOptions, AttnProblem, DType, SeqLens};

/// A 16-bit element type the kernels accept.
pub trait Element: emu::Plain + Default + Send + Sync {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}

/// Device addresses of one call's tensors (raw: the backends fill them from buffers they own).
#[derive(Clone, Copy, Debug)]
pub struct TensorAddrs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub out: u64,
    pub lse: u64,
    /// `cu_seqlens` arrays on the device (0 for uniform batches).
    pub cu_q: u64,
    pub cu_k: u64,
    /// Optional work counter (0 = none).
    pub tiles_visited: u64,
    /// The plan's block-sparse metadata on the device (see [`PlanMeta::arrays`]).
    pub meta: MetaAddrs,
    /// K/V from a paged cache instead of `k`/`v` (default: not paged).
    pub paged: PagedAddrs,
    /// Split-KV workspace (f32): `[num_splits, total_q, num_heads, head_dim]` partial outputs
    /// and `[num_splits, total_q, num_heads]` partial LSEs; 0 when the plan does not split.
    pub o_partial: u64,
    pub lse_partial: u64,
}

/// How a paged KV cache is laid out for one call (the `SaPagedKv` contract of params.h):
/// pages are `[num_pages, num_kv_heads, page_size, head_dim]`; sequence `b`'s logical page `L`
/// is physical page `block_table[b * block_table_stride + slot(L)]`, with
/// `slot(L) = L` for `L < sink_pages` or `ring_pages == 0`, else
/// `sink_pages + (L - sink_pages) % ring_pages`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagedLayout {
    /// Tokens per page: a power of two in 8..=256.
    pub page_size: usize,
    /// Slots per sequence row of the block table.
    pub block_table_stride: usize,
    /// Leading logical pages that are never evicted.
    pub sink_pages: usize,
    /// Pages of the ring that holds the most recent positions (0: no ring, nothing evicted).
    pub ring_pages: usize,
}

/// Device addresses of a paged KV cache for one call; `block_table == 0` means not paged.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagedAddrs {
    pub k_pages: u64,
    pub v_pages: u64,
    pub block_table: u64,
    pub layout: PagedLayout,
}

/// A paged KV cache in host memory, as the emulator reads it (see [`PagedLayout`]).
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a, T> {
    /// `[num_pages, num_kv_heads, page_size, head_dim]`
    pub k_pages: &'a [T],
    /// Same shape as `k_pages`.
    pub v_pages: &'a [T],
    /// `[batch, layout.block_table_stride]` physical page ids.
    pub block_table: &'a [i32],
    pub layout: PagedLayout,
}

/// Device addresses of a plan's metadata arrays, in the order of [`PlanMeta::arrays`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaAddrs(pub [u64; PlanMeta::NUM_ARRAYS]);

/// The block-sparse metadata of a plan, compiled on the host once: per-sequence CSR lists of
/// full and partial kv tiles (dense and causal included) and the partial-tile mask programs,
/// concatenated over the batch (varlen sequences each get their own rows), as flat `i32`
/// arrays ready to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanMeta {
    head_set: Vec<i32>,
    seq_row_base: Vec<i32>,
    seq_program_base: Vec<i32>,
    full_row_ptr: Vec<i32>,
    full_tiles: Vec<i32>,
    partial_row_ptr: Vec<i32>,
    partial_tiles: Vec<i32>,
    /// `MaskProgram`s as raw words (4 per program).
    programs: Vec<i32>,
    /// `MaskComponent`s as raw words (16 per component).
    components: Vec<i32>,
    data: Vec<i32>,
    tiles_visited: u64,
    /// Longest tile walk of any (head set, query tile) row.
    max_row_tiles: usize,
}

const PROGRAM_WORDS: usize = std::mem::size_of::<MaskProgram>() / 4;
const COMPONENT_WORDS: usize = std::mem::size_of::<MaskComponent>() / 4;

impl PlanMeta {
    /// Number of arrays in [`PlanMeta::arrays`].
    pub const NUM_ARRAYS: usize = 10;

    /// Compiles `patterns` for every sequence of `problem` with the forward kernel's tiles.
    /// `gqa_pack` > 1 compiles for GQA-packed blocks (see [`AttnPlan::gqa_pack`]): query tiles
    /// of `block_m / gqa_pack` tokens, and work counted per kv group.
    pub fn compile(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        tiles: &FwdTiles,
        gqa_pack: u32,
    ) -> Result<Self> {
        let batch = problem.seqs.batch();
        let shape_of = |q_len: usize, kv_len: usize| SparseShape {
            num_heads: problem.num_heads,
            q_len,
            kv_len,
            block_m: (tiles.block_m / gqa_pack.max(1)) as usize,
            block_n: tiles.block_n as usize,
        };
        // Uniform batches share one compilation; varlen sequences each get their own.
        let metas: Vec<BlockSparseMeta> = match &problem.seqs {
            SeqLens::Uniform { q_len, kv_len, .. } => {
                vec![BlockSparseMeta::compile(
                    patterns,
                    shape_of(*q_len, *kv_len),
                )?]
            }
            SeqLens::Varlen { .. } => (0..batch)
                .map(|b| {
                    let (q, k) = problem.seqs.lens(b);
                    BlockSparseMeta::compile(patterns, shape_of(q, k))
                })
                .collect::<Result<_>>()?,
        };
        let mut m = PlanMeta {
            head_set: metas[0].head_set().to_vec(),
            seq_row_base: Vec::with_capacity(batch),
            seq_program_base: Vec::with_capacity(batch),
            full_row_ptr: vec![0],
            full_tiles: Vec::new(),
            partial_row_ptr: vec![0],
            partial_tiles: Vec::new(),
            programs: Vec::new(),
            components: Vec::new(),
            data: Vec::new(),
            tiles_visited: 0,
            max_row_tiles: 0,
        };
        let to_i32 = |x: usize, what: &str| {
            i32::try_from(x)
                .map_err(|_| Error::Shape(format!("block-sparse metadata: {what} exceeds i32")))
        };
        for meta in &metas {
            if meta.head_set() != m.head_set.as_slice() {
                return Err(Error::Pattern(
                    "head sharing differs between sequences".into(),
                ));
            }
            // A uniform batch shares one compilation: every sequence visits its tiles.
            let copies = match &problem.seqs {
                SeqLens::Uniform { .. } => batch as u64,
                SeqLens::Varlen { .. } => 1,
            };
            // Packed blocks serve gqa_pack heads (with identical rows) at once.
            m.tiles_visited += meta.tiles_visited() as u64 * copies / gqa_pack.max(1) as u64;
            let row_base = to_i32(m.full_row_ptr.len() - 1, "row count")?;
            let program_base = to_i32(m.programs.len() / PROGRAM_WORDS, "program count")?;
            for (ptr, tiles, src_ptr, src_tiles) in [
                (
                    &mut m.full_row_ptr,
                    &mut m.full_tiles,
                    meta.full_row_ptr(),
                    meta.full_tiles(),
                ),
                (
                    &mut m.partial_row_ptr,
                    &mut m.partial_tiles,
                    meta.partial_row_ptr(),
                    meta.partial_tiles(),
                ),
            ] {
                let base = to_i32(tiles.len(), "tile list")?;
                for &r in &src_ptr[1..] {
                    ptr.push(
                        base.checked_add(r).ok_or_else(|| {
                            Error::Shape("block-sparse metadata exceeds i32".into())
                        })?,
                    );
                }
                tiles.extend_from_slice(src_tiles);
            }
            let comp_base = to_i32(m.components.len() / COMPONENT_WORDS, "component count")?;
            let data_base = to_i32(m.data.len(), "mask data")?;
            let mask = meta.mask();
            for prog in mask.programs() {
                let p = MaskProgram {
                    first_component: prog.first_component + comp_base,
                    ..*prog
                };
                m.programs.extend_from_slice(&[
                    p.causal,
                    p.first_component,
                    p.num_components,
                    p._reserved,
                ]);
            }
            for c in mask.components() {
                let c = MaskComponent {
                    data_offset: c.data_offset + data_base,
                    ..*c
                };
                m.components.extend_from_slice(&component_words(&c));
            }
            m.data.extend_from_slice(mask.data());
            let rows = meta.full_row_ptr().len() - 1;
            m.max_row_tiles = (0..rows)
                .map(|r| {
                    (meta.full_row_ptr()[r + 1] - meta.full_row_ptr()[r]
                        + meta.partial_row_ptr()[r + 1]
                        - meta.partial_row_ptr()[r]) as usize
                })
                .fold(m.max_row_tiles, usize::max);
            for _ in 0..copies {
                m.seq_row_base.push(row_base);
                m.seq_program_base.push(program_base);
            }
        }
        Ok(m)
    }

    /// The arrays to upload, in the order of [`MetaAddrs`]: head_set, seq_row_base,
    /// seq_program_base, full_row_ptr, full_tiles, partial_row_ptr, partial_tiles,
    /// mask_programs, mask_components, mask_data. None is empty (an unused slot holds one 0),
    /// so every backend can allocate them.
    pub fn arrays(&self) -> [(&'static str, std::borrow::Cow<'_, [i32]>); Self::NUM_ARRAYS] {
        use std::borrow::Cow;
        fn nz(v: &[i32]) -> Cow<'_, [i32]> {
            if v.is_empty() {
                Cow::Owned(vec![0])
            } else {
                Cow::Borrowed(v)
            }
        }
        [
            ("head_set", nz(&self.head_set)),
            ("seq_row_base", nz(&self.seq_row_base)),
            ("seq_program_base", nz(&self.seq_program_base)),
            ("full_row_ptr", nz(&self.full_row_ptr)),
            ("full_tiles", nz(&self.full_tiles)),
            ("partial_row_ptr", nz(&self.partial_row_ptr)),
            ("partial_tiles", nz(&self.partial_tiles)),
            ("mask_programs", nz(&self.programs)),
            ("mask_components", nz(&self.components)),
            ("mask_data", nz(&self.data)),
        ]
    }

    /// kv tiles the kernel visits over the whole batch and all heads (the work accounting
    /// the kernel's counter must reproduce).
    pub fn tiles_visited(&self) -> u64 {
        self.tiles_visited
    }
}

/// A plan's metadata in guarded emulator memory (see [`PlanMeta::upload_emulated`]).
pub struct EmuMeta {
    bufs: Vec<GuardedBuffer<i32>>,
}

impl EmuMeta {
    /// Addresses to put in [`TensorAddrs::meta`]; valid while `self` lives.
    pub fn addrs(&self) -> MetaAddrs {
        let mut a = MetaAddrs::default();
        for (slot, buf) in a.0.iter_mut().zip(&self.bufs) {
            *slot = buf.as_ptr() as u64;
        }
        a
    }
}

impl PlanMeta {
    /// Copies the metadata into guarded buffers for an emulated launch.
    pub fn upload_emulated(&self) -> Result<EmuMeta> {
        let bufs = self
            .arrays()
            .iter()
            .map(|(name, a)| GuardedBuffer::from_slice(a, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EmuMeta { bufs })
    }
}

/// The words of a mask component in C field order (the layout `SaMaskComponent` asserts).
fn component_words(c: &MaskComponent) -> [i32; COMPONENT_WORDS] {
    [
        c.kind,
        c.window_left,
        c.window_right,
        c.sink_count,
        c.dilation_stride,
        c.block_q,
        c.block_k,
        c.mask_rows,
        c.mask_cols,
        c.bigbird_window_half,
        c.bigbird_global_blocks,
        c.rand_first_q_block,
        c.rand_q_blocks,
        c.data_offset,
        c.data_len,
        c._reserved,
    ]
}

/// A validated forward-attention plan.
#[derive(Clone, Debug)]
pub struct AttnPlan {
    problem: AttnProblem,
    scale: f32,
    softcap: f32,
    patterns: HeadPatterns,
    kernel: &'static KernelDesc,
    tiles: FwdTiles,
    meta: PlanMeta,
    num_splits: u32,
    gqa_pack: u32,
}

impl AttnPlan {
    /// A dense (or, with `opts.causal`, causal) plan.
    pub fn new(problem: &AttnProblem, opts: &AttnOptions) -> Result<Self> {
        Self::with_patterns(problem, &HeadPatterns::All(Pattern::dense()), opts)
    }

    /// A plan for any pattern set of PATTERNS.md (one pattern for all heads or one per
    /// head). `opts.causal = true` intersects every head's pattern with causal. The
    /// block-sparse metadata is compiled here, once, for every sequence of the batch.
    pub fn with_patterns(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        opts: &AttnOptions,
    ) -> Result<Self> {
        let (scale, softcap) = opts.resolve(problem.head_dim)?;
        problem.seqs.validate()?;
        let patterns = if opts.causal {
            let causal = |p: &Pattern| Pattern::new(true, p.components.clone());
            match patterns {
                HeadPatterns::All(p) => HeadPatterns::All(causal(p)),
                HeadPatterns::PerHead(v) => HeadPatterns::PerHead(v.iter().map(causal).collect()),
            }
        } else {
            patterns.clone()
        };
        let pack = default_gqa_pack(problem, &patterns);
        Self::build(problem.clone(), patterns, scale, softcap, pack)
    }

    fn build(
        problem: AttnProblem,
        patterns: HeadPatterns,
        scale: f32,
        softcap: f32,
        gqa_pack: u32,
    ) -> Result<Self> {
        let tiles = kernels::fwd_tiles(problem.head_dim);
        let meta = PlanMeta::compile(&problem, &patterns, &tiles, gqa_pack)?;
        let num_splits = default_num_splits(&problem, &tiles, gqa_pack, meta.max_row_tiles);
        Ok(AttnPlan {
            kernel: kernels::attn_fwd(problem.dtype, problem.head_dim),
            problem,
            scale,
            softcap,
            patterns,
            tiles,
            meta,
            num_splits,
            gqa_pack,
        })
    }

    /// Turns GQA packing on or off (recompiling the metadata). Packing puts the query heads of
    /// one kv head into the rows of one block, so each K/V tile is read once per group instead
    /// of once per query head: the decode layout (FlashAttention's "seqlen-q / ngroups swap").
    /// It needs a group size that is a power of two up to 64 and the same head-independent
    /// pattern on every head of a group; the default enables it for short queries (< 64
    /// tokens) when possible.
    pub fn with_gqa_packing(self, enabled: bool) -> Result<Self> {
        let g = self.problem.group_size() as u32;
        let pack = if enabled {
            if !gqa_packable(&self.problem, &self.patterns) {
                return Err(Error::Unsupported(format!(
                    "GQA packing needs a power-of-two group size <= 64 (got {g}) and one \
                     head-independent pattern per kv group"
                )));
            }
            g
        } else {
            1
        };
        Self::build(self.problem, self.patterns, self.scale, self.softcap, pack)
    }

    /// Query heads packed into one block (1 = not packed).
    pub fn gqa_pack(&self) -> u32 {
        self.gqa_pack
    }

    /// Overrides the split-KV factor (1 = no split). Each query tile's kv walk is cut into
    /// `num_splits` parts run by separate blocks and merged by the combine kernel through
    /// their LSE; results agree with the unsplit run within rounding.
    pub fn with_num_splits(mut self, num_splits: u32) -> Result<Self> {
        if !(1..=MAX_SPLITS).contains(&num_splits) {
            return Err(Error::Unsupported(format!(
                "num_splits {num_splits} (supported: 1..={MAX_SPLITS})"
            )));
        }
        self.num_splits = num_splits;
        Ok(self)
    }

    /// Query tokens per block (the kernel's BLOCK_M, divided by the GQA pack).
    fn tile_tokens(&self) -> usize {
        (self.tiles.block_m / self.gqa_pack.max(1)) as usize
    }

    /// The split-KV factor of this plan (1 = no split).
    pub fn num_splits(&self) -> u32 {
        self.num_splits
    }

    /// f32 elements of the split-KV workspace: (partial outputs, partial LSEs); (0, 0) when
    /// the plan does not split.
    pub fn split_workspace(&self) -> (usize, usize) {
        if self.num_splits <= 1 {
            return (0, 0);
        }
        let p = &self.problem;
        let rows = self.num_splits as usize * p.seqs.totals().0 * p.num_heads;
        (rows * p.head_dim.get() as usize, rows)
    }

    /// The combine launch that merges split-KV partials into `out` and `lse` (`None` when
    /// the plan does not split). Runs after [`AttnPlan::launch`] on the same addresses.
    pub fn combine_launch(&self, a: &TensorAddrs) -> Option<Launch<SaAttnFwdParams>> {
        let total_q = self.problem.seqs.totals().0;
        if self.num_splits <= 1 || total_q == 0 {
            return None;
        }
        let mut l = self.launch(a);
        let warps = (kernels::COMBINE_THREADS / 32) as usize;
        let pairs = total_q * self.problem.num_heads;
        l.kernel = kernels::attn_combine(self.problem.dtype, self.problem.head_dim);
        l.grid = [pairs.div_ceil(warps) as u32, 1, 1];
        l.block = [kernels::COMBINE_THREADS, 1, 1];
        l.dynamic_smem_bytes = 0;
        Some(l)
    }

    pub fn problem(&self) -> &AttnProblem {
        &self.problem
    }
    pub fn kernel(&self) -> &'static KernelDesc {
        self.kernel
    }
    pub fn scale(&self) -> f32 {
        self.scale
    }
    pub fn softcap(&self) -> f32 {
        self.softcap
    }
    /// The head patterns this plan runs (after `opts.causal` was applied).
    pub fn patterns(&self) -> &HeadPatterns {
        &self.patterns
    }
    /// `Some(causal)` when every head is dense (no components beyond `dense`) with the same
    /// causality, i.e. the plan is plain dense or causal attention; `None` for sparse plans.
    pub fn dense_causal(&self) -> Option<bool> {
        let causal = self.patterns.causal()?;
        let dense = (0..self.problem.num_heads)
            .all(|h| self.patterns.pattern(h).is_some_and(|p| p.is_dense()));
        dense.then_some(causal)
    }
    /// The compiled block-sparse metadata.
    pub fn meta(&self) -> &PlanMeta {
        &self.meta
    }
    /// Whether query head `h` of sequence `b` may attend key `j` from row `i` (the contract's
    /// predicate, for references and mask rendering).
    pub fn allowed(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let (q_len, kv_len) = self.problem.seqs.lens(b);
        let p = i as i64 + kv_len as i64 - q_len as i64;
        self.patterns.allowed(h, p, j as i64, kv_len)
    }

    /// The launch for given tensor addresses. Pure: no memory is touched.
    pub fn launch(&self, a: &TensorAddrs) -> Launch<SaAttnFwdParams> {
        let p = &self.problem;
        let d = p.head_dim.get() as i64;
        let (h, hk) = (p.num_heads as i64, p.num_kv_heads as i64);
        let (max_q, max_k) = p.seqs.max_lens();
        let (total_q, _) = p.seqs.totals();
        let (q_len, kv_len) = match &p.seqs {
            SeqLens::Uniform { q_len, kv_len, .. } => (*q_len, *kv_len),
            SeqLens::Varlen { .. } => (max_q, max_k),
        };
        let varlen = matches!(p.seqs, SeqLens::Varlen { .. });
        let params = SaAttnFwdParams {
            q: a.q as *const c_void,
            k: a.k as *const c_void,
            v: a.v as *const c_void,
            out: a.out as *mut c_void,
            lse: a.lse as *mut f32,
            q_batch_stride: q_len as i64 * h * d,
            q_row_stride: h * d,
            q_head_stride: d,
            k_batch_stride: kv_len as i64 * hk * d,
            k_row_stride: hk * d,
            k_head_stride: d,
            v_batch_stride: kv_len as i64 * hk * d,
            v_row_stride: hk * d,
            v_head_stride: d,
            o_batch_stride: q_len as i64 * h * d,
            o_row_stride: h * d,
            o_head_stride: d,
            lse_batch_stride: if varlen { 0 } else { h * q_len as i64 },
            lse_head_stride: if varlen { total_q as i64 } else { q_len as i64 },
            cu_seqlens_q: a.cu_q as *const i32,
            cu_seqlens_k: a.cu_k as *const i32,
            batch: p.seqs.batch() as i32,
            num_heads: h as i32,
            num_kv_heads: hk as i32,
            head_dim: d as i32,
            q_len: q_len as i32,
            kv_len: kv_len as i32,
            scale: self.scale,
            softcap: self.softcap,
            tiles_visited: a.tiles_visited as *mut _,
            paged: paged_params(a, hk, d),
            num_splits: self.num_splits as i32,
            gqa_pack: self.gqa_pack as i32,
            o_partial: a.o_partial as *mut f32,
            lse_partial: a.lse_partial as *mut f32,
            head_set: a.meta.0[0] as *const i32,
            seq_row_base: a.meta.0[1] as *const i32,
            seq_program_base: a.meta.0[2] as *const i32,
            full_row_ptr: a.meta.0[3] as *const i32,
            full_tiles: a.meta.0[4] as *const i32,
            partial_row_ptr: a.meta.0[5] as *const i32,
            partial_tiles: a.meta.0[6] as *const i32,
            mask_programs: a.meta.0[7] as *const _,
            mask_components: a.meta.0[8] as *const _,
            mask_data: a.meta.0[9] as *const i32,
        };
        let m_blocks = q_len.div_ceil(self.tile_tokens()).max(1) as u32;
        let heads = if self.gqa_pack > 1 { hk } else { h };
        Launch {
            kernel: self.kernel,
            grid: [
                m_blocks * self.num_splits,
                heads as u32,
                p.seqs.batch() as u32,
            ],
            block: [self.tiles.threads, 1, 1],
            dynamic_smem_bytes: self.tiles.smem_bytes,
            params,
        }
    }

    pub(crate) fn check_lens<T: Element>(&self, q: usize, k: usize, v: usize) -> Result<()> {
        let p = &self.problem;
        if T::DTYPE != p.dtype {
            return Err(Error::Shape(format!(
                "element type {} does not match the problem's {}",
                T::DTYPE.name(),
                p.dtype.name()
            )));
        }
        for (name, got, want) in [
            ("q", q, p.q_elems()),
            ("k", k, p.kv_elems()),
            ("v", v, p.kv_elems()),
        ] {
            if got != want {
                return Err(Error::Shape(format!(
                    "{name} has {got} elements, the problem needs {want}"
                )));
            }
        }
        Ok(())
    }

    /// Runs the forward pass on the CPU emulator (the very kernel source of the GPU path).
    /// Returns `(out, lse)`, laid out like q and `[batch, num_heads, q_len]` (varlen:
    /// `[num_heads, total_q]`).
    pub fn run_emulated<T: Element>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_lens::<T>(q.len(), k.len(), v.len())?;
        self.emulate(q, KvInput::Contiguous { k, v }, run)
    }

    /// Like [`AttnPlan::run_emulated`], with K/V read from a paged cache (the problem's
    /// kv lengths are the sequences' lengths in the cache). The layout, every block-table
    /// entry a launch can read, and that no allowed key has been evicted from a ring are
    /// checked before anything runs.
    pub fn run_emulated_paged<T: Element>(
        &self,
        q: &[T],
        kv: &PagedKv<'_, T>,
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_lens::<T>(q.len(), self.problem.kv_elems(), self.problem.kv_elems())?;
        self.check_paged(
            kv.k_pages.len(),
            kv.v_pages.len(),
            kv.block_table,
            &kv.layout,
        )?;
        self.emulate(q, KvInput::Paged(kv), run)
    }

    /// Validates a paged cache for this plan: page size, pool shape, block-table extent and
    /// entries, and that the ring still holds every key the pattern allows.
    pub(crate) fn check_paged(
        &self,
        k_len: usize,
        v_len: usize,
        block_table: &[i32],
        l: &PagedLayout,
    ) -> Result<()> {
        let p = &self.problem;
        let bad = |m: String| Err(Error::Cache(m));
        if !(8..=256).contains(&l.page_size) || !l.page_size.is_power_of_two() {
            return bad(format!(
                "page size {} is not a power of two in 8..=256",
                l.page_size
            ));
        }
        let page_elems = p.num_kv_heads * l.page_size * p.head_dim.get() as usize;
        if k_len != v_len || k_len % page_elems != 0 || k_len == 0 {
            return bad(format!(
                "k/v pages have {k_len}/{v_len} elements, not the same positive multiple of \
                 num_kv_heads * page_size * head_dim = {page_elems}"
            ));
        }
        let num_pages = k_len / page_elems;
        let batch = p.seqs.batch();
        if num_pages > i32::MAX as usize || l.block_table_stride > i32::MAX as usize {
            return bad("page pool or block table too large for i32 indices".into());
        }
        if block_table.len() != batch * l.block_table_stride {
            return bad(format!(
                "block table has {} entries, batch {batch} x stride {} needs {}",
                block_table.len(),
                l.block_table_stride,
                batch * l.block_table_stride
            ));
        }
        for b in 0..batch {
            let (q_len, kv_len) = p.seqs.lens(b);
            let logical = kv_len.div_ceil(l.page_size);
            let slots = if l.ring_pages == 0 {
                logical
            } else {
                logical.min(l.sink_pages + l.ring_pages)
            };
            if slots > l.block_table_stride {
                return bad(format!(
                    "sequence {b} ({kv_len} keys) needs {slots} block-table slots, the stride is {}",
                    l.block_table_stride
                ));
            }
            let row = &block_table[b * l.block_table_stride..][..slots];
            if let Some((s, &page)) = row
                .iter()
                .enumerate()
                .find(|(_, &pg)| pg < 0 || pg as usize >= num_pages)
            {
                return bad(format!(
                    "block table entry (sequence {b}, slot {s}) = {page} is outside the pool of {num_pages} pages"
                ));
            }
            // Evicted positions: pages [sink_pages, logical - ring_pages) when the ring wrapped.
            if l.ring_pages > 0 && logical > l.sink_pages + l.ring_pages {
                let lo = l.sink_pages * l.page_size;
                let hi = (logical - l.ring_pages) * l.page_size;
                self.check_not_allowed(b, q_len, lo, hi)?;
            }
        }
        Ok(())
    }

    /// Errors if any query of sequence `b` may attend a key in `[lo, hi)` (evicted keys).
    /// Walks only the tiles the metadata lists, so it costs what the kernel would.
    fn check_not_allowed(&self, b: usize, q_len: usize, lo: usize, hi: usize) -> Result<()> {
        let m = &self.meta;
        let bm = self.tile_tokens();
        let bn = self.tiles.block_n as usize;
        let q_tiles = q_len.div_ceil(bm);
        for h in 0..self.problem.num_heads {
            let set = m.head_set[h] as usize;
            if m.head_set[..h].contains(&m.head_set[h]) {
                continue; // same row set as an earlier head: same answer
            }
            for qt in 0..q_tiles {
                let row = m.seq_row_base[b] as usize + set * q_tiles + qt;
                let lists = [
                    &m.full_tiles[m.full_row_ptr[row] as usize..m.full_row_ptr[row + 1] as usize],
                    &m.partial_tiles
                        [m.partial_row_ptr[row] as usize..m.partial_row_ptr[row + 1] as usize],
                ];
                for &t in lists.into_iter().flatten() {
                    let (k0, k1) = ((t as usize * bn).max(lo), ((t as usize + 1) * bn).min(hi));
                    for j in k0..k1 {
                        for i in qt * bm..((qt + 1) * bm).min(q_len) {
                            if self.allowed(b, h, i, j) {
                                return Err(Error::Cache(format!(
                                    "sequence {b}: head {h} query {i} may attend key {j}, which the \
                                     ring has evicted (sink and ring pages too few for the pattern)"
                                )));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn emulate<T: Element>(
        &self,
        q: &[T],
        kv: KvInput<'_, T>,
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let p = &self.problem;
        let qb = GuardedBuffer::from_slice(q, "q")?;
        let (k, v, table, layout) = match kv {
            KvInput::Contiguous { k, v } => (k, v, None, PagedLayout::default()),
            KvInput::Paged(c) => (c.k_pages, c.v_pages, Some(c.block_table), c.layout),
        };
        let (k_label, v_label) = if table.is_some() {
            ("k_pages", "v_pages")
        } else {
            ("k", "v")
        };
        let kb = GuardedBuffer::from_slice(k, k_label)?;
        let vb = GuardedBuffer::from_slice(v, v_label)?;
        let tb = table
            .map(|t| GuardedBuffer::from_slice(t, "block_table"))
            .transpose()?;
        let ob = GuardedBuffer::<T>::zeroed(p.q_elems(), "out")?;
        let lb = GuardedBuffer::<f32>::zeroed(p.lse_elems(), "lse")?;
        let counter = GuardedBuffer::<u64>::zeroed(1, "tiles_visited")?;
        let (cu_q, cu_k) = match &p.seqs {
            SeqLens::Varlen { cu_q, cu_k } => (
                Some(GuardedBuffer::from_slice(cu_q, "cu_seqlens_q")?),
                Some(GuardedBuffer::from_slice(cu_k, "cu_seqlens_k")?),
            ),
            SeqLens::Uniform { .. } => (None, None),
        };
        let meta = self.meta.upload_emulated()?;
        let (o_ws, lse_ws) = self.split_workspace();
        let o_part = GuardedBuffer::<f32>::zeroed(o_ws, "o_partial")?;
        let lse_part = GuardedBuffer::<f32>::zeroed(lse_ws, "lse_partial")?;
        let (contig_k, contig_v) = if tb.is_some() {
            (0, 0)
        } else {
            (kb.as_ptr() as u64, vb.as_ptr() as u64)
        };
        let paged = match &tb {
            Some(t) => PagedAddrs {
                k_pages: kb.as_ptr() as u64,
                v_pages: vb.as_ptr() as u64,
                block_table: t.as_ptr() as u64,
                layout,
            },
            None => PagedAddrs::default(),
        };
        let addrs = TensorAddrs {
            meta: meta.addrs(),
            paged,
            q: qb.as_ptr() as u64,
            k: contig_k,
            v: contig_v,
            out: ob.as_ptr() as u64,
            lse: lb.as_ptr() as u64,
            cu_q: cu_q.as_ref().map_or(0, |b| b.as_ptr() as u64),
            cu_k: cu_k.as_ref().map_or(0, |b| b.as_ptr() as u64),
            tiles_visited: counter.as_ptr() as u64,
            o_partial: if o_ws > 0 { o_part.as_ptr() as u64 } else { 0 },
            lse_partial: if lse_ws > 0 {
                lse_part.as_ptr() as u64
            } else {
                0
            },
        };
        // SAFETY: every pointer in the params refers to a live guarded buffer sized exactly as
        // the validated problem (and, when paged, the validated page layout; when split, the
        // plan's workspace) requires; the kernels match the params type.
        unsafe {
            emu::launch_desc(&self.launch(&addrs), &run.options())?;
            if let Some(combine) = self.combine_launch(&addrs) {
                emu::launch_desc(&combine, &run.options())?;
            }
        }
        if let Some(slot) = run.tiles_visited {
            slot.set(counter.to_vec()[0]);
        }
        Ok((ob.to_vec(), lb.to_vec()))
    }
}

/// Where an emulated call reads K/V from.
enum KvInput<'a, T> {
    Contiguous { k: &'a [T], v: &'a [T] },
    Paged(&'a PagedKv<'a, T>),
}

/// Most split-KV parts a plan may use.
pub const MAX_SPLITS: u32 = 64;

/// Blocks that fill a large GPU (132 SMs on H100/H200, one 4-warp forward block each at
/// these register counts); split-KV is worth its combine pass only below that.
const TARGET_BLOCKS: usize = 132;

/// The default split-KV factor: none when the unsplit grid already has `TARGET_BLOCKS`
/// blocks; otherwise enough parts to reach about two waves, keeping at least two kv tiles
/// per part. A heuristic (FlashAttention-2 uses a similar occupancy rule); not yet tuned by
/// measurement.
fn default_num_splits(
    problem: &AttnProblem,
    tiles: &FwdTiles,
    gqa_pack: u32,
    max_row_tiles: usize,
) -> u32 {
    let (max_q, _) = problem.seqs.max_lens();
    let tile_tokens = (tiles.block_m / gqa_pack.max(1)) as usize;
    let blocks = max_q.div_ceil(tile_tokens).max(1)
        * (problem.num_heads / gqa_pack.max(1) as usize)
        * problem.seqs.batch();
    if blocks >= TARGET_BLOCKS || max_row_tiles < 4 {
        return 1;
    }
    let want = (2 * TARGET_BLOCKS).div_ceil(blocks);
    want.min(max_row_tiles / 2).min(MAX_SPLITS as usize).max(1) as u32
}

/// Whether the heads of every kv group can share packed blocks: a power-of-two group size up
/// to 64 and one head-independent pattern per group.
fn gqa_packable(problem: &AttnProblem, patterns: &HeadPatterns) -> bool {
    let g = problem.group_size();
    if g < 2 || !g.is_power_of_two() || g > 64 {
        return false;
    }
    (0..problem.num_kv_heads).all(|kv| {
        let first = patterns.pattern(kv * g);
        first.is_some_and(|p| !p.is_head_dependent())
            && (1..g).all(|i| patterns.pattern(kv * g + i) == first)
    })
}

/// GQA packing by default for short queries (decode and small chunks), where unpacked blocks
/// would be mostly empty rows and every query head would re-read the same K/V.
fn default_gqa_pack(problem: &AttnProblem, patterns: &HeadPatterns) -> u32 {
    let (max_q, _) = problem.seqs.max_lens();
    if max_q < 64 && gqa_packable(problem, patterns) {
        problem.group_size() as u32
    } else {
        1
    }
}

/// The `SaPagedKv` of a call (all zero when not paged).
fn paged_params(a: &TensorAddrs, num_kv_heads: i64, head_dim: i64) -> crate::ffi::SaPagedKv {
    let l = &a.paged.layout;
    let page = l.page_size as i64;
    crate::ffi::SaPagedKv {
        k_pages: a.paged.k_pages as *const c_void,
        v_pages: a.paged.v_pages as *const c_void,
        block_table: a.paged.block_table as *const i32,
        page_stride: num_kv_heads * page * head_dim,
        page_head_stride: page * head_dim,
        block_table_stride: l.block_table_stride as i32,
        page_size: page as i32,
        log2_page_size: l.page_size.max(1).trailing_zeros() as i32,
        sink_pages: l.sink_pages as i32,
        ring_pages: l.ring_pages as i32,
        _reserved: 0,
    }
}

/// Emulator run options (scheduling order, cp.async mode, workers) and optional work counter.
#[derive(Clone, Debug, Default)]
pub struct EmuRun<'a> {
    pub schedule: emu::Schedule,
    pub eager_cp_async: bool,
    /// Worker threads (0 = all cores).
    pub workers: u32,
    /// Receives the number of kv tiles the kernel visited.
    pub tiles_visited: Option<&'a std::cell::Cell<u64>>,
}

impl EmuRun<'_> {
    fn options(&self) -> emu::EmuOptions {
        emu::EmuOptions {
            schedule: self.schedule,
            eager_cp_async: self.eager_cp_async,
            workers: self.workers,
        }
    }
}
