//! The dense layer cache against the cache conformance suite, in every storage type: f32, f16,
//! bf16 and the quantized q8 and q4 (whose cache also stores head-wise selections, the
//! flattened layout).

use candle_core::{DType, Device};
use kvpress_models::{DenseLayerCache, QuantBits, QuantizedLayerCache};
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

#[test]
fn the_quantized_cache_conforms_in_8_and_4_bits_dense_and_per_head() {
    // The suite's values lie in [-1, 1): half a step of a group's range, plus the f16 rounding
    // of the group's minimum.
    for (bits, storage_tolerance) in [(QuantBits::Eight, 5e-3), (QuantBits::Four, 7e-2)] {
        run_cache_conformance(
            &format!("quantized {bits:?}"),
            &|| Box::new(QuantizedLayerCache::new(bits)),
            CacheLayout {
                replacement_keys: true,
                ragged: true,
                storage_tolerance,
                device: Device::Cpu,
            },
        );
    }
}
