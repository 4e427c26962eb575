//! The cache bookkeeping: page pools, sequences, appends, block tables and accounting. It
//! owns no K/V memory; a storage ([`HostKvStorage`](super::HostKvStorage) here, device pages
//! later) holds the pages this hands out.

use std::collections::BTreeMap;

use super::capacity::LayerCapacity;
use super::layout::{slot_of_logical_page, PageLayout, PageSize};
use super::summary::SummaryLayout;
use super::table::{used_slots, BlockTable};
use crate::error::{Error, Result};
use crate::pattern::LayerPlan;
use crate::shape::DType;

/// How many pages each layer's pool holds. Pools are per layer because a windowed layer
/// needs far fewer pages than a dense one (a Gemma-3 cache would waste most of a uniform
/// pool); every pool is fixed at construction, as device memory will be.
/// A layer without KV ([`LayerCapacity::NoKv`]) has no pages whatever the pool size says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSize {
    /// The same number of pages in every layer.
    PagesPerLayer(usize),
    /// Enough pages in each layer for this many sequences of `max_seq_len` tokens: a layer
    /// gets `n * pages_per_sequence` (sink and ring pages for a windowed layer,
    /// `ceil(max_seq_len / page_size)` for a full one).
    Sequences(usize),
    /// Pages of layer `l` = entry `l` (one entry per layer).
    PerLayer(Vec<usize>),
}

/// The shape and limits of a [`KvCache`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Layers (each has its own pool and block tables).
    pub num_layers: usize,
    /// Key/value heads per token.
    pub num_kv_heads: usize,
    /// Elements per head and token.
    pub head_dim: usize,
    /// Element type of the pages (2 bytes).
    pub dtype: DType,
    /// Tokens per page: a power of two in `8..=256`.
    pub page_size: usize,
    /// Longest sequence (keys) the cache accepts; at most `i32::MAX`.
    pub max_seq_len: usize,
    /// Most tokens one [`KvCache::reserve_append`] may add (and one step may attend as
    /// queries): 1 for pure decode, the chunk size for chunked prefill. Ring sizes depend on
    /// it (see [`LayerCapacity::from_patterns`]).
    pub max_chunk: usize,
    /// Pages per layer.
    pub pool: PoolSize,
}

