//! The default model and the README's needle context, shared by the runtime tests of the presses
//! that decide across layers or per head (`kvzip.rs`, `kvcompose.rs`, `duo_attention.rs`).
//!
//! Included by each test that needs it: `#[path = "common/needle.rs"] mod needle;`.

// Each test target uses a part of this module.
#![allow(dead_code)]

use kvpress::candle::Device;
use kvpress::models::{load_model, LoadedModel};

/// The README's question about the needle context.
pub const QUESTION: &str =
    "What is the special magic number for ocean mentioned in the provided text?";

/// The default model (quantized weights) with its KV cache stored as `kv_dtype`.
pub fn model(kv_dtype: &str) -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    let mut loaded = load_model(&path, None, &Device::Cpu).expect("the default model loads");
    loaded
        .model
        .set_kv_storage(kv_dtype.parse().unwrap())
        .unwrap();
    loaded
}

/// `data/needle-haystack.txt`.
pub fn needle() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/needle-haystack.txt"
    ))
    .unwrap()
}
