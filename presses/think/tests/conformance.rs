//! The contract checks of ThinK and its cache.
//!
//! The cache runs the whole cache conformance suite. The press conformance suite
//! (`presses_testing::run_conformance`) assumes a press that evicts tokens at a settable
//! `compression_ratio`: ThinK evicts none and owns its ratio, so its checks that apply are run
//! here one by one (validation naming ThinK's own fields, config round trip, ratio 0 keeping
//! everything, determinism, finite scores on constant and tiny inputs, a batch of 2), with the
//! ones that do not replaced by what ThinK promises instead (every token kept, the same number of
//! channels pruned in every head).

use candle_core::Device;
use kvpress_core::press::{press_from_json, press_to_json, CacheLayout, Press, RatioControl};
use kvpress_core::LayerCache;
use presses_testing::{run_cache_conformance, SyntheticLayer, SyntheticShape};
use presses_think::{ChannelPrunedCache, Think};

fn think(key_channel_compression_ratio: f64) -> Think {
    Think {
        key_channel_compression_ratio,
        ..Think::default()
    }
}

#[test]
fn the_channel_pruned_cache_conforms() {
    run_cache_conformance(
        "channel_pruned",
        &|| Box::new(ChannelPrunedCache::new()) as Box<dyn LayerCache>,
        presses_testing::CacheLayout {
            ragged: false,
            replacement_keys: true,
            storage_tolerance: 0.0,
            device: Device::Cpu,
        },
    );
}

#[test]
fn bad_parameters_name_the_field() {
    for bad in [-0.1, 1.5, f64::NAN] {
        let error = think(bad).validate().expect_err("refused");
        assert!(
            error.to_string().contains("key_channel_compression_ratio"),
            "{error}"
        );
    }
    for good in [0.0, 0.5, 1.0] {
        think(good).validate().expect("valid");
    }
    let error = Think {
        window_size: 0,
        ..think(0.5)
    }
    .validate()
    .expect_err("refused");
    assert!(error.to_string().contains("window_size"), "{error}");
    let error = press_from_json(r#"{"press": "think", "compression_ratio": 0.5}"#)
        .expect_err("an unknown field");
    assert!(error.to_string().contains("compression_ratio"), "{error}");
}

#[test]
fn config_round_trips_with_kvpress_field_names() {
    let press = think(0.5);
    let json = press_to_json(&press).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        serde_json::json!({"press": "think", "key_channel_compression_ratio": 0.5, "window_size": 32})
    );
    let back = press_from_json(&json).unwrap();
    assert_eq!(press_to_json(back.as_ref()).unwrap(), json);
}

#[test]
fn the_description_owns_the_ratio_and_prunes_key_channels() {
    let description = think(0.5).describe();
    assert_eq!(description.ratio, RatioControl::OwnedByPress);
    assert_eq!(description.cache_layout, CacheLayout::ChannelPruned);
    assert!(description.compresses_prefill && !description.needs_attention_weights);
    assert!(!description.rerotates_keys && !description.compresses_while_decoding);
    assert!(!think(0.0).describe().compresses_prefill);
    assert_eq!(think(0.5).compression_ratio(), 0.25);
    assert!(think(0.5).new_layer_cache().is_some());
    let layer = SyntheticLayer::random(SyntheticShape::small(32), 1).unwrap();
    assert!(think(0.5).compress_at_ratio(&layer.input(), 0.25).is_ok());
    let error = think(0.5)
        .compress_at_ratio(&layer.input(), 0.5)
        .expect_err("a ratio from outside");
    assert!(
        error.to_string().contains("key_channel_compression_ratio"),
        "{error}"
    );
}

#[test]
fn ratio_zero_keeps_everything_as_cached() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 7).unwrap();
    let compression = think(0.0).compress(&layer.input()).unwrap();
    assert!(compression.selection.keeps_everything());
    assert!(compression.selection.stores_as_cached());
    assert!(compression.keys.is_none() && compression.notes.is_empty());
}

#[test]
fn every_token_is_kept_and_every_head_prunes_its_share() {
    for (ratio, pruned) in [(0.25, 2), (0.5, 4), (0.75, 6), (1.0, 8)] {
        let layer = SyntheticLayer::random(SyntheticShape::small(64), 7).unwrap();
        let compression = think(ratio).compress(&layer.input()).unwrap();
        assert!(compression.selection.keeps_everything(), "ratio {ratio}");
        let channels = compression
            .selection
            .key_channels()
            .expect("pruned channels");
        assert_eq!(channels.uniform_len(), Some(8 - pruned), "ratio {ratio}");
        assert_eq!(
            compression.keys.as_ref().map(|k| k.dims().to_vec()),
            Some(vec![1, 2, 64, 8])
        );
    }
}

#[test]
fn deterministic_and_finite_on_constant_tiny_and_batched_inputs() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 7).unwrap();
    let first = think(0.5).compress(&layer.input()).unwrap();
    let second = think(0.5).compress(&layer.input()).unwrap();
    assert_eq!(first.selection, second.selection);
    assert_eq!(first.notes, second.notes);
    let constant = SyntheticLayer::constant(SyntheticShape::small(64)).unwrap();
    let tiny = SyntheticLayer::random(SyntheticShape::small(2), 3).unwrap();
    let batch = SyntheticLayer::random(
        SyntheticShape {
            batch: 2,
            ..SyntheticShape::small(64)
        },
        11,
    )
    .unwrap();
    for (what, layer) in [("constant", constant), ("tiny", tiny), ("batch", batch)] {
        let compression = think(0.5).compress(&layer.input()).unwrap();
        let scores = &compression.notes[1].value;
        let finite = scores
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|h| h.as_array().unwrap())
            .all(|v| v.as_f64().is_some_and(f64::is_finite));
        assert!(finite, "{what}: channel scores are finite");
        let heads = layer.shape.batch * layer.shape.n_kv_heads;
        let channels = compression.selection.key_channels().expect("channels");
        assert_eq!(channels.heads().len(), heads, "{what}: one list per head");
    }
}
