//! Block summaries of the keys (content-adaptive scores, issue 15): the layout shared with
//! the kernels (`SaKvSummaries` in params.h, `kv_summary.cuh`), the f32 twin of what the
//! append and summarize kernels compute, and the launches of `kernels/kv_summarize.cu`.
//!
//! A summary block holds `block` consecutive key positions, `block = min(B, page_size)` for
//! the adaptive block `B` ([`summary_block`]), so it never straddles a page, and a logical kv
//! block `J` of `B` keys is the `B / block` summary blocks from position `J * B`, found
//! through the block table exactly like its pages. Per (page, kv head, summary block of the
//! page) three f32 vectors of `head_dim`: the SUM of the present keys (folded in ascending
//! position order from 0, so the append kernel and the summarize kernel give the same bits),
//! their channel MIN and their channel MAX. An empty block is sum 0, min `+inf`, max
//! `-inf`. How many keys a block holds comes from the kv length, never from the summary.
//!
//! - Paged (beside a [`KvCache`](super::KvCache) made [`with_summaries`](super::KvCache::with_summaries)):
//!   `[num_pages, num_kv_heads, page_size / block, 3, head_dim]`. The append kernel keeps them
//!   current, resetting a block when its first row (`row % block == 0`) lands, so a ring slot
//!   or a freed page that is reused never mixes old keys in.
//! - Identity (contiguous K of a prefill without a cache): summary block `s` of sequence `b`
//!   is "page" `b * seq_blocks + s`, one block per page ([`SummaryLayout::identity`]).

use std::ffi::c_void;

use super::layout::{resident, slot_of_logical_page, PageLayout};
use super::table::BlockTable;
use crate::adaptive::{MAX_BLOCK, MIN_BLOCK};
use crate::attention::Element;
use crate::emu::GuardedBuffer;
use crate::error::{Error, Result};
use crate::ffi::{SaKvSummaries, SaKvSummarizeParams, SaPagedKv, SA_SUMMARIZE_THREADS};
use crate::kernels::{self, Launch};
use crate::shape::{DType, SeqLens};

/// The summary granularity for an adaptive block `b` over pages of `page_size` tokens:
/// `min(b, page_size)`. `Error::Pattern` unless `b` is a power of two in
/// [`MIN_BLOCK`]`..=`[`MAX_BLOCK`] (what a selection component accepts).
pub fn summary_block(block: usize, page_size: usize) -> Result<usize> {
    check_adaptive_block(block)?;
    Ok(block.min(page_size))
}

/// `Error::Pattern` unless `block` is a power of two in `MIN_BLOCK..=MAX_BLOCK`.
pub(crate) fn check_adaptive_block(block: usize) -> Result<()> {
    if !(MIN_BLOCK as usize..=MAX_BLOCK as usize).contains(&block) || !block.is_power_of_two() {
        return Err(Error::Pattern(format!(
            "adaptive block must be a power of two in {MIN_BLOCK}..={MAX_BLOCK} (got {block})"
        )));
    }
    Ok(())
}

/// The shape of a summary pool (`SaKvSummaries`): `[pages, num_kv_heads, blocks_per_page, 3,
/// head_dim]` f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SummaryLayout {
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Elements per key.
    pub head_dim: usize,
    /// Key positions per summary block (a power of two).
    pub block: usize,
    /// Summary blocks per page (1 for identity paging).
    pub blocks_per_page: usize,
}

impl SummaryLayout {
    /// The summaries beside pages of `page` for the adaptive block `adaptive_block`
    /// (granularity [`summary_block`]).
    pub fn paged(page: &PageLayout, adaptive_block: usize) -> Result<Self> {
        let block = summary_block(adaptive_block, page.page_size.get())?;
        Ok(SummaryLayout {
            num_kv_heads: page.num_kv_heads,
            head_dim: page.head_dim,
            block,
            blocks_per_page: page.page_size.get() / block,
        })
    }

