//! Sparsity patterns: the pattern language, its compiler to block-sparse metadata, and
//! token-level rendering.
//!
//! # The contract
//!
//! What every pattern means, token by token, is fixed by `docs/patterns.md` (the project's
//! semantic contract, shared with the kernels, the CLI, the reference and the emulator); this
//! module implements it and its tests pin it down. In short:
//!
//! - Query row `i` has position `p = i + kv_len - q_len` (bottom-right aligned, negative when
//!   `q_len > kv_len`); key `j` has position `j`.
//! - A [`Pattern`] is `{"causal": bool, "components": [...]}` and allows
//!   `0 <= j < kv_len and (union of components) and (not causal or j <= p)`; no components
//!   means dense. The [`Component`]s are [`Dense`], [`SlidingWindow`] (`left`/`right`, or
//!   `size` W = the W most recent tokens including the query's own), [`Sinks`],
//!   [`GlobalTokens`], [`Dilated`], [`Chunked`] (Llama 4's chunked local attention,
//!   `floor(p / C) == floor(j / C)`), [`BlockMask`] and [`BigBird`] (random blocks from the
//!   documented generator in [`rng`]).
//! - A [`HeadPatterns`] set is one pattern for all heads or `{"heads": [...]}` with one per
//!   query head; a [`LayerPlan`] is `{"layers": [...]}` with one [`Layer`] per layer: softmax
//!   attention (a set, with per-layer head_dim, kv heads, scale, softcap, learnable sinks and
//!   ALiBi flags when a model sets them) or a layer that is not softmax attention (Mamba,
//!   linear attention: no kernel, no KV pages). [`plans`] builds the plans of Mistral, Gemma
//!   2/3/4, Qwen2, Llama 4, gpt-oss and the hybrids (Jamba, MiniMax-01, Qwen3-Next), also from
//!   a Hugging Face `config.json`.
//!
//! Where the contract is silent this module decides, and says so on the item: `causal` is
//! required in JSON and `components` defaults to `[]`; window bounds and counts must be
//! non-negative and a component must admit something (`size >= 1`, `count >= 1`, `stride >= 1`,
//! non-empty token lists and masks); global tokens must be keys (`< kv_len`) of the problem a
//! pattern is compiled or rendered for; block-mask columns beyond the mask are not allowed,
//! like rows; every integer parameter is at most `i32::MAX`. Bad input is an
//! [`Error::Pattern`](crate::Error::Pattern) (or `Error::Shape` for the problem's shape),
//! never a panic.
//!
//! # Execution
//!
//! [`BlockSparseMeta::compile`] turns a set and a tiling ([`SparseShape`]) into CSR lists of
//! *full* kv tiles (no mask work) and *partial* kv tiles (token-exact mask) per query tile, in
//! time proportional to the tiles listed, with heads of identical patterns sharing rows.
//! Dilated heads run per residue class and global tokens as gathered rows and key columns
//! ([`view`]), so their work is proportional to what they allow. The
//! partial-tile predicate travels as plain `#[repr(C)]` data ([`MaskTables`]). The kernel's
//! kv-tile iterator walks these lists; the mainloop is the same for every pattern.
//!
//! ```
//! use sparse_attn::pattern::{BlockSparseMeta, HeadPatterns, SparseShape};
//!
//! let set = HeadPatterns::from_json(
//!     r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 1024}}]}"#,
//! )?;
//! let shape = SparseShape { num_heads: 8, q_len: 4096, kv_len: 4096, block_m: 64, block_n: 64 };
//! let meta = BlockSparseMeta::compile(&set, shape)?;
//! assert_eq!(meta.num_sets(), 1); // all eight heads share one row set
//! assert_eq!(meta.partial(0, 63), &[0, 47, 63]); // sink tile, window edge, diagonal
//! # Ok::<(), sparse_attn::Error>(())
//! ```

mod compile;
mod component;
mod layer;
mod mask;
pub mod plans;
mod render;
pub mod rng;
mod set;
pub mod spans;
pub mod view;

#[cfg(test)]
mod tests;

pub use compile::{BlockSparseMeta, CompiledPlan, SparseShape};
pub use component::{
    BigBird, BlockMask, Chunked, Component, Dense, Dilated, GlobalTokens, Sinks, SlidingWindow,
    MAX_PARAM,
};
pub use layer::{AttentionLayer, Layer, LayerPlan, NonAttentionLayer};
pub use mask::{MaskComponent, MaskKind, MaskProgram, MaskTables};
pub use render::{render_from_meta, render_token_mask};
pub use set::{HeadPatterns, Pattern};
pub use view::TileView;
