use kvpress_core::press::{press_from_json, press_to_json};
use kvpress_core::Press;
use presses_criticalkv::CriticalKv;
use presses_expected_attention::ExpectedAttention;
use presses_snapkv::SnapKv;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn around_snapkv(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(CriticalKv::new(Box::new(SnapKv {
        compression_ratio,
        window_size: 16,
        kernel_size: 5,
    })))
}

#[test]
fn criticalkv_around_snapkv_conforms() {
    run_conformance(
        &around_snapkv,
        &Promises {
            always_kept: |n| (n as u32 - 16..n as u32).collect(),
            min_tokens: 17,
            ..Promises::default()
        },
    );
}

#[test]
fn criticalkv_around_expected_attention_conforms() {
    run_conformance(
        &|compression_ratio| {
            Box::new(CriticalKv {
                inner: Box::new(ExpectedAttention {
                    compression_ratio,
                    use_vnorm: false,
                    ..ExpectedAttention::default()
                }),
                epsilon: 1e-3,
                first_stage_ratio: 0.25,
            })
        },
        &Promises {
            always_kept: |_| (0..4).collect(),
            min_tokens: 5,
            ..Promises::default()
        },
    );
}

#[test]
fn criticalkv_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let compression = around_snapkv(0.5).compress(&layer.input()).unwrap();
    insta::assert_json_snapshot!(compression.selection.heads());
}

#[test]
fn the_compression_ratio_is_the_inner_press_ratio() {
    assert_eq!(around_snapkv(0.3).compression_ratio(), 0.3);
    let error = around_snapkv(1.0).validate().unwrap_err().to_string();
    assert!(error.contains("compression_ratio"), "{error}");
}

#[test]
fn kvpress_configs_load() {
    let press = press_from_json(
        r#"{"press": "criticalkv", "epsilon": 0.0001, "first_stage_ratio": 0.5,
            "inner": {"press": "snapkv", "compression_ratio": 0.5, "window_size": 64,
                      "kernel_size": 5}}"#,
    )
    .unwrap();
    assert_eq!(press.compression_ratio(), 0.5);
    assert!(press.scorer().is_some(), "criticalkv is itself a scorer");
    let json = press_to_json(press.as_ref()).unwrap();
    assert!(json.contains(r#""press": "criticalkv""#), "{json}");
    assert!(json.contains(r#""press": "snapkv""#), "{json}");
    let defaults = press_from_json(r#"{"press": "criticalkv", "inner": {"press": "snapkv"}}"#);
    assert!(
        defaults.is_ok(),
        "epsilon and first_stage_ratio have defaults"
    );
}

#[test]
fn a_non_scoring_inner_press_is_an_error() {
    let error = press_from_json(r#"{"press": "criticalkv", "inner": {"press": "no_press"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("inner press `no_press` does not score tokens")
            && error.contains("criticalkv needs a scorer press"),
        "{error}"
    );
}

#[test]
fn unknown_or_missing_fields_are_errors() {
    let error = press_from_json(
        r#"{"press": "criticalkv", "inner": {"press": "snapkv"}, "first_stage": 0.5}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("unknown field `first_stage`"), "{error}");
    let error = press_from_json(r#"{"press": "criticalkv"}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing field `inner`"), "{error}");
}

#[test]
fn invalid_parameters_are_rejected() {
    for first_stage_ratio in [-0.1, 1.5, f64::NAN] {
        let press = CriticalKv {
            first_stage_ratio,
            ..CriticalKv::new(Box::new(SnapKv::default()))
        };
        let error = press.validate().unwrap_err().to_string();
        assert!(error.contains("first_stage_ratio"), "{error}");
    }
    let press = CriticalKv {
        epsilon: -1.0,
        ..CriticalKv::new(Box::new(SnapKv::default()))
    };
    let error = press.validate().unwrap_err().to_string();
    assert!(error.contains("epsilon"), "{error}");
    let press = CriticalKv::new(Box::new(SnapKv {
        kernel_size: 4,
        ..SnapKv::default()
    }));
    let error = press.validate().unwrap_err().to_string();
    assert!(error.contains("kernel_size 4 must be odd"), "{error}");
}

#[test]
fn the_registry_lists_criticalkv_with_its_defaults() {
    let registration = kvpress_core::press::find_press("criticalkv").unwrap();
    let parameters = kvpress_core::press::default_parameters(registration).unwrap();
    assert_eq!(parameters["inner"], "<press>");
    assert_eq!(parameters["epsilon"], 1e-4);
    assert_eq!(parameters["first_stage_ratio"], 0.5);
}
