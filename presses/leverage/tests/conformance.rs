//! The conformance suite for every press of the crate, and their kept sets on a fixed input.

use kvpress_core::Press;
use presses_leverage::{Compactor, Cur, LeverageScore, LeverageType, NonCausalAttn};
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn leverage(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(LeverageScore {
        compression_ratio,
        ..LeverageScore::default()
    })
}

fn non_causal(compression_ratio: f64) -> Box<dyn Press> {
    // Chunks of 100 over the suite's 256 tokens: a padded last chunk.
    Box::new(NonCausalAttn {
        compression_ratio,
        chunk_size: 100,
    })
}

fn compactor(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Compactor {
        compression_ratio,
        chunk_size: 100,
        ..Compactor::default()
    })
}

fn compactor_blended(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Compactor {
        compression_ratio,
        blending: Some(0.3),
        ..Compactor::default()
    })
}

fn cur(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Cur {
        compression_ratio,
        ..Cur::default()
    })
}

fn cur_random_average(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Cur {
        compression_ratio,
        leverage_type: LeverageType::KvAvg,
        use_random_leverage: true,
        use_local_approximation: false,
        ..Cur::default()
    })
}

/// The kept sets of `press` on the fixed 48-token synthetic layer (layer 3).
fn kept_sets(press: Box<dyn Press>) -> Vec<Vec<u32>> {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1)
        .unwrap()
        .at_layer(3, 4);
    presses_testing::kept_sets(press.as_ref(), layer).unwrap()
}

#[test]
fn leverage_score_conforms() {
    run_conformance(&leverage, &Promises::default());
}

#[test]
fn non_causal_attn_conforms() {
    run_conformance(&non_causal, &Promises::default());
}

#[test]
fn compactor_conforms() {
    let promises = Promises {
        always_kept: |n| (0..8).chain(n as u32 - 4..n as u32).collect(),
        ..Promises::default()
    };
    run_conformance(&compactor, &promises);
    run_conformance(&compactor_blended, &promises);
}

#[test]
fn cur_conforms() {
    let promises = Promises {
        always_kept: |_| vec![0, 1, 2, 3],
        ..Promises::default()
    };
    run_conformance(&cur, &promises);
    run_conformance(&cur_random_average, &promises);
}

#[test]
fn leverage_score_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(leverage(0.5)));
}

#[test]
fn non_causal_attn_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(non_causal(0.5)));
}

#[test]
fn compactor_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(compactor(0.5)));
}

#[test]
fn cur_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(cur(0.5)));
}

#[test]
fn bad_parameters_are_refused_naming_the_field() {
    let refused: Vec<(Box<dyn Press>, &str)> = vec![
        (
            Box::new(LeverageScore {
                sketch_dimension: 0,
                ..LeverageScore::default()
            }),
            "sketch_dimension",
        ),
        (
            Box::new(LeverageScore {
                sketch_dimension: 5000,
                ..LeverageScore::default()
            }),
            "sketch_dimension",
        ),
        (
            Box::new(NonCausalAttn {
                chunk_size: 0,
                ..NonCausalAttn::default()
            }),
            "chunk_size",
        ),
        (
            Box::new(Compactor {
                blending: Some(f64::NAN),
                ..Compactor::default()
            }),
            "blending",
        ),
        (
            Box::new(Compactor {
                chunk_size: 0,
                ..Compactor::default()
            }),
            "chunk_size",
        ),
        (
            Box::new(Cur {
                local_window_size: 0,
                ..Cur::default()
            }),
            "local_window_size",
        ),
    ];
    for (press, field) in refused {
        let error = press.validate().expect_err(field).to_string();
        assert!(error.contains(field), "{error}");
    }
    let unknown =
        kvpress_core::press::press_from_json(r#"{"press": "cur", "leverage_type": "both"}"#);
    assert!(unknown.is_err(), "an unknown leverage_type is refused");
}

#[test]
fn scorers_refuse_a_decoding_step() {
    // kvpress's leverage-family scorers only score a prefill (every cached token a query).
    let layer = SyntheticLayer::random(SyntheticShape::small(32), 2).unwrap();
    let input = layer.input();
    let queries = input.queries.narrow(2, 24, 8).unwrap();
    let decoding = kvpress_core::PressInput {
        queries: &queries,
        query_position: 24,
        ..input
    };
    for press in [leverage(0.5), non_causal(0.5), compactor(0.5)] {
        assert!(press.compress(&decoding).is_err());
    }
    assert!(cur(0.5).compress(&decoding).is_ok(), "CUR scores any cache");
}
