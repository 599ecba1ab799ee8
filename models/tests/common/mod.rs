//! Tiny random Llama / Qwen2 / Qwen3 models written as GGUF bytes (in memory) or as Hugging Face
//! folders (in a temporary directory), for download-free tests of the `models` crate.
//!
//! Weights are drawn from a seeded generator in the Hugging Face layout; the GGUF writer applies
//! llama.cpp's Q/K row permutation for llama, exactly like `convert_hf_to_gguf.py`, so that the
//! loader has something real to undo.
// Each test file uses a part of this module.
#![allow(dead_code, unused_imports)]

mod gguf;
mod gguf_to_hf;
mod hf;
mod spec;
mod tensors;
mod vocab;

pub use gguf::*;
pub use gguf_to_hf::*;
pub use hf::*;
pub use spec::*;
pub use tensors::*;
pub use vocab::*;
