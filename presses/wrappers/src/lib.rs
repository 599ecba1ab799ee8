//! Press wrappers: presses built from other presses.
//!
//! - [`Composed`] (`composed`): presses applied one after another;
//! - [`PerLayer`] (`per_layer`): one compression ratio per layer;
//! - [`KeyRerotation`] (`key_rerotation`): kept keys rotated to consecutive positions, and later
//!   tokens continue from the compressed length;
//! - [`Chunked`] (`chunk`): the context scored and compressed in independent chunks;
//! - [`ChunkKv`] (`chunkkv`): whole chunks kept by their scores summed over heads (ChunkKV);
//! - [`EntropyGatedChunkKv`] (`entropy_gated_chunkkv`): ChunkKV whose spiky chunks keep only their
//!   best tokens;
//! - [`Block`] (`block`): block-wise iterative top-k (KeyDiff's block processing);
//! - [`Decoding`] (`decoding`), [`CompressionRatioDecoding`] (`compression_ratio_decoding`) and
//!   [`PrefillDecoding`] (`prefill_decoding`): compression while tokens are generated;
//! - [`Cam`] (`cam`): CaM, merging evicted values into kept neighbours while decoding.
//!
//! ```
//! use kvpress_core::press::press_from_json;
//! # use presses_snapkv as _;
//! # use presses_wrappers as _;
//! let press = press_from_json(r#"{"press": "chunk", "chunk_length": 512,
//!     "inner": {"press": "snapkv", "compression_ratio": 0.5}}"#)?;
//! assert_eq!(press.compression_ratio(), 0.5);
//! # Ok::<(), kvpress_core::Error>(())
//! ```
#![warn(missing_docs)]

mod block;
mod cam;
mod cam_merge;
mod chunked;
mod chunkkv;
mod composed;
mod decoding;
mod entropy_gated_chunkkv;
mod key_rerotation;
mod per_layer;
mod scoring;

pub use block::{Block, BlockIteration};
pub use cam::Cam;
pub use chunked::Chunked;
pub use chunkkv::ChunkKv;
pub use composed::Composed;
pub use decoding::{CompressionRatioDecoding, Decoding, PrefillDecoding};
pub use entropy_gated_chunkkv::EntropyGatedChunkKv;
pub use key_rerotation::{rerotate_keys, KeyRerotation};
pub use per_layer::PerLayer;
