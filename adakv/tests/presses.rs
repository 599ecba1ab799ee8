use adakv::{AdaKv, CriticalAdaKv};
use kvpress_core::press::{n_kept, press_from_json, Press};
use presses_snapkv::SnapKv;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn snapkv(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(SnapKv {
        compression_ratio,
        window_size: 16,
        kernel_size: 5,
    })
}

fn window_kept(n: usize) -> Vec<u32> {
    (n as u32 - 16..n as u32).collect()
}

#[test]
fn adakv_conforms() {
    run_conformance(
        &|r| Box::new(AdaKv::new(snapkv(r))),
        &Promises {
            always_kept: window_kept,
            min_tokens: 17,
            uniform_budget: false,
        },
    );
}

#[test]
fn critical_adakv_conforms() {
    run_conformance(
        &|r| Box::new(CriticalAdaKv::new(snapkv(r))),
        &Promises {
            always_kept: window_kept,
            min_tokens: 17,
            uniform_budget: false,
        },
    );
}

#[test]
fn heads_share_the_layer_budget() {
    let layer = SyntheticLayer::random(SyntheticShape::small(256), 9).unwrap();
    for press in [
        Box::new(AdaKv::new(snapkv(0.75))) as Box<dyn Press>,
        Box::new(CriticalAdaKv::new(snapkv(0.75))),
    ] {
        let selection = press.compress(&layer.input()).unwrap().selection;
        assert_eq!(selection.total_kept(), 2 * n_kept(256, 0.75));
        let n_safe = (n_kept(256, 0.75) as f64 * 0.2) as usize;
        assert!(selection.heads().iter().all(|h| h.len() >= n_safe));
    }
}

#[test]
fn head_wise_presses_bring_the_flattened_cache() {
    let press = AdaKv::new(snapkv(0.5));
    let mut cache = press.new_layer_cache().expect("a flattened cache");
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 2).unwrap();
    let input = layer.input();
    cache.append(input.keys, input.values).unwrap();
    let selection = press.compress(&input).unwrap().selection;
    cache.compact(&selection, None).unwrap();
    let stored: usize = selection.heads().iter().map(Vec::len).sum();
    assert_eq!(cache.bytes_used(), 2 * stored * 8 * 4 + 3 * 2 * 8);
    assert!(SnapKv::default().new_layer_cache().is_none());
}

#[test]
fn configs_build_the_head_wise_presses() {
    let press = press_from_json(
        r#"{"press": "critical_adakv", "alpha_safeguard": 0.2, "epsilon": 0.0001,
            "first_stage_ratio": 0.5,
            "inner": {"press": "snapkv", "compression_ratio": 0.5, "window_size": 64}}"#,
    )
    .unwrap();
    assert_eq!(press.compression_ratio(), 0.5);
    let error = press_from_json(r#"{"press": "adakv", "inner": {"press": "no_press"}}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("needs a scoring press inside"), "{error}");
    let error = press_from_json(
        r#"{"press": "adakv", "alpha_safeguard": 1.5, "inner": {"press": "snapkv"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("alpha_safeguard 1.5 is outside [0, 1]"),
        "{error}"
    );
    let pyramid = press_from_json(
        r#"{"press": "adakv", "pyramid_beta": 20, "window_size": 16, "floor_alpha": true,
            "inner": {"press": "snapkv", "compression_ratio": 0.5, "window_size": 16}}"#,
    )
    .unwrap();
    let layer = SyntheticLayer::random(SyntheticShape::small(128), 4)
        .unwrap()
        .at_layer(0, 4);
    let selection = pyramid.compress(&layer.input()).unwrap().selection;
    for head in selection.heads() {
        assert!(window_kept(128).iter().all(|t| head.contains(t)));
    }
}

#[test]
fn kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let adakv = AdaKv::new(snapkv(0.5)).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!("adakv", adakv.selection.heads());
    let critical = CriticalAdaKv::new(snapkv(0.5))
        .compress(&layer.input())
        .unwrap();
    insta::assert_json_snapshot!("critical_adakv", critical.selection.heads());
}
