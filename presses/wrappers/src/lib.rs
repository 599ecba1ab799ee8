//! Press wrappers: presses built from other presses.
//!
//! - [`Composed`] (`composed`): presses applied one after another;
//! - [`PerLayer`] (`per_layer`): one compression ratio per layer;
//! - [`KeyRerotation`] (`key_rerotation`): kept keys rotated to consecutive positions, and later
//!   tokens continue from the compressed length;
//! - [`Chunked`] (`chunk`): the context scored and compressed in independent chunks;
//! - [`Decoding`] (`decoding`), [`CompressionRatioDecoding`] (`compression_ratio_decoding`) and
//!   [`PrefillDecoding`] (`prefill_decoding`): compression while tokens are generated.
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

mod chunked;
mod composed;
mod decoding;
mod key_rerotation;
mod per_layer;

pub use chunked::Chunked;
pub use composed::Composed;
pub use decoding::{CompressionRatioDecoding, Decoding, PrefillDecoding};
pub use key_rerotation::{rerotate_keys, KeyRerotation};
pub use per_layer::PerLayer;