    /// Identity paging for contiguous keys: summary blocks of `block` positions (a power of
    /// two, `Error::Shape` otherwise), one per "page".
    pub fn identity(num_kv_heads: usize, head_dim: usize, block: usize) -> Result<Self> {
        if !block.is_power_of_two() || block > i32::MAX as usize || num_kv_heads == 0 {
            return Err(Error::Shape(format!(
                "summary block {block} must be a power of two and num_kv_heads {num_kv_heads} \
                 at least 1"
            )));
        }
        Ok(SummaryLayout {
            num_kv_heads,
            head_dim,
            block,
            blocks_per_page: 1,
        })
    }

    /// f32 elements per page.
    pub fn page_stride(&self) -> usize {
        self.num_kv_heads * self.head_stride()
    }

    /// f32 elements per kv head within a page.
    pub fn head_stride(&self) -> usize {
        self.blocks_per_page * 3 * self.head_dim
    }

    /// Offset of the summary of (page, kv head, summary block of the page): the SUM vector,
    /// followed by MIN and MAX (`head_dim` apart).
    pub fn offset(&self, page: usize, head: usize, sblock: usize) -> usize {
        page * self.page_stride() + head * self.head_stride() + sblock * 3 * self.head_dim
    }

    /// A pool of `pages` pages of empty summaries (sum 0, min `+inf`, max `-inf`).
    pub fn empty_pool(&self, pages: usize) -> Vec<f32> {
        let d = self.head_dim;
        let mut v = vec![0.0f32; pages * self.page_stride()];
        for s in v.chunks_mut(3 * d) {
            s[d..2 * d].fill(f32::INFINITY);
            s[2 * d..].fill(f32::NEG_INFINITY);
        }
        v
    }

    /// The kernels' view (`data` the pool's address; `seq_blocks` the summary blocks per
    /// sequence of identity paging, 0 when paged).
    pub fn ffi(&self, data: u64, seq_blocks: usize) -> Result<SaKvSummaries> {
        let i32_of = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| Error::Shape(format!("summaries: {what} {v} exceeds i32")))
        };
        Ok(SaKvSummaries {
            data: data as *mut f32,
            page_stride: self.page_stride() as i64,
            head_stride: self.head_stride() as i64,
            block: i32_of("block", self.block)?,
            log2_block: self.block.trailing_zeros() as i32,
            blocks_per_page: i32_of("blocks per page", self.blocks_per_page)?,
            seq_blocks: i32_of("blocks per sequence", seq_blocks)?,
        })
    }
}

/// One summary (f32, the kernels' arithmetic): what [`SummaryLayout`] stores per block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSummary {
    /// Sum of the keys, folded in ascending position order from 0.
    pub sum: Vec<f32>,
    /// Channel minima (`+inf` when empty).
    pub min: Vec<f32>,
    /// Channel maxima (`-inf` when empty).
    pub max: Vec<f32>,
}

impl BlockSummary {
    /// The empty summary of `head_dim` channels.
    pub fn empty(head_dim: usize) -> Self {
        BlockSummary {
            sum: vec![0.0; head_dim],
            min: vec![f32::INFINITY; head_dim],
            max: vec![f32::NEG_INFINITY; head_dim],
        }
    }

    /// Folds one key in (the kernels' `fminf` / `fmaxf`: a NaN channel value is ignored by
    /// min and max).
    pub fn add(&mut self, key: &[f32]) {
        for (c, &v) in key.iter().enumerate() {
            self.sum[c] += v;
            self.min[c] = self.min[c].min(v);
            self.max[c] = self.max[c].max(v);
        }
    }

    /// The summary stored at `at` of a pool (`head_dim` channels).
    pub fn read(pool: &[f32], at: usize, head_dim: usize) -> Self {
        let s = &pool[at..at + 3 * head_dim];
        BlockSummary {
            sum: s[..head_dim].to_vec(),
            min: s[head_dim..2 * head_dim].to_vec(),
            max: s[2 * head_dim..].to_vec(),
        }
    }

    /// Stores the summary at `at` of a pool.
    pub fn write(&self, pool: &mut [f32], at: usize) {
        let d = self.sum.len();
        pool[at..at + d].copy_from_slice(&self.sum);
        pool[at + d..at + 2 * d].copy_from_slice(&self.min);
        pool[at + 2 * d..at + 3 * d].copy_from_slice(&self.max);
    }
}

