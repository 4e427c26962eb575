//! Host (CPU) storage of the pages, for the emulator and the tests. It only follows the
//! placements and block tables the bookkeeping hands out, so a device storage (cudarc page
//! buffers) can sit next to it without touching [`KvCache`].

use super::append::{append_emulated_with, placement_slots};
use super::cache::{KvCache, Placement, SeqId};
use super::layout::{resident, slot_of_logical_page, PageLayout, PageSize};
use super::summary::{append_twin, SummaryLayout};
use super::table::BlockTable;
use crate::attention::{Element, PagedKv};
use crate::error::{Error, Result};

/// `Error::Shape` unless storage elements of type `T` match the cache's dtype.
pub(crate) fn check_dtype<T: Element>(cache: &KvCache) -> Result<()> {
    if T::DTYPE != cache.config().dtype {
        return Err(Error::Shape(format!(
            "KV cache holds {}, the storage {}",
            cache.config().dtype.name(),
            T::DTYPE.name()
        )));
    }
    Ok(())
}

/// One layer's K and V pools, each `[num_pages, num_kv_heads, page_size, head_dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostPages<T> {
    /// Key pages.
    pub k: Vec<T>,
    /// Value pages.
    pub v: Vec<T>,
}

/// The K/V pages of every layer of a [`KvCache`], in host memory (zero-initialised).
#[derive(Clone, Debug, PartialEq)]
pub struct HostKvStorage<T> {
    /// Per layer: its page shape and its pools.
    layouts: Vec<PageLayout>,
    layers: Vec<HostPages<T>>,
    /// Per layer: the block summaries (f32 twin of the append kernel's) when the cache keeps
    /// them.
    summaries: Vec<Option<(SummaryLayout, Vec<f32>)>>,
}

