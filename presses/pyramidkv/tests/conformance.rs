use kvpress_core::press::press_from_json;
use kvpress_core::Press;
use presses_pyramidkv::{layer_budget, PyramidKv};
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn pyramidkv(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(PyramidKv {
        compression_ratio,
        window_size: 16,
        kernel_size: 5,
        beta: 20.0,
    })
}

#[test]
fn pyramidkv_conforms() {
    run_conformance(
        &pyramidkv,
        &Promises {
            always_kept: |n| (n as u32 - 16..n as u32).collect(),
            min_tokens: 17,
            uniform_budget: false,
        },
    );
}

#[test]
fn deeper_layers_keep_fewer_tokens_and_the_average_is_the_uniform_budget() {
    let mut kept = Vec::new();
    for layer_idx in 0..4 {
        let layer = SyntheticLayer::random(SyntheticShape::small(256), 3)
            .unwrap()
            .at_layer(layer_idx, 4);
        let selection = pyramidkv(0.5).compress(&layer.input()).unwrap().selection;
        let n = selection
            .uniform_len()
            .expect("every head of a layer keeps the same number");
        assert_eq!(n, layer_budget(256, 0.5, 16, 20.0, layer_idx, 4));
        kept.push(n);
    }
    assert!(kept.windows(2).all(|w| w[0] > w[1]), "{kept:?}");
    let mean = kept.iter().sum::<usize>() as f64 / 4.0;
    assert!((mean - 128.0).abs() <= 1.0, "mean {mean}");
}

#[test]
fn pyramidkv_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1)
        .unwrap()
        .at_layer(1, 4);
    let compression = pyramidkv(0.5).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}

#[test]
fn beta_below_one_is_rejected() {
    let error = press_from_json(r#"{"press": "pyramidkv", "compression_ratio": 0.5, "beta": 0.5}"#);
    let error = error.unwrap_err().to_string();
    assert!(error.contains("beta 0.5 must be at least 1"), "{error}");
}
