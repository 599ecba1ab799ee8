//! The flattened per-head cache against the cache conformance suite.

use adakv::FlatLayerCache;
use candle_core::Device;
use presses_testing::{run_cache_conformance, CacheLayout};

#[test]
fn the_flattened_cache_conforms() {
    run_cache_conformance(
        "flattened",
        &|| Box::new(FlatLayerCache::new()),
        CacheLayout {
            replacement_keys: false,
            ragged: true,
            storage_tolerance: 0.0,
            device: Device::Cpu,
        },
    );
}