impl KvCacheConfig {
    /// Bytes of one element (`dtype`).
    pub fn elem_bytes(&self) -> usize {
        match self.dtype {
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// A sequence of a [`KvCache`]. Ids are never reused, so a freed id stays unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(pub u64);

/// Where one new token position lands in a layer: its physical page and its row in that page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenSlot {
    /// Physical page id in the layer's pool.
    pub page: u32,
    /// Row in the page (`position % page_size`).
    pub offset: u32,
}

/// The positions one [`KvCache::reserve_append`] reserved, and where each lands per layer
/// (what an append kernel, or [`HostKvStorage::write_kv`](super::HostKvStorage::write_kv),
/// writes to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The sequence appended to.
    pub seq: SeqId,
    /// First new position.
    pub start: usize,
    /// Number of new positions.
    pub len: usize,
    /// `layers[l][t]`: the slot of position `start + t` in layer `l` (empty for a layer
    /// without KV, [`LayerCapacity::NoKv`]).
    pub layers: Vec<Vec<TokenSlot>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LayerState {
    /// The layer's page shape (kv heads and head_dim may differ between layers).
    layout: PageLayout,
    /// Bytes of one page of K and V together.
    bytes_per_page: u64,
    capacity: LayerCapacity,
    /// Block-table slots per sequence.
    stride: usize,
    num_pages: usize,
    /// Free page ids; the next allocation pops from the end.
    free: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Sequence {
    len: usize,
    /// `pages[l][slot]`: the physical page of block-table slot `slot` in layer `l`. Always
    /// `used_slots(len)` long: slots are taken in order and never given back until freed.
    pages: Vec<Vec<u32>>,
}

/// A paged KV cache's bookkeeping: one fixed page pool per layer, sequences of different
/// lengths, and their block tables in the exact meaning of `SaPagedKv`.
///
/// Windowed layers ([`LayerCapacity::Windowed`]) keep their sink pages and a ring: once a
/// sequence's ring is full, appends overwrite its oldest pages in place and take no new page.
/// Full layers keep every page up to `max_seq_len`. Layers that are not softmax attention
/// ([`LayerCapacity::NoKv`]) hold no page: appends place nothing there and they have no block
/// table. Every operation validates first and
/// changes nothing when it fails (`Error::Cache` for cache state, `Error::Shape` for
/// shapes); `Clone + PartialEq` make that checkable.
///
/// ```
/// use sparse_attn::kv_cache::{KvCache, KvCacheConfig, PoolSize};
/// use sparse_attn::pattern::{LayerPlan, Pattern};
/// use sparse_attn::DType;
///
/// let plan = LayerPlan::interleaved(6, Pattern::causal_window(1024)?, Pattern::causal(), 5)?;
/// let config = KvCacheConfig {
///     num_layers: 6, num_kv_heads: 1, head_dim: 256, dtype: DType::BF16, page_size: 16,
///     max_seq_len: 32768, max_chunk: 1, pool: PoolSize::Sequences(2),
/// };
/// let mut cache = KvCache::for_plan(config, &plan)?;
/// let seq = cache.add_sequence();
/// let placement = cache.reserve_append(seq, 1)?; // position 0 of every layer
/// assert_eq!(placement.layers.len(), 6);
/// let table = cache.block_table(5, &[seq])?; // the global layer
/// table.validate(cache.num_pages(5)?)?;
/// # Ok::<(), sparse_attn::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCache {
    config: KvCacheConfig,
    page_size: PageSize,
    layers: Vec<LayerState>,
    seqs: BTreeMap<SeqId, Sequence>,
    next_seq: u64,
    /// The adaptive block B the storages keep key summaries for (`None`: no summaries).
    summary_for_block: Option<usize>,
}

fn shape(m: String) -> Error {
    Error::Shape(format!("KV cache: {m}"))
}

impl KvCache {
    /// A cache whose layer `l` has capacity `capacities[l]` (one per layer).
    ///
    /// Errors: zero layers, heads or head_dim, or `capacities` of the wrong length
    /// (`Error::Shape`); a bad page size, `max_seq_len` outside `1..=i32::MAX`,
    /// `max_chunk == 0`, a ring of 0 pages, a pool over `i32::MAX` pages or sizes that
    /// overflow (`Error::Cache`).
    pub fn new(config: KvCacheConfig, capacities: Vec<LayerCapacity>) -> Result<Self> {
        let shapes = vec![(config.num_kv_heads, config.head_dim); config.num_layers];
        Self::with_shapes(config, capacities, shapes)
    }

    /// [`KvCache::new`] with layer `l`'s pages holding `shapes[l] = (num_kv_heads, head_dim)`
    /// (Gemma 4's local and global layers differ in head_dim); the config's `num_kv_heads`
    /// and `head_dim` are then only the default [`KvCache::for_plan`] fills in.
    ///
    /// Errors: those of [`KvCache::new`]; `shapes` of the wrong length or with a zero
    /// (`Error::Shape`).
    pub fn with_shapes(
        config: KvCacheConfig,
        capacities: Vec<LayerCapacity>,
        shapes: Vec<(usize, usize)>,
    ) -> Result<Self> {
        if config.num_layers == 0 || config.num_kv_heads == 0 || config.head_dim == 0 {
            return Err(shape(format!(
                "num_layers {}, num_kv_heads {} and head_dim {} must all be at least 1",
                config.num_layers, config.num_kv_heads, config.head_dim
            )));
        }
        if shapes.len() != config.num_layers {
            return Err(shape(format!(
                "{} layer shapes for {} layers",
                shapes.len(),
                config.num_layers
            )));
        }
        if let Some((l, (hk, d))) = shapes
            .iter()
            .enumerate()
            .find(|(_, &(hk, d))| hk == 0 || d == 0)
        {
            return Err(shape(format!(
                "layer {l}: num_kv_heads {hk} and head_dim {d} must both be at least 1"
            )));
        }
        if capacities.len() != config.num_layers {
            return Err(shape(format!(
                "{} layer capacities for {} layers",
                capacities.len(),
                config.num_layers
            )));
        }
        let page_size = PageSize::new(config.page_size)?;
        if config.max_seq_len == 0 || config.max_seq_len > i32::MAX as usize {
            return Err(Error::Cache(format!(
                "max_seq_len {} must lie in 1..=i32::MAX",
                config.max_seq_len
            )));
        }
        if config.max_chunk == 0 {
            return Err(Error::Cache("max_chunk must be at least 1".into()));
        }
        let overflow = || Error::Cache("page pool size overflows".into());
        if let PoolSize::PerLayer(v) = &config.pool {
            if v.len() != config.num_layers {
                return Err(shape(format!(
                    "{} pool sizes for {} layers",
                    v.len(),
                    config.num_layers
                )));
            }
        }
        let max_pages = page_size.pages_for(config.max_seq_len);
        let mut layers = Vec::with_capacity(config.num_layers);
        for (l, (cap, (num_kv_heads, head_dim))) in capacities.into_iter().zip(shapes).enumerate() {
            let bytes_per_page = [num_kv_heads, head_dim, page_size.get(), config.elem_bytes()]
                .iter()
                .try_fold(2u64, |acc, &x| acc.checked_mul(x as u64))
                .ok_or_else(overflow)?;
            if let LayerCapacity::Windowed { ring_pages: 0, .. } = cap {
                return Err(Error::Cache(format!(
                    "layer {l}: a ring needs at least one page"
                )));
            }
            let capacity = cap.normalized(max_pages);
            let stride = capacity.pages_per_sequence(max_pages);
            let num_pages = match &config.pool {
                _ if capacity == LayerCapacity::NoKv => 0,
                PoolSize::PagesPerLayer(n) => *n,
                PoolSize::Sequences(n) => n.checked_mul(stride).ok_or_else(overflow)?,
                PoolSize::PerLayer(v) => v[l],
            };
            if num_pages > i32::MAX as usize {
                return Err(Error::Cache(format!(
                    "layer {l}: {num_pages} pages exceed i32::MAX"
                )));
            }
            (num_pages as u64)
                .checked_mul(bytes_per_page)
                .ok_or_else(overflow)?;
            layers.push(LayerState {
                layout: PageLayout {
                    num_kv_heads,
                    page_size,
                    head_dim,
                },
                bytes_per_page,
                capacity,
                stride,
                num_pages,
                free: (0..num_pages as u32).rev().collect(),
            });
        }
        Ok(KvCache {
            config,
            page_size,
            layers,
            seqs: BTreeMap::new(),
            next_seq: 0,
            summary_for_block: None,
        })
    }

    /// A cache whose capacities come from `plan` via [`LayerCapacity::from_plan`] with the
    /// config's `page_size` and `max_chunk`: attention layers from their head patterns, layers
    /// that are not softmax attention with no pages ([`LayerCapacity::NoKv`]). An attention
    /// layer that declares its own head_dim or kv heads (Gemma 4's global layers, say) gets
    /// pages of that shape; the others take the config's.
    ///
    /// Errors: those of [`KvCache::with_shapes`]; a plan with another layer count
    /// (`Error::Shape`).
    pub fn for_plan(config: KvCacheConfig, plan: &LayerPlan) -> Result<Self> {
        if plan.layers.len() != config.num_layers {
            return Err(shape(format!(
                "layer plan has {} layers, the cache {}",
                plan.layers.len(),
                config.num_layers
            )));
        }
        let mut shapes = vec![(config.num_kv_heads, config.head_dim); config.num_layers];
        for (l, a) in plan.attention_layers() {
            shapes[l] = (
                a.num_kv_heads.unwrap_or(config.num_kv_heads),
                a.head_dim.unwrap_or(config.head_dim),
            );
        }
        let page_size = PageSize::new(config.page_size)?;
        let caps = LayerCapacity::from_plan(plan, page_size, config.max_chunk)?;
        KvCache::with_shapes(config, caps, shapes)
    }

    /// The same cache keeping block summaries of the keys for content-adaptive selection of
    /// block `block` (a power of two in `16..=4096`, else `Error::Pattern`): storages made
    /// from it ([`HostKvStorage`](super::HostKvStorage), [`DeviceKvStorage`](super::DeviceKvStorage))
    /// allocate a summary pool per layer at the granularity
    /// [`summary_block`](super::summary::summary_block)`(block, page_size)` and their appends
    /// keep it current. Fixed before any storage exists; a call on a cache with sequences
    /// is an `Error::Cache`.
    pub fn with_summaries(mut self, block: usize) -> Result<Self> {
        super::summary::check_adaptive_block(block)?;
        if !self.seqs.is_empty() {
            return Err(Error::Cache(
                "summaries must be chosen before any sequence is added".into(),
            ));
        }
        self.summary_for_block = Some(block);
        Ok(self)
    }

    /// The adaptive block the cache keeps summaries for (`None`: it keeps none).
    pub fn summary_block(&self) -> Option<usize> {
        self.summary_for_block
    }

    /// The summary layout of `layer` (`None` when the cache keeps no summaries or the layer
    /// has no pages). Errors: a layer out of range (`Error::Shape`).
    pub fn summary_layout(&self, layer: usize) -> Result<Option<SummaryLayout>> {
        let st = self.layer(layer)?;
        match self.summary_for_block {
            Some(b) if st.capacity != LayerCapacity::NoKv => {
                Ok(Some(SummaryLayout::paged(&st.layout, b)?))
            }
            _ => Ok(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KvCacheConfig {
        &self.config
    }

    /// The validated page size.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The layout of `layer`'s K and V pools.
    pub fn layout(&self, layer: usize) -> Result<PageLayout> {
        Ok(self.layer(layer)?.layout)
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn layer(&self, layer: usize) -> Result<&LayerState> {
        self.layers.get(layer).ok_or_else(|| {
            shape(format!(
                "layer {layer} out of range (the cache has {})",
                self.layers.len()
            ))
        })
    }

    /// The capacity of `layer` (a ring that can never wrap within `max_seq_len` is reported
    /// as [`LayerCapacity::Full`]: the mapping is the same).
    pub fn capacity(&self, layer: usize) -> Result<LayerCapacity> {
        Ok(self.layer(layer)?.capacity)
    }

    /// Block-table slots per sequence in `layer`.
    pub fn stride(&self, layer: usize) -> Result<usize> {
        Ok(self.layer(layer)?.stride)
    }

    /// Pages of `layer`'s pool.
    pub fn num_pages(&self, layer: usize) -> Result<usize> {
        Ok(self.layer(layer)?.num_pages)
    }

    /// Free pages of `layer`'s pool.
    pub fn free_pages(&self, layer: usize) -> Result<usize> {
        Ok(self.layer(layer)?.free.len())
    }

    /// Pages of `layer` held by live sequences.
    pub fn pages_used(&self, layer: usize) -> Result<usize> {
        let l = self.layer(layer)?;
        Ok(l.num_pages - l.free.len())
    }

    /// Bytes of one page of `layer`'s K and V together: `2 * num_kv_heads * page_size *
    /// head_dim * elem_bytes`.
    pub fn bytes_per_page(&self, layer: usize) -> Result<u64> {
        Ok(self.layer(layer)?.bytes_per_page)
    }

    /// Bytes of K and V pages held by live sequences in `layer`.
    pub fn bytes_used(&self, layer: usize) -> Result<u64> {
        Ok(self.pages_used(layer)? as u64 * self.layer(layer)?.bytes_per_page)
    }

    /// Bytes of `layer`'s whole pool (what a storage allocates).
    pub fn pool_bytes(&self, layer: usize) -> Result<u64> {
        Ok(self.num_pages(layer)? as u64 * self.layer(layer)?.bytes_per_page)
    }

    /// Pages held by live sequences over all layers.
    pub fn total_pages_used(&self) -> usize {
        self.layers.iter().map(|l| l.num_pages - l.free.len()).sum()
    }

    /// Bytes held by live sequences over all layers.
    pub fn total_bytes_used(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| (l.num_pages - l.free.len()) as u64 * l.bytes_per_page)
            .sum()
    }

    /// Bytes a dense, unpaged cache of the same shape needs for `seq_tokens` tokens (all
    /// layers, K and V): the sum over layers of `2 * seq_tokens * num_kv_heads * head_dim *
    /// elem_bytes` (saturating).
    pub fn dense_bytes(&self, seq_tokens: usize) -> u64 {
        let e = self.config.elem_bytes();
        self.layers
            .iter()
            .map(|l| {
                [seq_tokens, l.layout.num_kv_heads, l.layout.head_dim, e]
                    .iter()
                    .fold(2u64, |acc, &x| acc.saturating_mul(x as u64))
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_seq);
        self.next_seq += 1;
        self.seqs.insert(
            id,
            Sequence {
                len: 0,
                pages: vec![Vec::new(); self.layers.len()],
            },
        );
        id
    }

    /// The live sequences, in creation order.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    fn seq(&self, seq: SeqId) -> Result<&Sequence> {
        self.seqs
            .get(&seq)
            .ok_or_else(|| Error::Cache(format!("unknown or freed sequence {}", seq.0)))
    }

    /// Tokens appended to `seq` so far.
    pub fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seq(seq)?.len)
    }

    /// Ends `seq` and returns its pages to the pools (they are reused by later appends).
    pub fn free_sequence(&mut self, seq: SeqId) -> Result<()> {
        let s = self
            .seqs
            .remove(&seq)
            .ok_or_else(|| Error::Cache(format!("unknown or freed sequence {}", seq.0)))?;
        for (layer, pages) in self.layers.iter_mut().zip(s.pages) {
            layer.free.extend(pages.into_iter().rev());
        }
        Ok(())
    }

    /// Reserves positions `len .. len + n_tokens` of `seq` in every layer: allocates the
    /// pages they need (a ring layer takes none once its ring is full; sink pages are taken
    /// once) and returns where each position lands. The sequence's length becomes
    /// `len + n_tokens`; the caller then writes the K/V rows there.
    ///
    /// All or nothing: an unknown or freed sequence, `n_tokens > max_chunk`, a length past
    /// `max_seq_len`, or a layer whose pool has too few free pages is an `Error::Cache` and
    /// the cache is exactly as before.
    pub fn reserve_append(&mut self, seq: SeqId, n_tokens: usize) -> Result<Placement> {
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or_else(|| Error::Cache(format!("unknown or freed sequence {}", seq.0)))?;
        if n_tokens > self.config.max_chunk {
            return Err(Error::Cache(format!(
                "appending {n_tokens} tokens at once exceeds max_chunk {}",
                self.config.max_chunk
            )));
        }
        let new_len = s.len + n_tokens;
        if new_len > self.config.max_seq_len {
            return Err(Error::Cache(format!(
                "sequence {} would hold {new_len} tokens, past max_seq_len {}",
                seq.0, self.config.max_seq_len
            )));
        }
        let ps = self.page_size;
        let need = |layer: &LayerState, pages: &Vec<u32>| {
            if layer.capacity == LayerCapacity::NoKv {
                return 0;
            }
            let (sink, ring) = layer.capacity.sink_ring();
            used_slots(new_len, ps, sink, ring) - pages.len()
        };
        for (l, (layer, pages)) in self.layers.iter().zip(&s.pages).enumerate() {
            let n = need(layer, pages);
            if n > layer.free.len() {
                return Err(Error::Cache(format!(
                    "layer {l}: page pool exhausted ({n} more pages needed, {} of {} free)",
                    layer.free.len(),
                    layer.num_pages
                )));
            }
        }
        let start = s.len;
        let mut placed = Vec::with_capacity(self.layers.len());
        for (layer, pages) in self.layers.iter_mut().zip(s.pages.iter_mut()) {
            if layer.capacity == LayerCapacity::NoKv {
                placed.push(Vec::new());
                continue;
            }
            let n = need(layer, pages);
            let from = layer.free.len() - n;
            pages.extend(layer.free.drain(from..).rev());
            let (sink, ring) = layer.capacity.sink_ring();
            placed.push(
                (start..new_len)
                    .map(|t| TokenSlot {
                        page: pages[slot_of_logical_page(t / ps.get(), sink, ring)],
                        offset: (t % ps.get()) as u32,
                    })
                    .collect(),
            );
        }
        s.len = new_len;
        Ok(Placement {
            seq,
            start,
            len: n_tokens,
            layers: placed,
        })
    }

    /// The block table of `layer` for the sequences `seqs` (row `b` = `seqs[b]`), with the
    /// layer's `sink_pages` / `ring_pages` and unused slots set to `-1`. It passes
    /// [`BlockTable::validate`] against the layer's pool.
    ///
    /// Errors: a layer out of range (`Error::Shape`); a layer without KV
    /// ([`LayerCapacity::NoKv`]: no kernel attends it), an unknown, freed or repeated sequence
    /// (`Error::Cache`: its pages would appear twice).
    pub fn block_table(&self, layer: usize, seqs: &[SeqId]) -> Result<BlockTable> {
        let st = self.layer(layer)?;
        if st.capacity == LayerCapacity::NoKv {
            return Err(Error::Cache(format!(
                "layer {layer} keeps no KV cache (it is not softmax attention): no block table"
            )));
        }
        let mut table = vec![-1i32; seqs.len() * st.stride];
        let mut kv_lens = Vec::with_capacity(seqs.len());
        for (b, &id) in seqs.iter().enumerate() {
            if seqs[..b].contains(&id) {
                return Err(Error::Cache(format!(
                    "sequence {} appears twice in a batch",
                    id.0
                )));
            }
            let s = self.seq(id)?;
            for (dst, &p) in table[b * st.stride..].iter_mut().zip(&s.pages[layer]) {
                *dst = p as i32;
            }
            kv_lens.push(s.len as i32);
        }
        let (sink_pages, ring_pages) = st.capacity.sink_ring();
        Ok(BlockTable {
            table,
            stride: st.stride,
            kv_lens,
            sink_pages,
            ring_pages,
            page_size: self.page_size.get(),
        })
    }
}
