//! Paged K/V as one call reads it: the layout contract of `SaPagedKv`, host and device
//! addresses, and the validation every paged launch goes through first.

use std::ffi::c_void;

use super::{AttnPlan, Result, SeqLens, TensorAddrs};
use crate::error::Error;
use crate::pattern::spans::RowSpans;

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
    /// K pages.
    pub k_pages: u64,
    /// V pages.
    pub v_pages: u64,
    /// Block table (`[batch, layout.block_table_stride]` int32).
    pub block_table: u64,
    /// Page size, pool shape and ring of the cache.
    pub layout: PagedLayout,
    /// Pages in the pool (`SaPagedKv::num_pages`): the kernels read no page outside it; 0
    /// trusts the table.
    pub num_pages: usize,
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
    /// Page size, pool shape and ring of the cache.
    pub layout: PagedLayout,
}

impl AttnPlan {
    /// Validates a paged cache for this plan: page size, pool shape, block-table extent and
    /// entries, and that the ring still holds every key the pattern allows. `k_len` and
    /// `v_len` are the pools' lengths in elements. Every paged launch (CUDA and emulated) runs
    /// this on the host first; it is public so that cost can be measured on its own
    /// (benches/host_overhead.rs).
    pub fn check_paged(
        &self,
        k_len: usize,
        v_len: usize,
        block_table: &[i32],
        l: &PagedLayout,
    ) -> Result<()> {
        self.check_paged_for(self.problem.seqs(), k_len, v_len, block_table, l)
    }

    /// [`AttnPlan::check_paged`] for one step of a run-time plan ([`AttnPlan::for_max_lengths`])
    /// at the lengths `seqs` (what [`crate::backend::GpuPlan::run_paged_step`] checks on the
    /// host before its launch; public so that cost can be measured on its own).
    pub fn check_paged_step(
        &self,
        seqs: &SeqLens,
        k_len: usize,
        v_len: usize,
        block_table: &[i32],
        l: &PagedLayout,
    ) -> Result<()> {
        self.check_step_lens(seqs)?;
        self.check_paged_for(seqs, k_len, v_len, block_table, l)
    }

    /// [`AttnPlan::check_paged`] for the sequences `seqs` (a run-time step's lengths, or the
    /// problem's).
    pub(crate) fn check_paged_for(
        &self,
        seqs: &SeqLens,
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
        let page_elems = p.num_kv_heads() * l.page_size * p.head_dim().get() as usize;
        if k_len != v_len || k_len % page_elems != 0 || k_len == 0 {
            return bad(format!(
                "k/v pages have {k_len}/{v_len} elements, not the same positive multiple of \
                 num_kv_heads * page_size * head_dim = {page_elems}"
            ));
        }
        let num_pages = k_len / page_elems;
        let batch = seqs.batch();
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
            let (q_len, kv_len) = seqs.lens(b);
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
                if self.walk().runtime_lengths() {
                    self.check_not_allowed_spans(b, q_len, kv_len, lo, hi)?;
                } else {
                    self.check_not_allowed(b, lo, hi)?;
                }
            }
        }
        Ok(())
    }

    /// `check_not_allowed` for a run-time plan, which has no lists for the step's lengths:
    /// each query row's allowed keys as intervals (`pattern::spans::RowSpans`), per distinct
    /// head pattern: a few interval tests per row, independent of kv_len for windows and sinks.
    fn check_not_allowed_spans(
        &self,
        b: usize,
        q_len: usize,
        kv_len: usize,
        lo: usize,
        hi: usize,
    ) -> Result<()> {
        let set = self.patterns();
        for h in 0..self.problem.num_heads() {
            let Some(pattern) = set.pattern(h) else {
                continue;
            };
            if (0..h).any(|e| set.pattern(e) == Some(pattern) && !pattern.is_head_dependent()) {
                continue; // an earlier head with the same pattern: same answer
            }
            let mut rows = RowSpans::new(pattern, h, kv_len);
            for i in 0..q_len {
                let p = i as i64 + kv_len as i64 - q_len as i64;
                let (lo, hi) = (lo as i64, hi as i64);
                if let Some(&(s, e)) = rows.row(p).iter().find(|&&(s, e)| s < hi && e > lo) {
                    return Err(Error::Cache(format!(
                        "sequence {b}: head {h} query {i} may attend key {}, which the ring \
                         has evicted (sink and ring pages too few for the pattern)",
                        s.max(lo).min(e - 1)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Errors if any query of sequence `b` may attend a key in `[lo, hi)` (evicted keys).
    /// Walks only the tiles the metadata lists (through their views), so it costs what the
    /// kernel would.
    fn check_not_allowed(&self, b: usize, lo: usize, hi: usize) -> Result<()> {
        let m = self.meta.of_sequence(b);
        let sets = m.head_set();
        for h in 0..self.problem.num_heads() {
            if sets[..h].contains(&sets[h]) {
                continue; // same row set as an earlier head: same answer
            }
            for qt in 0..m.num_tiles(h) {
                for (rows, keys, _) in m.visits(h, qt) {
                    for j in keys.into_iter().filter(|j| (lo..hi).contains(j)) {
                        if let Some(&i) = rows.iter().find(|&&i| self.allowed(b, h, i, j)) {
                            return Err(Error::Cache(format!(
                                "sequence {b}: head {h} query {i} may attend key {j}, which the \
                                 ring has evicted (sink and ring pages too few for the pattern)"
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `SaPagedKv` of a call (all zero when not paged).
pub(super) fn paged_params(
    a: &TensorAddrs,
    num_kv_heads: i64,
    head_dim: i64,
) -> crate::ffi::SaPagedKv {
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
        num_pages: a.paged.num_pages.min(i32::MAX as usize) as i32,
    }
}
