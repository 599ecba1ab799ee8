//! Core of kvpress-rs: the pieces every model, press and runtime agrees on.
//!
//! - [`cache`]: the per-layer KV cache trait ([`LayerCache`]) that a model appends to and attends
//!   over, and the whole-model [`ModelCache`].
//! - [`attention`]: the head layout ([`AttentionShape`]) and what attention returns.
//! - [`hook`]: the hook point a model calls inside each attention layer ([`AttentionHook`]) and the
//!   per-layer context it hands over ([`LayerContext`]).
//! - [`press`]: the [`Press`], [`Scorer`] and [`BudgetAllocator`] traits, [`Selection`], the
//!   press registry and configs.
//! - [`rope`]: rotary position tables for arbitrary positions ([`RotaryEmbedding`]).
//! - [`error`]: the crate's error type.
//!
//! This crate holds no kernels and depends on no other workspace crate: the dense cache and
//! attention kernels are in `kvpress-models` and `kvpress-kernels`, the shared scoring
//! operations in `presses-ops`.
//!
//! ```
//! use kvpress_core::press::{press_from_toml, Selection};
//!
//! // Presses are built by name from configs; `no_press` keeps everything.
//! let press = press_from_toml("press = \"no_press\"")?;
//! assert_eq!(press.compression_ratio(), 0.0);
//! // A selection: the kept token indices of every KV head.
//! let kept = Selection::all(1, 2, 3);
//! assert_eq!(kept.total_kept(), 6);
//! # Ok::<(), kvpress_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod cache;
pub mod error;
pub mod hook;
pub mod press;
pub mod rope;

/// Re-exported for [`register_press!`]: press crates need not depend on `inventory`.
pub use inventory;

pub use attention::{AttentionOutput, AttentionShape};
pub use cache::{check_per_head_rows, LayerCache, LayerSnapshot, ModelCache, PackedLayer};
pub use error::{Error, Result};
pub use hook::{AttentionHook, AttentionProjections, ForwardPhase, LayerContext, NoOpHook};
pub use press::{
    BudgetAllocator, Compression, NoPress, Press, PressInput, Scorer, Selection, UniformAllocator,
};
pub use rope::RotaryEmbedding;
