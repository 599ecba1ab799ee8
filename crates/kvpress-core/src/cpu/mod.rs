//! CPU kernels for f32: matrix products (through a system BLAS when one is installed) and
//! attention over a dense cache.
//!
//! candle's own f32 matmul (the `gemm` crate) reaches about half of what an optimised BLAS does
//! on the same cores, so kvpress-rs looks for OpenBLAS at run time (`libopenblas.so.0`) and uses
//! it for its large products, falling back to `gemm` when none is found. Nothing is linked at
//! build time: a machine without OpenBLAS runs the same code, only slower.
//! `KVPRESS_BLAS=off` disables the lookup; `KVPRESS_BLAS_LIB=/path/libfoo.so` names a library
//! exporting `cblas_sgemm`.

mod activation;
mod attention;
mod blas;
mod decode_attention;
mod decode_block;
mod matvec;
mod sgemm;
pub(crate) mod softmax;
mod view;

pub use activation::silu_mul;
pub use attention::attention_f32;
pub use blas::blas_backend;
pub use decode_attention::{decode_attention, HeadProblem, HeadRows};
pub use matvec::{dot, for_each_output_row, matvec_f32};
pub use sgemm::{sgemm, GemmDims, MatMut, MatRef};
pub use softmax::{exp, masked_softmax};
pub use view::{cpu_slice, f32_slice, is_cpu_f32, with_cache_data, CacheData};
