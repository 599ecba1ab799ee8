//! Running a model on token ids and comparing the results.

use candle_core::{DType, Device, Tensor};
use kvpress_core::ModelCache;
use kvpress_models::Model;

/// `(1, n)` u32 tensor of token ids.
pub fn ids(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Logits of the last token of `tokens` run in one forward over a fresh cache.
pub fn last_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    forward_vec(model, &mut cache, tokens)
}

/// One forward of `tokens` over `cache` (no hook), logits of the last token as a vector.
pub fn forward_vec(model: &Model, cache: &mut ModelCache, tokens: &[u32]) -> Vec<f32> {
    let logits = model.forward(&ids(tokens), cache, None).expect("forward");
    assert_eq!(logits.dims(), &[1, model.config().vocab_size]);
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute value.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// A tensor's elements as a flat f32 vector.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