impl<T: Element> HostKvStorage<T> {
    /// Pools sized like `cache`'s. `T` must be the cache's dtype (`Error::Shape`).
    pub fn new(cache: &KvCache) -> Result<Self> {
        check_dtype::<T>(cache)?;
        let layouts = (0..cache.num_layers())
            .map(|l| cache.layout(l))
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..cache.num_layers())
            .map(|l| {
                let n = cache.num_pages(l)? * layouts[l].page_stride();
                Ok(HostPages {
                    k: vec![T::default(); n],
                    v: vec![T::default(); n],
                })
            })
            .collect::<Result<_>>()?;
        let summaries = (0..cache.num_layers())
            .map(|l| {
                Ok(cache
                    .summary_layout(l)?
                    .map(|s| (s, s.empty_pool(cache.num_pages(l).unwrap_or(0)))))
            })
            .collect::<Result<_>>()?;
        Ok(HostKvStorage {
            layouts,
            layers,
            summaries,
        })
    }

    /// The block summaries of `layer` (`None` when the cache keeps none), kept current by
    /// [`HostKvStorage::write_kv`] exactly as the append kernel keeps a device pool.
    pub fn summaries(&self, layer: usize) -> Option<(&SummaryLayout, &[f32])> {
        self.summaries
            .get(layer)
            .and_then(|s| s.as_ref().map(|(l, p)| (l, p.as_slice())))
    }

    /// The page layout of `layer`.
    pub fn layout(&self, layer: usize) -> Result<PageLayout> {
        self.pages(layer)?;
        Ok(self.layouts[layer])
    }

    /// The pools of `layer`, if it exists.
    pub fn layer(&self, layer: usize) -> Option<&HostPages<T>> {
        self.layers.get(layer)
    }

    fn pages(&self, layer: usize) -> Result<&HostPages<T>> {
        self.layers.get(layer).ok_or_else(|| {
            Error::Shape(format!(
                "layer {layer} out of range (the storage has {})",
                self.layers.len()
            ))
        })
    }

    fn num_pages(&self, layer: usize) -> Result<usize> {
        Ok(self.pages(layer)?.k.len() / self.layouts[layer].page_stride())
    }

    /// Writes the K and V rows of `placement`'s positions into `layer`: `k_rows`, `v_rows`
    /// are `[placement.len, num_kv_heads, head_dim]`. Checks everything before writing
    /// (`Error::Shape` for lengths and layers, `Error::Cache` for slots outside the pool).
    pub fn write_kv(
        &mut self,
        layer: usize,
        placement: &Placement,
        k_rows: &[T],
        v_rows: &[T],
    ) -> Result<()> {
        let num_pages = self.num_pages(layer)?;
        let layout = self.layouts[layer];
        let slots = placement.layers.get(layer).ok_or_else(|| {
            Error::Shape(format!(
                "placement has no layer {layer} ({} layers)",
                placement.layers.len()
            ))
        })?;
        let (h, d, ps) = (layout.num_kv_heads, layout.head_dim, layout.page_size.get());
        let row = h * d;
        if slots.len() != placement.len
            || k_rows.len() != placement.len * row
            || v_rows.len() != placement.len * row
        {
            return Err(Error::Shape(format!(
                "write_kv: {} positions need {} elements each of k and v (got {} slots, {} and {})",
                placement.len,
                placement.len * row,
                slots.len(),
                k_rows.len(),
                v_rows.len()
            )));
        }
        if let Some(s) = slots
            .iter()
            .find(|s| s.page as usize >= num_pages || s.offset as usize >= ps)
        {
            return Err(Error::Cache(format!(
                "write_kv: slot (page {}, row {}) outside a pool of {num_pages} pages of {ps} rows",
                s.page, s.offset
            )));
        }
        if let Some((s, pool)) = self.summaries.get_mut(layer).and_then(|s| s.as_mut()) {
            let at: Vec<(usize, usize)> = slots
                .iter()
                .map(|s| (s.page as usize, s.offset as usize))
                .collect();
            append_twin(s, pool, &at, k_rows);
        }
        let pages = &mut self.layers[layer];
        for (t, s) in slots.iter().enumerate() {
            for head in 0..h {
                let dst = layout.element_offset(s.page as usize, head, s.offset as usize, 0);
                let src = t * row + head * d;
                pages.k[dst..dst + d].copy_from_slice(&k_rows[src..src + d]);
                pages.v[dst..dst + d].copy_from_slice(&v_rows[src..src + d]);
            }
        }
        Ok(())
    }

    /// Writes the K and V rows of `placements` (in order; `k_rows`, `v_rows` their rows
    /// concatenated, `[Σ len, num_kv_heads, head_dim]`) into `layer` with the append kernel
    /// (`kernels/kv_append.cu`) on the emulator, one launch, which also keeps the layer's
    /// summaries current: the device path whose f32 twin is [`HostKvStorage::write_kv`].
    /// Checks everything before writing (`Error::Shape` for lengths and layers,
    /// `Error::Cache` for slots outside the pool or breaking the kernel's one-writer rule).
    pub fn append_emulated(
        &mut self,
        layer: usize,
        placements: &[&Placement],
        k_rows: &[T],
        v_rows: &[T],
    ) -> Result<()> {
        self.append_emulated_keeping(layer, placements, k_rows, v_rows, true)
    }

    /// [`HostKvStorage::append_emulated`]; `keep_summaries == false` leaves the summaries as
    /// they are (a stale-summary canary of the adaptive decode tests).
    pub(crate) fn append_emulated_keeping(
        &mut self,
        layer: usize,
        placements: &[&Placement],
        k_rows: &[T],
        v_rows: &[T],
        keep_summaries: bool,
    ) -> Result<()> {
        let num_pages = self.num_pages(layer)?;
        let layout = self.layouts[layer];
        let mut slots = Vec::new();
        for p in placements {
            slots.extend(placement_slots(p, layer, &layout, num_pages)?);
        }
        let n: usize = placements.iter().map(|p| p.len).sum();
        if slots.len() != 2 * n {
            return Err(Error::Shape(format!(
                "append: placements of {n} positions list {} slots in layer {layer}",
                slots.len() / 2
            )));
        }
        let summaries = match self.summaries.get_mut(layer).and_then(|s| s.as_mut()) {
            Some((s, pool)) if keep_summaries => Some((&*s, pool.as_mut_slice())),
            _ => None,
        };
        let pages = &mut self.layers[layer];
        append_emulated_with(
            &layout,
            &mut pages.k,
            &mut pages.v,
            summaries,
            &slots,
            k_rows,
            v_rows,
        )
    }

    /// Reads row `b` of `table` (a block table of `layer`) back into contiguous
    /// `[kv_len, num_kv_heads, head_dim]` K and V, following the `SaPagedKv` mapping exactly;
    /// positions no longer resident are zero. The table is validated first.
    pub fn gather_row(
        &self,
        layer: usize,
        table: &BlockTable,
        b: usize,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let pages = self.pages(layer)?;
        let layout = self.layouts[layer];
        table.validate(self.num_pages(layer)?)?;
        if PageSize::new(table.page_size)? != layout.page_size {
            return Err(Error::Shape(format!(
                "block table pages hold {} tokens, the storage's {}",
                table.page_size,
                layout.page_size.get()
            )));
        }
        let kv_len = *table
            .kv_lens
            .get(b)
            .ok_or_else(|| Error::Shape(format!("block table has no row {b}")))?
            as usize;
        let (h, d, ps) = (layout.num_kv_heads, layout.head_dim, layout.page_size);
        let row = h * d;
        let (mut k, mut v) = (
            vec![T::default(); kv_len * row],
            vec![T::default(); kv_len * row],
        );
        for j in
            (0..kv_len).filter(|&j| resident(j, kv_len, ps, table.sink_pages, table.ring_pages))
        {
            let slot = slot_of_logical_page(j / ps.get(), table.sink_pages, table.ring_pages);
            let page = table.table[b * table.stride + slot] as usize;
            for head in 0..h {
                let src = layout.element_offset(page, head, j % ps.get(), 0);
                let dst = j * row + head * d;
                k[dst..dst + d].copy_from_slice(&pages.k[src..src + d]);
                v[dst..dst + d].copy_from_slice(&pages.v[src..src + d]);
            }
        }
        Ok((k, v))
    }

    /// `layer`'s pages and `table` (a validated block table of that layer) as the emulator's
    /// paged input ([`AttnPlan::run_emulated_paged`](crate::AttnPlan::run_emulated_paged)).
    pub fn paged_kv<'a>(&'a self, layer: usize, table: &'a BlockTable) -> Result<PagedKv<'a, T>> {
        let pages = self.pages(layer)?;
        let layout = self.layouts[layer];
        table.validate(self.num_pages(layer)?)?;
        if table.page_size != layout.page_size.get() {
            return Err(Error::Shape(format!(
                "block table pages hold {} tokens, the storage's {}",
                table.page_size,
                layout.page_size.get()
            )));
        }
        Ok(PagedKv {
            k_pages: &pages.k,
            v_pages: &pages.v,
            block_table: &table.table,
            layout: table.paged_layout(),
        })
    }

    /// `seq`'s K and V in `layer` as contiguous `[kv_len, num_kv_heads, head_dim]` tensors,
    /// evicted positions zero: the test oracle of the mapping (goes through
    /// [`KvCache::block_table`] and [`HostKvStorage::gather_row`]).
    pub fn gather_contiguous(
        &self,
        cache: &KvCache,
        layer: usize,
        seq: SeqId,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let table = cache.block_table(layer, &[seq])?;
        self.gather_row(layer, &table, 0)
    }
}
