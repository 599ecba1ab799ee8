use kvpress_core::Press;
use presses_snapkv::SnapKv;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn snapkv(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(SnapKv {
        compression_ratio,
        window_size: 16,
        kernel_size: 5,
    })
}

#[test]
fn snapkv_conforms() {
    run_conformance(
        &snapkv,
        &Promises {
            always_kept: |n| (n as u32 - 16..n as u32).collect(),
            min_tokens: 17,
            ..Promises::default()
        },
    );
}

#[test]
fn snapkv_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let compression = snapkv(0.5).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}

#[test]
fn a_window_as_long_as_the_context_is_an_error() {
    let layer = SyntheticLayer::random(SyntheticShape::small(16), 1).unwrap();
    let error = snapkv(0.5)
        .compress(&layer.input())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("window_size = 16 must be smaller than the context (16 tokens)"),
        "{error}"
    );
}

#[test]
fn even_kernels_are_rejected() {
    let press = SnapKv {
        compression_ratio: 0.5,
        window_size: 8,
        kernel_size: 4,
    };
    let error = press.validate().unwrap_err().to_string();
    assert!(error.contains("kernel_size 4 must be odd"), "{error}");
}
