use kvpress_core::Press;
use presses_baselines::{
    KeyDiff, Knorm, LagKv, ObservedAttention, RandomPress, StreamingLlm, Tova,
};
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn knorm(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Knorm { compression_ratio })
}

fn streaming_llm(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(StreamingLlm {
        compression_ratio,
        n_sink: 4,
    })
}

fn random(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(RandomPress {
        compression_ratio,
        seed: Some(42),
    })
}

fn tova(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Tova { compression_ratio })
}

fn observed_attention(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(ObservedAttention { compression_ratio })
}

fn keydiff(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(KeyDiff { compression_ratio })
}

fn lagkv(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(LagKv {
        compression_ratio,
        lag_size: 16,
        ..LagKv::default()
    })
}

/// The kept sets of `press` on the fixed 48-token synthetic layer.
fn kept_sets(press: Box<dyn Press>) -> Vec<Vec<u32>> {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    presses_testing::kept_sets(press.as_ref(), layer).unwrap()
}

#[test]
fn knorm_conforms() {
    run_conformance(&knorm, &Promises::default());
}

#[test]
fn streaming_llm_conforms() {
    run_conformance(
        &streaming_llm,
        &Promises {
            always_kept: |n| vec![0, 1, 2, 3, n as u32 - 1],
            min_tokens: 5,
            ..Promises::default()
        },
    );
}

#[test]
fn random_conforms() {
    run_conformance(&random, &Promises::default());
}

#[test]
fn tova_conforms() {
    run_conformance(
        &tova,
        &Promises {
            always_kept: |n| vec![n as u32 - 1],
            ..Promises::default()
        },
    );
}

#[test]
fn observed_attention_conforms() {
    run_conformance(&observed_attention, &Promises::default());
}

#[test]
fn keydiff_conforms() {
    run_conformance(&keydiff, &Promises::default());
}

#[test]
fn knorm_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(knorm(0.5)));
}

#[test]
fn streaming_llm_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(streaming_llm(0.5)));
}

#[test]
fn random_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(random(0.5)));
}

#[test]
fn tova_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(tova(0.5)));
}

#[test]
fn observed_attention_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(observed_attention(0.5)));
}

#[test]
fn keydiff_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(keydiff(0.5)));
}

#[test]
fn lagkv_conforms() {
    run_conformance(
        &lagkv,
        &Promises {
            // T = 256, lag 16: sinks 0..4, the last partition with the remainder 228..256.
            always_kept: |n| {
                if n == 256 {
                    (0..4).chain(228..256).collect()
                } else {
                    Vec::new()
                }
            },
            ..Promises::default()
        },
    );
    // Too short to partition (T < n_sink + 2 lag): the sinks and the most recent tokens.
    run_conformance(
        &|r| {
            Box::new(LagKv {
                compression_ratio: r,
                ..LagKv::default()
            })
        },
        &Promises {
            always_kept: |n| vec![0, 1, 2, 3, n as u32 - 1],
            min_tokens: 5,
            ..Promises::default()
        },
    );
}

#[test]
fn lagkv_kept_sets_on_a_fixed_input() {
    insta::assert_json_snapshot!(kept_sets(Box::new(LagKv {
        compression_ratio: 0.5,
        lag_size: 8,
        ..LagKv::default()
    })));
}
