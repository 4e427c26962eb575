//! The page layout and the logical-page → slot mapping of `SaPagedKv` (params.h), as pure
//! functions. This is the Rust twin of `kernels/include/sparse_attn/paged_kv.cuh`: the cache
//! bookkeeping, the block-table validation and the host gather all go through these, so the
//! kernels and the Rust side cannot disagree about where a position lives.

use crate::error::{Error, Result};

/// A page size the kernels accept: a power of two in `8..=256` tokens (engines use 8, 16
/// and 32; FlashInfer any; vLLM 16 by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageSize(u32);

impl PageSize {
    /// Smallest supported page size.
    pub const MIN: u32 = 8;
    /// Largest supported page size.
    pub const MAX: u32 = 256;

    /// Validates `tokens`: a power of two in `8..=256`, else `Error::Cache`.
    pub fn new(tokens: usize) -> Result<Self> {
        if tokens.is_power_of_two() && (Self::MIN as usize..=Self::MAX as usize).contains(&tokens) {
            Ok(PageSize(tokens as u32))
        } else {
            Err(Error::Cache(format!(
                "page size {tokens} is not a power of two in {}..={}",
                Self::MIN,
                Self::MAX
            )))
        }
    }

    /// Tokens per page.
    pub fn get(self) -> usize {
        self.0 as usize
    }

    /// `log2(page size)` (the kernels shift by it).
    pub fn log2(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// Pages needed to hold `tokens` consecutive positions starting at position 0.
    pub fn pages_for(self, tokens: usize) -> usize {
        tokens.div_ceil(self.get())
    }
}

/// The block-table slot of logical page `logical` (positions `logical * page_size ..`):
/// sink pages and every page of a layer without a ring (`ring_pages == 0`) have their own
/// slot; later pages cycle through the `ring_pages` slots after the sinks.
pub fn slot_of_logical_page(logical: usize, sink_pages: usize, ring_pages: usize) -> usize {
    if ring_pages == 0 || logical < sink_pages {
        logical
    } else {
        sink_pages + (logical - sink_pages) % ring_pages
    }
}

/// Whether position `j` of a sequence of `kv_len` keys is still held by the cache: sink
/// pages always; with a ring, the last `ring_pages` logical pages up to the one holding
/// position `kv_len - 1`; every position when `ring_pages == 0`. Positions `>= kv_len` are
/// never resident.
pub fn resident(
    j: usize,
    kv_len: usize,
    page_size: PageSize,
    sink_pages: usize,
    ring_pages: usize,
) -> bool {
    if j >= kv_len {
        return false;
    }
    let page = j >> page_size.log2();
    if ring_pages == 0 || page < sink_pages {
        return true;
    }
    let last_page = (kv_len - 1) >> page_size.log2();
    page + ring_pages > last_page
}

/// The shape of one layer's K (or V) page pool: `[num_pages, num_kv_heads, page_size,
/// head_dim]`, row-major. A kv head's rows of a page are contiguous, so a kv tile of one head
/// is a few contiguous runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageLayout {
    /// Key/value heads per token.
    pub num_kv_heads: usize,
    /// Tokens per page.
    pub page_size: PageSize,
    /// Elements per head and token.
    pub head_dim: usize,
}

impl PageLayout {
    /// Elements of one page (`SaPagedKv::page_stride`): `num_kv_heads * page_size * head_dim`.
    pub fn page_stride(&self) -> usize {
        self.num_kv_heads * self.page_head_stride()
    }

    /// Elements of one head within a page (`SaPagedKv::page_head_stride`):
    /// `page_size * head_dim`.
    pub fn page_head_stride(&self) -> usize {
        self.page_size.get() * self.head_dim
    }

    /// Element index of `(page, head, slot_in_page, dim)` in the pool.
    pub fn element_offset(
        &self,
        page: usize,
        head: usize,
        slot_in_page: usize,
        dim: usize,
    ) -> usize {
        page * self.page_stride()
            + head * self.page_head_stride()
            + slot_in_page * self.head_dim
            + dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        for ok in [8, 16, 32, 64, 128, 256] {
            let p = PageSize::new(ok).unwrap();
            assert_eq!(p.get(), ok);
            assert_eq!(1usize << p.log2(), ok);
        }
        for bad in [0, 1, 4, 7, 12, 24, 255, 512, usize::MAX] {
            assert!(matches!(PageSize::new(bad), Err(Error::Cache(_))), "{bad}");
        }
        assert_eq!(PageSize::new(16).unwrap().pages_for(0), 0);
        assert_eq!(PageSize::new(16).unwrap().pages_for(16), 1);
        assert_eq!(PageSize::new(16).unwrap().pages_for(17), 2);
    }

    #[test]
    fn slots() {
        // No ring: identity.
        assert!((0..100).all(|l| slot_of_logical_page(l, 2, 0) == l));
        // Two sink pages, a ring of three: 0 1 | 2 3 4 2 3 4 ...
        let got: Vec<usize> = (0..9).map(|l| slot_of_logical_page(l, 2, 3)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4, 2, 3, 4, 2]);
        // No sinks.
        let got: Vec<usize> = (0..5).map(|l| slot_of_logical_page(l, 0, 2)).collect();
        assert_eq!(got, [0, 1, 0, 1, 0]);
    }

    #[test]
    fn residency_matches_a_replayed_ring() {
        // Replay the ring write by write: slot -> logical page it currently holds. A position
        // is resident exactly when its logical page is still in its slot (or is a sink page).
        for page in [8usize, 16] {
            let ps = PageSize::new(page).unwrap();
            for (sinks, ring) in [(0, 1), (0, 3), (1, 2), (2, 5), (3, 0)] {
                let mut holder: Vec<Option<usize>> = vec![None; sinks + ring.max(1) + 64];
                for kv_len in 1..(page * 12) {
                    let l = (kv_len - 1) / page;
                    holder[slot_of_logical_page(l, sinks, ring)] = Some(l);
                    for j in 0..kv_len + 3 {
                        let lj = j / page;
                        let held =
                            j < kv_len && holder[slot_of_logical_page(lj, sinks, ring)] == Some(lj);
                        assert_eq!(
                            resident(j, kv_len, ps, sinks, ring),
                            held,
                            "{page} {sinks} {ring} {kv_len} {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn element_offsets() {
        let l = PageLayout {
            num_kv_heads: 3,
            page_size: PageSize::new(8).unwrap(),
            head_dim: 4,
        };
        assert_eq!(l.page_head_stride(), 32);
        assert_eq!(l.page_stride(), 96);
        assert_eq!(l.element_offset(0, 0, 0, 0), 0);
        assert_eq!(l.element_offset(0, 0, 1, 0), 4);
        assert_eq!(l.element_offset(0, 1, 0, 0), 32);
        assert_eq!(l.element_offset(2, 2, 7, 3), 2 * 96 + 2 * 32 + 7 * 4 + 3);
        // Every element of a pool is hit exactly once.
        let mut seen = vec![false; 2 * l.page_stride()];
        for p in 0..2 {
            for h in 0..3 {
                for s in 0..8 {
                    for d in 0..4 {
                        let o = l.element_offset(p, h, s, d);
                        assert!(!seen[o]);
                        seen[o] = true;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
