//! The dense layer cache against the cache conformance suite, in every storage dtype.

use candle_core::{DType, Device};
use kvpress_models::DenseLayerCache;
use presses_testing::{run_cache_conformance, CacheLayout};

#[test]
fn the_dense_cache_conforms_in_every_storage_dtype() {
    for (dtype, storage_tolerance) in [(DType::F32, 0.0), (DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        run_cache_conformance(
            &format!("dense {dtype:?}"),
            &|| Box::new(DenseLayerCache::with_dtype(dtype)),
            CacheLayout {
                replacement_keys: true,
                ragged: false,
                storage_tolerance,
                device: Device::Cpu,
            },
        );
    }
}
