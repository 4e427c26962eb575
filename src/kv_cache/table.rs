//! Block tables: which physical page holds each logical page of each sequence, in the exact
//! meaning of `SaPagedKv` (params.h).

use std::collections::HashMap;

use super::layout::{slot_of_logical_page, PageLayout, PageSize};
use crate::attention::PagedLayout;
use crate::error::{Error, Result};
use crate::ffi::SaPagedKv;

/// One layer's block table for a batch of sequences, as the kernels read it.
///
/// Sequence `b` (row `b`) has `kv_lens[b]` keys; its logical page `L` lives in physical page
/// `table[b * stride + slot_of_logical_page(L, sink_pages, ring_pages)]`. Only the slots the
/// row's logical pages map to are read (by kernels and by [`BlockTable::validate`]); the
/// others are padding, which [`KvCache::block_table`](super::KvCache::block_table) fills
/// with `-1` so a stray read can never alias another sequence's page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTable {
    /// `[batch, stride]` physical page ids, row-major.
    pub table: Vec<i32>,
    /// Slots per row (`SaPagedKv::block_table_stride`).
    pub stride: usize,
    /// Keys of each sequence (`[batch]`).
    pub kv_lens: Vec<i32>,
    /// Leading logical pages that keep their own slot for good.
    pub sink_pages: usize,
    /// Slots of the ring after the sinks; 0: every logical page has its own slot.
    pub ring_pages: usize,
    /// Tokens per page (a power of two in `8..=256`).
    pub page_size: usize,
}

/// Logical pages of a sequence of `kv_len` keys and the slots they occupy.
pub(crate) fn used_slots(
    kv_len: usize,
    page_size: PageSize,
    sink_pages: usize,
    ring_pages: usize,
) -> usize {
    let pages = page_size.pages_for(kv_len);
    if ring_pages == 0 {
        pages
    } else {
        pages.min(sink_pages + ring_pages)
    }
}

impl BlockTable {
    /// Number of sequences (rows).
    pub fn batch(&self) -> usize {
        self.kv_lens.len()
    }

    /// The physical page of position `j` of row `b`, or `None` when the row has no such key,
    /// the position was evicted, or the table is malformed there (validate first).
    pub fn page_of(&self, b: usize, j: usize) -> Option<usize> {
        let page_size = PageSize::new(self.page_size).ok()?;
        let kv_len = usize::try_from(*self.kv_lens.get(b)?).ok()?;
        if !super::layout::resident(j, kv_len, page_size, self.sink_pages, self.ring_pages) {
            return None;
        }
        let slot = slot_of_logical_page(j / page_size.get(), self.sink_pages, self.ring_pages);
        if slot >= self.stride {
            return None;
        }
        let id = *self
            .table
            .get(b.checked_mul(self.stride)?.checked_add(slot)?)?;
        usize::try_from(id).ok()
    }

