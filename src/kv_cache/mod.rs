//! The paged KV cache (issue #6): page pools per layer, sequences, block tables in the exact
//! meaning of `SaPagedKv` (`kernels/include/sparse_attn/params.h`), and host storage.
//!
//! # Layers
//!
//! - [`layout`]: the pure mapping shared with the kernels (`paged_kv.cuh`): [`PageSize`],
//!   [`slot_of_logical_page`], [`resident`], [`PageLayout`] (`[num_pages, num_kv_heads,
//!   page_size, head_dim]` pages).
//! - [`LayerCapacity`]: what a layer keeps, derived from its head patterns. A layer whose heads
//!   are all causal sinks + sliding windows keeps its sink pages and a ring of recent pages, a
//!   causal chunked layer (Llama 4) a ring of one chunk, a layer that is not softmax attention
//!   (Mamba, linear attention) nothing ([`LayerCapacity::NoKv`]); anything else keeps every
//!   page.
//! - [`KvCache`]: the bookkeeping (no K/V memory): one fixed pool per layer with a free list,
//!   sequences ([`SeqId`]), all-or-nothing [`KvCache::reserve_append`] returning a
//!   [`Placement`] per layer, [`KvCache::block_table`] and per-layer page/byte accounting.
//! - [`summary`]: block summaries of the keys (sum, channel min and max per summary block)
//!   beside the pages, for content-adaptive scores: [`SummaryLayout`], the f32 twins and the
//!   summarize kernel's launches; a cache made [`KvCache::with_summaries`] has its storages
//!   keep them current on every append.
//! - [`BlockTable`]: one layer's table for a batch, and [`BlockTable::validate`] for tables
//!   built by hand.
//! - [`HostKvStorage`]: host pages for the emulator and tests ([`HostKvStorage::write_kv`],
//!   [`HostKvStorage::gather_contiguous`]). A device storage follows the same placements.
//! - [`decode_emulated`]: chunked prefill then token-by-token decode of one layer through a
//!   fresh cache on the emulator ([`DecodeConfig`], [`DecodeOutput`]).
//! - [`batching`]: continuous batching over a multi-layer cache (sequences join and leave,
//!   prefill chunks beside decode rows, one run-time plan per layer setting), the core of
//!   `examples/continuous_batching.rs`, with its f64 reference check.
//!
//! Failures are `Error::Cache` (pool exhausted, past `max_seq_len`, unknown sequence,
//! malformed table) or `Error::Shape` (shapes, layer indices), and leave the cache unchanged.

pub mod append;
pub mod batching;
mod cache;
mod capacity;
mod decode;
mod host;
pub mod layout;
pub mod summary;
mod table;

pub use append::DeviceKvStorage;
pub use cache::{KvCache, KvCacheConfig, Placement, PoolSize, SeqId, TokenSlot};
pub use capacity::{LayerCapacity, Retention};
pub use decode::{check_causal, decode_cuda, decode_emulated, DecodeConfig, DecodeOutput};
pub use host::{HostKvStorage, HostPages};
pub use layout::{resident, slot_of_logical_page, PageLayout, PageSize};
pub use summary::{BlockSummary, SummaryLayout};
pub use table::BlockTable;