/// The f32 twin of the append kernel's summary update: folds the keys `k_new`
/// (`[slots.len(), num_kv_heads, head_dim]`) landing at `slots` (page, row) in token order,
/// resetting a summary block when a token lands on its first row.
pub fn append_twin<T: Element>(
    layout: &SummaryLayout,
    pool: &mut [f32],
    slots: &[(usize, usize)],
    k_new: &[T],
) {
    let (h, d) = (layout.num_kv_heads, layout.head_dim);
    for (t, &(page, row)) in slots.iter().enumerate() {
        for head in 0..h {
            let at = layout.offset(page, head, row / layout.block);
            let mut s = if row % layout.block == 0 {
                BlockSummary::empty(d)
            } else {
                BlockSummary::read(pool, at, d)
            };
            let key: Vec<f32> = k_new[(t * h + head) * d..][..d]
                .iter()
                .map(|x| x.to_f32())
                .collect();
            s.add(&key);
            s.write(pool, at);
        }
    }
}

/// The f32 twin of the summarize kernel over contiguous keys: identity summaries of `k`
/// (`[total_k, num_kv_heads, head_dim]`, sequences as in `seqs`), `seq_blocks =
/// ceil(max kv_len / block)` blocks per sequence, every block written.
pub fn summarize_twin<T: Element>(
    layout: &SummaryLayout,
    seqs: &SeqLens,
    k: &[T],
) -> (Vec<f32>, usize) {
    let (h, d, sb) = (layout.num_kv_heads, layout.head_dim, layout.block);
    let seq_blocks = seqs.max_lens().1.div_ceil(sb);
    let mut pool = layout.empty_pool(seqs.batch() * seq_blocks);
    for b in 0..seqs.batch() {
        let (_, kv_len) = seqs.lens(b);
        let (_, k0) = seqs.offsets(b);
        for s in 0..kv_len.div_ceil(sb) {
            for head in 0..h {
                let mut sum = BlockSummary::empty(d);
                for j in s * sb..((s + 1) * sb).min(kv_len) {
                    let key: Vec<f32> = k[((k0 + j) * h + head) * d..][..d]
                        .iter()
                        .map(|x| x.to_f32())
                        .collect();
                    sum.add(&key);
                }
                sum.write(&mut pool, layout.offset(b * seq_blocks + s, head, 0));
            }
        }
    }
    (pool, seq_blocks)
}

/// The summary of key position `j` of row `b` of a paged table: its offset in the pool, or
/// `None` when the position is not held (evicted, or past the row's length). The twin of
/// `summary_offset` in `kv_summary.cuh`.
pub fn paged_offset(
    layout: &SummaryLayout,
    table: &BlockTable,
    b: usize,
    head: usize,
    j: usize,
) -> Option<usize> {
    let ps = super::layout::PageSize::new(table.page_size).ok()?;
    let kv_len = usize::try_from(*table.kv_lens.get(b)?).ok()?;
    if !resident(j, kv_len, ps, table.sink_pages, table.ring_pages) {
        return None;
    }
    let slot = slot_of_logical_page(j / ps.get(), table.sink_pages, table.ring_pages);
    let page = usize::try_from(*table.table.get(b * table.stride + slot)?).ok()?;
    Some(layout.offset(page, head, (j % ps.get()) / layout.block))
}

/// Checks a summary pool against its layout: whole pages (`Error::Shape`).
fn pool_pages(layout: &SummaryLayout, pool_len: usize) -> Result<usize> {
    let page = layout.page_stride();
    if page == 0 || pool_len % page != 0 {
        return Err(Error::Shape(format!(
            "summaries: a pool of {pool_len} f32 is not whole pages of {page}"
        )));
    }
    Ok(pool_len / page)
}

/// Where the summarize kernel reads keys from.
#[derive(Clone, Copy, Debug)]
pub enum KeySource {
    /// Contiguous keys `[total_k, num_kv_heads, head_dim]` (packed rows, sequences as in the
    /// launch's `seqs`) at this address, into identity summaries.
    Contiguous {
        /// Address of the keys.
        k: u64,
        /// Address of the `[batch + 1]` `cu_seqlens_k` (varlen) or 0 (uniform).
        cu_seqlens_k: u64,
    },
    /// The pages of a cache through a block table, into page-indexed summaries.
    Paged {
        /// `SaPagedKv` of the table with `k_pages` and `block_table` set (device addresses).
        paged: SaPagedKv,
    },
}

