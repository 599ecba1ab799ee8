use kvpress_core::press::press_from_json;
use kvpress_core::Press;
use presses_expected_attention::ExpectedAttention;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn expected_attention(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(ExpectedAttention {
        compression_ratio,
        ..ExpectedAttention::default()
    })
}

#[test]
fn expected_attention_conforms() {
    run_conformance(
        &expected_attention,
        &Promises {
            always_kept: |_| (0..4).collect(),
            min_tokens: 5,
            ..Promises::default()
        },
    );
}

#[test]
fn expected_attention_without_covariance_or_value_norm_conforms() {
    run_conformance(
        &|compression_ratio| {
            Box::new(ExpectedAttention {
                compression_ratio,
                n_future_positions: 32,
                n_sink: 2,
                use_covariance: false,
                use_vnorm: false,
                epsilon: 0.0,
            })
        },
        &Promises {
            always_kept: |_| (0..2).collect(),
            min_tokens: 3,
            ..Promises::default()
        },
    );
}

#[test]
fn expected_attention_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let compression = expected_attention(0.5).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}

#[test]
fn a_context_no_longer_than_the_sinks_is_an_error() {
    let layer = SyntheticLayer::random(SyntheticShape::small(4), 1).unwrap();
    let error = expected_attention(0.5)
        .compress(&layer.input())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the context (4 tokens) must be longer than n_sink = 4"),
        "{error}"
    );
}

#[test]
fn invalid_parameters_are_rejected() {
    let no_future = ExpectedAttention {
        n_future_positions: 0,
        ..ExpectedAttention::default()
    };
    let error = no_future.validate().unwrap_err().to_string();
    assert!(
        error.contains("n_future_positions must be at least 1"),
        "{error}"
    );
    for epsilon in [-1e-3, f64::NAN, f64::INFINITY] {
        let press = ExpectedAttention {
            epsilon,
            ..ExpectedAttention::default()
        };
        let error = press.validate().unwrap_err().to_string();
        assert!(error.contains("epsilon"), "{error}");
    }
}

#[test]
fn configs_name_the_parameters_of_kvpress() {
    let press = press_from_json(
        r#"{"press": "expected_attention", "compression_ratio": 0.25, "n_future_positions": 256,
            "n_sink": 2, "use_covariance": false, "use_vnorm": true, "epsilon": 0.01}"#,
    )
    .unwrap();
    assert_eq!(press.compression_ratio(), 0.25);
    let error = press_from_json(r#"{"press": "expected_attention", "n_futures": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `n_futures`"), "{error}");
}
