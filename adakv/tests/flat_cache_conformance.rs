//! The flattened per-head cache against the cache conformance suite, in each of its storage
//! dtypes (f32, f16, bf16).

use adakv::FlatLayerCache;
use candle_core::{DType, Device};
use presses_testing::{run_cache_conformance, CacheLayout};

#[test]
fn the_flattened_cache_conforms_in_every_storage_dtype() {
    for (dtype, storage_tolerance) in [(DType::F32, 0.0), (DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        run_cache_conformance(
            &format!("flattened {dtype:?}"),
            &|| Box::new(FlatLayerCache::with_dtype(dtype).unwrap()),
            CacheLayout {
                replacement_keys: false,
                ragged: true,
                storage_tolerance,
                device: Device::Cpu,
            },
        );
    }
}