/// The summarize launch (`kernels/kv_summarize.cu`) for `batch` sequences of at most
/// `max_kv_len` keys. Identity summaries need `seq_blocks >= ceil(max_kv_len / block)`.
/// Errors (before any launch): a head_dim that is not a multiple of 8, or lengths past i32
/// (`Error::Shape`).
#[allow(clippy::too_many_arguments)]
pub fn summarize_launch(
    dtype: DType,
    layout: &SummaryLayout,
    summaries: u64,
    seq_blocks: usize,
    batch: usize,
    max_kv_len: usize,
    uniform: bool,
    source: KeySource,
) -> Result<Launch<SaKvSummarizeParams>> {
    let (h, d) = (layout.num_kv_heads, layout.head_dim);
    if d % 8 != 0 || d == 0 || max_kv_len > i32::MAX as usize || batch > 65535 || h > 65535 {
        return Err(Error::Shape(format!(
            "summarize: head_dim {d} must be a positive multiple of 8, kv_len {max_kv_len} fit \
             i32, batch {batch} and kv heads {h} at most 65535"
        )));
    }
    let blocks = max_kv_len.div_ceil(layout.block);
    let (k, cu, paged, seq_blocks) = match source {
        KeySource::Contiguous { k, cu_seqlens_k } => {
            if seq_blocks < blocks {
                return Err(Error::Shape(format!(
                    "summarize: {seq_blocks} summary blocks per sequence hold fewer than the \
                     {blocks} of {max_kv_len} keys"
                )));
            }
            (k, cu_seqlens_k, SaPagedKv::default_null(), seq_blocks)
        }
        KeySource::Paged { paged } => (0, 0, paged, 0),
    };
    let cu = if uniform { 0 } else { cu };
    Ok(Launch {
        kernel: kernels::kv_summarize(dtype),
        grid: [blocks.max(1) as u32, h as u32, batch.max(1) as u32],
        block: [SA_SUMMARIZE_THREADS, 1, 1],
        dynamic_smem_bytes: 0,
        params: SaKvSummarizeParams {
            k: k as *const c_void,
            k_batch_stride: (max_kv_len * h * d) as i64,
            k_row_stride: (h * d) as i64,
            k_head_stride: d as i64,
            cu_seqlens_k: cu as *const i32,
            paged,
            summaries: layout.ffi(summaries, seq_blocks)?,
            batch: batch as i32,
            num_kv_heads: h as i32,
            head_dim: d as i32,
            kv_len: max_kv_len as i32,
        },
    })
}

impl SaPagedKv {
    /// No paging: every pointer null, every field 0 (the kernels then read contiguous K).
    pub fn default_null() -> Self {
        SaPagedKv {
            k_pages: std::ptr::null(),
            v_pages: std::ptr::null(),
            block_table: std::ptr::null(),
            page_stride: 0,
            page_head_stride: 0,
            block_table_stride: 0,
            page_size: 0,
            log2_page_size: 0,
            sink_pages: 0,
            ring_pages: 0,
            num_pages: 0,
        }
    }
}