    /// Checks the table against a pool of `num_pages` pages; `Error::Cache` names the first
    /// problem. Rejects: a page size the kernels do not take; a stride of 0 or one too small
    /// for the ring (`sink_pages + ring_pages`); a table whose length is not
    /// `batch * stride`; a negative length, or one whose pages do not fit in the row (no
    /// ring); a page id outside `0..num_pages` in a slot the row uses; the same page in two
    /// used slots (within a row or across rows: pages are never shared); parameters that do
    /// not fit the kernels' `i32`s. Tables built by hand must pass this before any launch.
    pub fn validate(&self, num_pages: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Cache(format!("block table: {m}")));
        let page_size = PageSize::new(self.page_size)?;
        let max = i32::MAX as usize;
        if self.stride == 0 || self.stride > max || self.sink_pages > max || self.ring_pages > max {
            return bad(format!(
                "stride {}, sink_pages {}, ring_pages {} must lie in 1..=i32::MAX, 0..=i32::MAX, 0..=i32::MAX",
                self.stride, self.sink_pages, self.ring_pages
            ));
        }
        if self.ring_pages > 0 && self.stride < self.sink_pages + self.ring_pages {
            return bad(format!(
                "stride {} is smaller than sink_pages + ring_pages = {}",
                self.stride,
                self.sink_pages + self.ring_pages
            ));
        }
        if Some(self.table.len()) != self.batch().checked_mul(self.stride) {
            return bad(format!(
                "{} entries for {} sequences of stride {}",
                self.table.len(),
                self.batch(),
                self.stride
            ));
        }
        let mut owner: HashMap<i32, (usize, usize)> = HashMap::new();
        for (b, &len) in self.kv_lens.iter().enumerate() {
            let Ok(kv_len) = usize::try_from(len) else {
                return bad(format!("sequence {b} has negative length {len}"));
            };
            if self.ring_pages == 0 && page_size.pages_for(kv_len) > self.stride {
                return bad(format!(
                    "sequence {b} has {kv_len} keys, more than {} pages of {} tokens hold",
                    self.stride, self.page_size
                ));
            }
            let row = &self.table[b * self.stride..(b + 1) * self.stride];
            for (slot, &id) in row.iter().enumerate().take(used_slots(
                kv_len,
                page_size,
                self.sink_pages,
                self.ring_pages,
            )) {
                if id < 0 || id as usize >= num_pages {
                    return bad(format!(
                        "sequence {b} slot {slot} names page {id}, outside the pool of {num_pages}"
                    ));
                }
                if let Some((b0, s0)) = owner.insert(id, (b, slot)) {
                    return bad(format!("page {id} is used twice (sequence {b0} slot {s0}, sequence {b} slot {slot})"));
                }
            }
        }
        Ok(())
    }

    /// The layout half of the table as [`AttnPlan::run_emulated_paged`](crate::AttnPlan::run_emulated_paged)
    /// and the CUDA paged path take it.
    pub fn paged_layout(&self) -> PagedLayout {
        PagedLayout {
            page_size: self.page_size,
            block_table_stride: self.stride,
            sink_pages: self.sink_pages,
            ring_pages: self.ring_pages,
        }
    }

    /// The `SaPagedKv` of this table for pages of `layout` (validate the table first). The
    /// pointers (`k_pages`, `v_pages`, `block_table`) are null: the launcher sets them to the
    /// device copies it owns.
    pub fn ffi_params(&self, layout: &PageLayout) -> Result<SaPagedKv> {
        let page_size = PageSize::new(self.page_size)?;
        if layout.page_size != page_size {
            return Err(Error::Shape(format!(
                "block table pages hold {} tokens, the page layout {}",
                self.page_size,
                layout.page_size.get()
            )));
        }
        let i32_of = |what: &str, v: usize| {
            i32::try_from(v)
                .map_err(|_| Error::Cache(format!("block table: {what} {v} does not fit i32")))
        };
        let i64_of = |what: &str, v: usize| {
            i64::try_from(v)
                .map_err(|_| Error::Shape(format!("page layout: {what} {v} does not fit i64")))
        };
        Ok(SaPagedKv {
            k_pages: std::ptr::null(),
            v_pages: std::ptr::null(),
            block_table: std::ptr::null(),
            page_stride: i64_of("page stride", layout.page_stride())?,
            page_head_stride: i64_of("page head stride", layout.page_head_stride())?,
            block_table_stride: i32_of("stride", self.stride)?,
            page_size: page_size.get() as i32,
            log2_page_size: page_size.log2() as i32,
            sink_pages: i32_of("sink_pages", self.sink_pages)?,
            ring_pages: i32_of("ring_pages", self.ring_pages)?,
            num_pages: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BlockTable {
        // Two sequences, page 8, one sink page and a ring of two: stride 3.
        BlockTable {
            table: vec![0, 1, 2, 3, 4, -1],
            stride: 3,
            kv_lens: vec![40, 9],
            sink_pages: 1,
            ring_pages: 2,
            page_size: 8,
        }
    }

    #[test]
    fn valid_table_and_lookups() {
        let t = table();
        t.validate(5).unwrap();
        // Row 0: 40 keys = logical pages 0..5; ring holds pages 3 (slot 2) and 4 (slot 1).
        assert_eq!(t.page_of(0, 0), Some(0));
        assert_eq!(t.page_of(0, 8), None);
        assert_eq!(t.page_of(0, 24), Some(1)); // logical page 3 -> slot 1
        assert_eq!(t.page_of(0, 39), Some(2)); // logical page 4 -> slot 2
        assert_eq!(t.page_of(0, 40), None);
        assert_eq!(t.page_of(1, 8), Some(4));
        assert_eq!(t.page_of(2, 0), None);
    }

    #[test]
    fn malformed_tables() {
        let cases: Vec<(&str, BlockTable, usize)> = vec![
            ("page out of range", table(), 4),
            (
                "negative page",
                BlockTable {
                    table: vec![0, 1, 2, 3, -1, -1],
                    ..table()
                },
                5,
            ),
            (
                "page twice across rows",
                BlockTable {
                    table: vec![0, 1, 2, 3, 0, -1],
                    ..table()
                },
                5,
            ),
            (
                "page twice in a row",
                BlockTable {
                    table: vec![0, 1, 1, 3, 4, -1],
                    ..table()
                },
                5,
            ),
            (
                "stride too small",
                BlockTable {
                    table: vec![0, 1, 3, 4],
                    stride: 2,
                    ..table()
                },
                5,
            ),
            (
                "zero stride",
                BlockTable {
                    table: vec![],
                    stride: 0,
                    ..table()
                },
                5,
            ),
            (
                "length mismatch",
                BlockTable {
                    table: vec![0, 1, 2, 3, 4],
                    ..table()
                },
                5,
            ),
            (
                "negative length",
                BlockTable {
                    kv_lens: vec![40, -1],
                    ..table()
                },
                5,
            ),
            (
                "bad page size",
                BlockTable {
                    page_size: 12,
                    ..table()
                },
                5,
            ),
            (
                "beyond capacity",
                BlockTable {
                    ring_pages: 0,
                    sink_pages: 0,
                    kv_lens: vec![25, 9],
                    ..table()
                },
                5,
            ),
            (
                "sinks beyond i32",
                BlockTable {
                    sink_pages: usize::MAX,
                    ..table()
                },
                5,
            ),
        ];
        for (what, t, pages) in cases {
            assert!(matches!(t.validate(pages), Err(Error::Cache(_))), "{what}");
        }
        // Padding is never read, so -1 and duplicates there are fine.
        BlockTable {
            table: vec![0, 1, 2, 3, 4, 0],
            ..table()
        }
        .validate(5)
        .unwrap();
        BlockTable {
            ring_pages: 0,
            sink_pages: 0,
            kv_lens: vec![24, 9],
            ..table()
        }
        .validate(5)
        .unwrap();
    }

    #[test]
    fn ffi_params() {
        let layout = PageLayout {
            num_kv_heads: 2,
            page_size: PageSize::new(8).unwrap(),
            head_dim: 64,
        };
        let p = table().ffi_params(&layout).unwrap();
        assert_eq!((p.page_stride, p.page_head_stride), (1024, 512));
        assert_eq!(
            (p.block_table_stride, p.page_size, p.log2_page_size),
            (3, 8, 3)
        );
        assert_eq!((p.sink_pages, p.ring_pages), (1, 2));
        assert!(p.block_table.is_null() && p.k_pages.is_null() && p.v_pages.is_null());
        let other = PageLayout {
            page_size: PageSize::new(16).unwrap(),
            ..layout
        };
        assert!(matches!(table().ffi_params(&other), Err(Error::Shape(_))));
    }
}
