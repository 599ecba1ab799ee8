//! AdaKV for kvpress-rs: head-wise adaptive budgets, and the flattened per-head cache that stores
//! only what each head keeps (kvpress only masks; here the memory is really saved).
//!
//! - [`AdaKv`] (`adakv`) and [`CriticalAdaKv`] (`critical_adakv`): presses around any scoring
//!   press; a layer's budget is split across its KV heads by score (global top-k), each head
//!   keeping a safeguard share. Options: the AdaKV paper's allocation (`floor_alpha`), and
//!   PyramidKV layer budgets (`pyramid_beta`).
//! - [`AdaKvAllocator`]: the allocation itself, a [`kvpress_core::BudgetAllocator`].
//! - [`FlatLayerCache`]: each KV head's tokens back to back with offsets, amortized O(1)
//!   appends, exact byte accounting, and its own attention kernel ([`ragged_attention`]).
//! - `cuda` module (feature `cuda`): the same layout on the GPU, with kernels to append, compact,
//!   attend (split-K decode) and select top-k over long rows.
//!
//! ```
//! use adakv::AdaKv;
//! use presses_snapkv::SnapKv;
//! let press = AdaKv::new(Box::new(SnapKv { compression_ratio: 0.5, ..SnapKv::default() }));
//! assert_eq!(kvpress_core::Press::compression_ratio(&press), 0.5);
//! ```
#![warn(missing_docs)]

mod allocator;
#[cfg(feature = "cuda")]
pub mod cuda;
mod flat_cache;
mod flat_rows;
mod presses;

pub use allocator::{head_budgets, AdaKvAllocator, PyramidBudget, Safeguard};
pub use flat_cache::FlatLayerCache;
pub use flat_rows::{FlatRows, FLAT_DTYPES};
pub use kvpress_kernels::{ragged_attention, CacheData, RaggedHeads};
pub use presses::{AdaKv, CriticalAdaKv};
