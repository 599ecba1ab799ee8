//! Statistics files for synthetic layers (`presses_testing::SyntheticShape::small`: 4 query heads
//! over 2 KV heads, head dim 8, RoPE base 10000, reported as layer 0 of 4).
// Each test file uses a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use kvpress_core::RotaryEmbedding;
use presses_query_stats::file::{CalibratedTensors, StatsHeader, FORMAT_VERSION};
use presses_query_stats::{ModelIdentity, ModelShape, QueryStatsFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The layout of `SyntheticShape::small` layers.
pub const SMALL: ModelShape = ModelShape {
    n_layers: 4,
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 8,
};

/// The RoPE inverse frequencies of a synthetic layer of head dim `d`.
pub fn inv_freq(d: usize) -> Vec<f32> {
    RotaryEmbedding::new(d, 10_000.0, 1 << 16, &Device::Cpu)
        .unwrap()
        .inv_freq()
        .to_vec()
}

/// A header for statistics of `shape` (checksums are filled in when the file is built).
pub fn header(shape: ModelShape) -> StatsHeader {
    StatsHeader {
        format_version: FORMAT_VERSION,
        model: ModelIdentity {
            sha256: "0".repeat(64),
            name: "synthetic".to_string(),
        },
        shape,
        n_sink: 4,
        max_tokens: 1000,
        n_sequences: 1,
        n_queries: 100,
        texts: Vec::new(),
        tensor_sha256: Default::default(),
    }
}

/// Random statistics of `shape` from `seed`: means and filters in [-1, 1], covariances `A Aᵀ /
/// d` (symmetric, positive semi-definite).
pub fn random_tensors(shape: ModelShape, seed: u64) -> CalibratedTensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
    let ModelShape {
        n_layers: l,
        n_heads: h,
        n_kv_heads: kv,
        head_dim: d,
    } = shape;
    let query_mean = uniform(l * h * d);
    let q_filters = uniform(l * kv * d);
    let mut query_cov = Vec::with_capacity(l * h * d * d);
    for _ in 0..l * h {
        let a = uniform(d * d);
        for i in 0..d {
            for j in 0..d {
                let dot: f32 = (0..d).map(|k| a[i * d + k] * a[j * d + k]).sum();
                query_cov.push(dot / d as f32);
            }
        }
    }
    CalibratedTensors {
        query_mean,
        query_cov,
        q_filters,
        rope_inv_freq: inv_freq(d),
    }
}

/// A calibrated file of `tensors` for `shape`, written to `dir/name`.
pub fn write(dir: &Path, name: &str, shape: ModelShape, tensors: CalibratedTensors) -> PathBuf {
    let path = dir.join(name);
    let file = QueryStatsFile::calibrated(&path, header(shape), tensors).unwrap();
    std::fs::write(&path, file.to_bytes().unwrap()).unwrap();
    path
}

/// A random statistics file for synthetic layers, written to `dir/name`.
pub fn write_small(dir: &Path, name: &str, seed: u64) -> PathBuf {
    write(dir, name, SMALL, random_tensors(SMALL, seed))
}
