//! ThinK ([arXiv:2407.21018](https://arxiv.org/abs/2407.21018)) for kvpress-rs: key-channel
//! pruning that stores only the kept channels.
//!
//! - [`Think`] (`think`): the press, as kvpress's `ThinKPress` scores and prunes channels
//!   (`channels`), reporting `zeroed_channels` and `channel_scores` as the reference fixtures
//!   name them.
//! - [`ChannelPrunedCache`]: the layer cache the press brings (`Press::new_layer_cache`): the
//!   compressed context's keys keep only their head's kept channels, tokens appended later keep
//!   every channel, and attention (`attention`) scores a pruned key with the query's kept
//!   channels only, which is what kvpress computes over its zeroed keys.
//!
//! ```
//! use presses_think::Think;
//! let press = Think { key_channel_compression_ratio: 0.5, ..Think::default() };
//! assert_eq!(kvpress_core::Press::compression_ratio(&press), 0.25);
//! assert_eq!(press.window_size, 32);
//! ```
#![warn(missing_docs)]

mod attention;
mod cache;
pub mod channels;
mod layer_cache;
mod press;

pub use cache::ChannelPrunedCache;
pub use press::Think;