/// Runs the summarize kernel on the emulator over contiguous keys `k`
/// (`[total_k, num_kv_heads, head_dim]`, sequences `seqs`), returning identity summaries
/// with `ceil(max kv_len / block)` blocks per sequence (and that count). The oracle is
/// [`summarize_twin`]. Errors: `k` of the wrong length or a layout the kernel does not take
/// (`Error::Shape`).
pub fn summarize_emulated<T: Element>(
    layout: &SummaryLayout,
    seqs: &SeqLens,
    k: &[T],
) -> Result<(Vec<f32>, usize)> {
    seqs.validate()?;
    let (h, d) = (layout.num_kv_heads, layout.head_dim);
    let total = seqs.totals().1;
    if k.len() != total * h * d {
        return Err(Error::Shape(format!(
            "summarize: k has {} elements, {total} keys of {h} heads x {d} need {}",
            k.len(),
            total * h * d
        )));
    }
    let max_kv = seqs.max_lens().1;
    let seq_blocks = max_kv.div_ceil(layout.block);
    let pool = layout.empty_pool(seqs.batch() * seq_blocks);
    if pool.is_empty() {
        return Ok((pool, seq_blocks));
    }
    let kb = GuardedBuffer::from_slice(k, "k")?;
    let (_, cu_k) = seqs.cu_seqlens();
    let cub = GuardedBuffer::from_slice(&cu_k, "cu_seqlens_k")?;
    let mut sb = GuardedBuffer::from_slice(&pool, "summaries")?;
    let uniform = matches!(seqs, SeqLens::Uniform { .. });
    let launch = summarize_launch(
        T::DTYPE,
        layout,
        sb.as_mut_ptr() as u64,
        seq_blocks,
        seqs.batch(),
        max_kv,
        uniform,
        KeySource::Contiguous {
            k: kb.as_ptr() as u64,
            cu_seqlens_k: cub.as_ptr() as u64,
        },
    )?;
    // SAFETY: the keys, prefix sums and the summary pool are guarded buffers of the sizes the
    // validated lengths and layout require.
    unsafe { launch.run_emulated(&Default::default())? };
    Ok((sb.to_vec(), seq_blocks))
}

/// Runs the summarize kernel on the emulator over host pages: the summaries of every row of
/// `table` (a block table of pages of `page`, pools `k_pages`) are written into `pool`
/// (page-indexed, [`SummaryLayout::paged`]); summary blocks with no present or resident key
/// are left as they are. Errors: a table that does not validate against the pool
/// (`Error::Cache`), shapes that do not match (`Error::Shape`).
pub fn summarize_paged_emulated<T: Element>(
    page: &PageLayout,
    layout: &SummaryLayout,
    k_pages: &[T],
    table: &BlockTable,
    pool: &mut [f32],
) -> Result<()> {
    let num_pages = if page.page_stride() == 0 {
        0
    } else {
        k_pages.len() / page.page_stride()
    };
    if k_pages.len() != num_pages * page.page_stride()
        || pool_pages(layout, pool.len())? != num_pages
        || layout.num_kv_heads != page.num_kv_heads
        || layout.head_dim != page.head_dim
        || page.page_size.get() % layout.block != 0
        || layout.blocks_per_page != page.page_size.get() / layout.block
    {
        return Err(Error::Shape(format!(
            "summarize: pages {page:?} ({} elements) and summaries {layout:?} ({} f32) do not \
             match",
            k_pages.len(),
            pool.len()
        )));
    }
    table.validate(num_pages)?;
    let mut ffi = table.ffi_params(page)?;
    if table.batch() == 0 || num_pages == 0 {
        return Ok(());
    }
    let kb = GuardedBuffer::from_slice(k_pages, "k_pages")?;
    let tb = GuardedBuffer::from_slice(&table.table, "block_table")?;
    let mut sb = GuardedBuffer::from_slice(pool, "summaries")?;
    ffi.k_pages = kb.as_ptr() as *const c_void;
    ffi.block_table = tb.as_ptr();
    ffi.num_pages = num_pages as i32;
    let max_kv = table.kv_lens.iter().copied().max().unwrap_or(0).max(0) as usize;
    let cu: Vec<i32> = std::iter::once(0)
        .chain(table.kv_lens.iter().scan(0i32, |acc, &n| {
            *acc = acc.saturating_add(n);
            Some(*acc)
        }))
        .collect();
    let cub = GuardedBuffer::from_slice(&cu, "cu_seqlens_k")?;
    let mut launch = summarize_launch(
        T::DTYPE,
        layout,
        sb.as_mut_ptr() as u64,
        0,
        table.batch(),
        max_kv,
        false,
        KeySource::Paged { paged: ffi },
    )?;
    launch.params.cu_seqlens_k = cub.as_ptr();
    // SAFETY: pages, table (validated against the pool), prefix sums and summaries are guarded
    // buffers of the sizes the checked layouts require.
    unsafe { launch.run_emulated(&Default::default())? };
    pool.copy_from_slice(sb.as_slice());
    Ok(())
}
