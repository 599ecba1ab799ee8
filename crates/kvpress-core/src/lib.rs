//! Core of kvpress-rs: the pieces every model, press and runtime agrees on.
//!
//! - [`cache`]: the per-layer KV cache trait ([`LayerCache`]) that a model appends to and attends
//!   over, the dense implementation ([`DenseLayerCache`]) and the whole-model [`ModelCache`].
//! - [`hook`]: the hook point a model calls inside each attention layer ([`AttentionHook`]) and the
//!   per-layer context it hands over ([`LayerContext`]).
//! - [`press`]: the [`Press`], [`Scorer`] and [`BudgetAllocator`] traits, [`Selection`], the
//!   press registry and configs.
//! - [`rope`]: rotary position tables for arbitrary positions ([`RotaryEmbedding`]).
//! - [`error`]: the crate's error type.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use kvpress_core::{DenseLayerCache, LayerCache};
//!
//! // One layer, batch 1, 2 KV heads, head dim 4: append 3 tokens, then attend with 4 query heads.
//! let mut cache = DenseLayerCache::new();
//! let keys = Tensor::randn(0f32, 1.0, (1, 2, 3, 4), &Device::Cpu)?;
//! let values = Tensor::randn(0f32, 1.0, (1, 2, 3, 4), &Device::Cpu)?;
//! cache.append(&keys, &values)?;
//! let queries = Tensor::randn(0f32, 1.0, (1, 4, 3, 4), &Device::Cpu)?;
//! let output = cache.attend(&queries, false)?.output;
//! assert_eq!(output.dims(), &[1, 4, 3, 4]);
//! assert_eq!(cache.len(), 3);
//! # Ok::<(), kvpress_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod cache;
pub mod cpu;
pub mod error;
pub mod hook;
pub mod press;
pub mod rope;

/// Re-exported for [`register_press!`]: press crates need not depend on `inventory`.
pub use inventory;

pub use attention::{AttentionOutput, AttentionShape};
pub use cache::{DenseLayerCache, LayerCache, LayerSnapshot, ModelCache};
pub use error::{Error, Result};
pub use hook::{AttentionHook, AttentionProjections, ForwardPhase, LayerContext, NoOpHook};
pub use press::{
    BudgetAllocator, Compression, NoPress, Press, PressInput, Scorer, Selection, UniformAllocator,
};
pub use rope::RotaryEmbedding;
