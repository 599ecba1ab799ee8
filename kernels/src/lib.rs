//! The CPU kernels of kvpress-rs, one file per kernel family: matrix products ([`sgemm`],
//! through a system BLAS when one is installed), matrix-vector products for f32 rows and for
//! quantized GGML blocks ([`quantized`]), prefill and split-K decode attention over dense
//! storage, grouped-query attention on tensors ([`grouped_query_attention`]), softmax and
//! activations. Kernels take slices (or candle tensors they read as slices) and return slices or
//! tensors; they know nothing of presses or caches. Errors are candle errors.
//!
//! candle's own f32 matmul (the `gemm` crate) reaches about half of what an optimised BLAS does
//! on the same cores, so kvpress-rs looks for OpenBLAS at run time (`libopenblas.so.0`) and uses
//! it for its large products, falling back to `gemm` when none is found. Nothing is linked at
//! build time: a machine without OpenBLAS runs the same code, only slower.
//! `KVPRESS_BLAS=off` disables the lookup (`on` requires a BLAS, `auto` is the default);
//! `KVPRESS_BLAS_LIB=/path/libfoo.so` names a library exporting `cblas_sgemm`.
//! [`blas::check_env`] reports a setting that cannot be honoured (front ends call it at start).

mod activation;
mod attention;
pub mod blas;
mod decode_attention;
mod decode_block;
mod gqa;
pub mod kv_quant;
mod matvec;
mod quant_block;
pub mod quantized;
mod ragged_attention;
mod sgemm;
pub mod softmax;
mod view;

pub use activation::silu_mul;
pub use attention::attention_f32;
pub use blas::blas_backend;
pub use decode_attention::{
    decode_attention, decode_attention_parts, merge_attention_parts, AttentionPart, HeadProblem,
    HeadRows, MAX_ROWS as DECODE_MAX_ROWS,
};
pub use gqa::{grouped_query_attention, AttentionResult};
pub use matvec::{dot, for_each_output_row, matvec_f32};
pub use ragged_attention::{ragged_attention, RaggedHeads};
pub use sgemm::{sgemm, GemmDims, MatMut, MatRef};
pub use softmax::{exp, masked_softmax};
pub use view::{cpu_slice, f32_slice, is_cpu_f32, with_cache_data, CacheData};
