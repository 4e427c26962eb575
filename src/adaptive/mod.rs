//! Content-adaptive sparsity (docs/adaptive.md): the components, their f64 reference, and
//! their selection and execution on the device.
//!
//! What exists here is the *meaning* of the components, evaluated exactly on the CPU, the
//! validation of their parameters, the device scoring of [`scoring`] (from the key
//! summaries of [`crate::kv_cache::summary`]), the device selection kernel ([`device`]: scores
//! to selection bits, on the emulator and on CUDA, including caller `given` scores) and the
//! execution of a selection by one plan per component ([`AdaptivePlan`]: selection, compaction
//! into the forward kernel's tile lists, forward; [`AdaptivePattern`] is its pattern JSON). The
//! static pattern language does not take them ([`crate::pattern::Component`] rejects
//! `top_k`, `top_p`, `top_rel` and `lsh`; an [`AdaptivePattern`] joins one of them to up to
//! two static interval components, [`AdaptivePlan::with_union`]).
//!
//! - [`AdaptiveComponent`] parses `{"top_k": ..}`, `{"top_p": ..}`, `{"top_rel": ..}` and
//!   `{"lsh": ..}`; [`BlockSelect`] and [`Lsh`] are the validated parameters.
//! - [`Selection::compute`] runs block selection: groups ([`Grouping`]), candidates
//!   [`BlockSelect::candidates`], forced blocks [`BlockSelect::forced`], the scores
//!   ([`Score`], in f64), the total order [`rank`] and the rules of [`choose`]. The result
//!   lists `S(h, G)` per sequence, head and group and gives the predicate
//!   ([`Selection::allowed`]) to pass to [`crate::reference::attention`].
//! - [`device::DeviceSelect`] runs the same selection on the device from scores in the
//!   SCORES layout into the SELECTION BITS layout; [`device::select_given_emulated`] and
//!   [`device::select_given_cuda`] select from a caller's [`GivenScores`].
//! - [`scoring`]: the device scoring kernel (`mean_k`, `pooled_qk`, `minmax` from the key
//!   summaries of [`crate::kv_cache::summary`]) and its emulated run.
//! - [`AdaptivePlan`] runs calls (prefill chunks, decode steps) of one component up to its
//!   maxima: [`AdaptivePlan::run_emulated`] selects on the device and runs;
//!   [`AdaptivePlan::run_emulated_with_bits`] runs a given selection;
//!   [`AdaptivePlan::select_emulated`] and [`AdaptivePlan::tiles_emulated`] give a call's
//!   selection and tile lists ([`AdaptiveTiles`]) without the forward launch.
//! - [`AdaptiveDecode`]: decode steps of an adaptive layer over the paged KV cache (append
//!   with summaries, score, select, forward under one [`AdaptivePlan`]), `reselect_every`
//!   included, on the emulator.
//! - [`LshBuckets::compute`] hashes queries and keys with the seeded matrices of [`lsh`].
//!
//! # Consequences of the contract
//!
//! - A query row's group depends on its absolute position: `floor(p / q_block)` in a prefill.
//!   A chunked prefill therefore equals one whole prefill only when every chunk boundary is a
//!   multiple of `q_block` (otherwise a group is split and each part selects on its own).
//! - In a decode step every row is a group of one ([`Grouping::Decode`]): a decode run with
//!   an adaptive component equals this reference evaluated with singleton groups, not the
//!   prefill selection over the same rows.
//! - Forced blocks are restricted to the candidates, and candidates start at or before the
//!   group's last position, so a selection never names a block past the causal limit of the
//!   group's last row; rows earlier in a group can still see only keys `j <= p` when the
//!   pattern is causal ([`Selection::allowed`] with `causal`).
//!
//! ```
//! use sparse_attn::adaptive::{AdaptiveComponent, Choice};
//!
//! let c = AdaptiveComponent::from_json(
//!     r#"{"top_p": {"block": 64, "p": 0.95, "min_k": 4, "max_k": 512,
//!                  "keep_sinks": 1, "keep_local": 2, "score": "mean_k"}}"#,
//! )?;
//! let AdaptiveComponent::Select(sel) = c else { unreachable!() };
//! assert_eq!(sel.q_block(), 64);
//! assert!(matches!(sel.choice(), Choice::TopP { min_k: 4, max_k: 512, .. }));
//! // Group ending at position 300 over 1000 keys: candidates 0..5, forced {0, 3, 4}.
//! assert_eq!(sel.candidates(300, 1000), 0..5);
//! assert_eq!(sel.forced(300, 1000), vec![0, 3, 4]);
//! assert!(AdaptiveComponent::from_json(r#"{"top_k": {"block": 48, "k": 4}}"#).is_err());
//! # Ok::<(), sparse_attn::Error>(())
//! ```

mod budget;
mod cuda;
pub mod decode;
pub mod device;
pub mod lsh;
pub mod needle;
mod params;
mod pattern;
mod plan;
pub mod scoring;
mod select;
mod tiles;

pub use budget::{density_bounds, density_bounds_with, DensityBounds};
pub use cuda::GpuAdaptivePlan;
#[doc(hidden)]
pub use decode::DecodeCanary;
pub use decode::{AdaptiveDecode, DecodeStep};
pub use lsh::LshBuckets;
pub use params::{AdaptiveComponent, BlockSelect, Choice, Lsh, Score, Share, MAX_BLOCK, MIN_BLOCK};
pub use pattern::{AdaptivePattern, ADAPTIVE_KINDS};
pub use plan::{AdaptivePlan, AdaptiveRun, SelectionLayout};
pub use select::{
    choose, given_shape, group_of, masses, num_groups, rank, GivenScores, Grouping, SelectInputs,
    Selection,
};
pub use tiles::AdaptiveTiles;
