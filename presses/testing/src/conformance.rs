//! The conformance suite: one set of checks that every press crate runs on its presses (shapes,
//! ratio 0 keeps everything, determinism, promised tokens kept, no NaN on constant or tiny
//! inputs, ratio validation, config round trip). A failed check panics with what went wrong.

use kvpress_core::press::{
    n_kept, press_from_json, press_name, press_to_json, Compression, RatioControl,
};
use kvpress_core::Press;

use crate::{SyntheticLayer, SyntheticShape};

/// What a press promises beyond the common contract.
#[derive(Debug, Clone, Copy)]
pub struct Promises {
    /// Tokens every head keeps whenever the budget allows, given the context length (window
    /// tokens for SnapKV, sink tokens for StreamingLLM, ...).
    pub always_kept: fn(n_tokens: usize) -> Vec<u32>,
    /// The shortest context the press accepts.
    pub min_tokens: usize,
    /// Whether every head of every layer keeps exactly `floor(T * (1 - ratio))` tokens (false for
    /// per-layer budgets such as PyramidKV).
    pub uniform_budget: bool,
}

impl Default for Promises {
    fn default() -> Self {
        Self {
            always_kept: |_| Vec::new(),
            min_tokens: 2,
            uniform_budget: true,
        }
    }
}

/// Context length of the main checks.
const N_TOKENS: usize = 256;

/// Runs every check on the press that `make(ratio)` builds.
pub fn run_conformance(make: &dyn Fn(f64) -> Box<dyn Press>, promises: &Promises) {
    let name = press_name(make(0.5).as_ref());
    check_validation(&name, make);
    check_config_round_trip(&name, make(0.5).as_ref());
    let main_layer = random_layer(make(0.5).as_ref(), SyntheticShape::small(N_TOKENS), 7);
    check_shapes(&name, &main_layer, make, promises);
    check_ratio_zero_keeps_everything(&name, &main_layer, make);
    check_determinism(&name, &main_layer, make);
    check_promised_tokens(&name, &main_layer, make, promises);
    check_ratios_at_once(&name, &main_layer, make);
    let constant = constant_layer(make(0.5).as_ref(), SyntheticShape::small(N_TOKENS));
    check_finite(&name, "a constant input", &constant, make(0.5).as_ref());
    let tiny = random_layer(
        make(0.5).as_ref(),
        SyntheticShape::small(promises.min_tokens),
        3,
    );
    check_finite(
        &name,
        "the shortest accepted input",
        &tiny,
        make(0.5).as_ref(),
    );
    let batch = random_layer(
        make(0.5).as_ref(),
        SyntheticShape {
            batch: 2,
            ..SyntheticShape::small(N_TOKENS)
        },
        11,
    );
    let compression = compress(&name, &batch, make(0.5).as_ref());
    assert_eq!(compression.selection.batch(), 2, "{name}: batch of 2");
}

/// The checks of a decode-time press (`decoding`, `compression_ratio_decoding`, or a wrapper
/// holding one) that `make(ratio)` builds around an inner press at `ratio`: it says it
/// compresses while decoding, leaves the prefill to its prefill part (everything, for a pure
/// decode-time press), its schedule's press decides like the inner press, its config round
/// trips, and an invalid inner ratio is refused.
pub fn run_decoding_conformance(
    make: &dyn Fn(f64) -> Box<dyn Press>,
    prefill_keeps_everything: bool,
) {
    let press = make(0.5);
    let name = press_name(press.as_ref());
    assert!(press.validate().is_ok(), "{name}: valid");
    assert!(
        make(1.5).validate().is_err(),
        "{name}: an inner ratio of 1.5 is refused"
    );
    check_config_round_trip(&name, press.as_ref());
    let description = press.describe();
    assert!(
        description.compresses_while_decoding,
        "{name}: compresses while decoding"
    );
    let layer = random_layer(press.as_ref(), SyntheticShape::small(N_TOKENS), 7);
    let prefill = compress(&name, &layer, press.as_ref());
    assert_eq!(
        prefill.selection.keeps_everything(),
        prefill_keeps_everything,
        "{name}: what the prefill keeps"
    );
    let schedule = press.decoding().expect("a decode-time schedule");
    assert!(schedule.compression_interval > 0, "{name}: interval");
    for ratio in [0.25, 0.5, 0.75] {
        let decided = schedule
            .press
            .compress_at_ratio(&layer.input(), ratio)
            .unwrap_or_else(|e| panic!("{name}: the schedule's press fails at {ratio}: {e}"));
        assert_eq!(
            decided.selection.uniform_len(),
            Some(n_kept(N_TOKENS, ratio)),
            "{name}: the schedule's press keeps floor(T(1-r)) at ratio {ratio}"
        );
    }
}

/// Scoring once for many ratios ([`Press::compress_at_ratios`]) decides exactly what one press
/// per ratio decides, for every press whose ratio the runtime may set.
fn check_ratios_at_once(name: &str, layer: &SyntheticLayer, make: &dyn Fn(f64) -> Box<dyn Press>) {
    let press = make(0.5);
    if press.describe().ratio != RatioControl::Settable {
        return;
    }
    let ratios = [0.0, 0.25, 0.5, 0.75];
    let input = layer.input();
    let at_once = press
        .compress_at_ratios(&input, &ratios)
        .unwrap_or_else(|e| panic!("{name}: compress_at_ratios failed: {e}"));
    assert_eq!(
        at_once.len(),
        ratios.len(),
        "{name}: one compression per ratio"
    );
    for (compression, &ratio) in at_once.iter().zip(&ratios) {
        let alone = compress(name, layer, make(ratio).as_ref());
        assert_eq!(
            compression.selection, alone.selection,
            "{name}: compress_at_ratios at {ratio} equals the press at {ratio}"
        );
        let at_ratio = press
            .compress_at_ratio(&input, ratio)
            .unwrap_or_else(|e| panic!("{name}: compress_at_ratio({ratio}) failed: {e}"));
        assert_eq!(
            compression.selection, at_ratio.selection,
            "{name}: compress_at_ratios at {ratio} equals compress_at_ratio({ratio})"
        );
        assert_eq!(
            compression.keys.is_some(),
            alone.keys.is_some(),
            "{name}: replacement keys at {ratio}"
        );
    }
}

fn random_layer(press: &dyn Press, shape: SyntheticShape, seed: u64) -> SyntheticLayer {
    let layer = SyntheticLayer::random(shape, seed).expect("synthetic layer");
    with_weights_if_needed(press, layer)
}

fn constant_layer(press: &dyn Press, shape: SyntheticShape) -> SyntheticLayer {
    let layer = SyntheticLayer::constant(shape).expect("synthetic layer");
    with_weights_if_needed(press, layer)
}

/// Question tokens of the synthetic layers for presses that need the question prefilled with
/// the context ([`kvpress_core::press::PressDescription::needs_question`]): the last ones.
pub const QUESTION_TOKENS: usize = 8;

fn with_weights_if_needed(press: &dyn Press, layer: SyntheticLayer) -> SyntheticLayer {
    let description = press.describe();
    let layer = if description.needs_question {
        let n = QUESTION_TOKENS.min(layer.shape.n_tokens.saturating_sub(1));
        layer.with_question_tokens(n)
    } else {
        layer
    };
    if description.needs_attention_weights {
        layer.with_attention_weights().expect("attention weights")
    } else {
        layer
    }
}

fn compress(name: &str, layer: &SyntheticLayer, press: &dyn Press) -> Compression {
    press
        .compress(&layer.input())
        .unwrap_or_else(|e| panic!("{name}: compress failed: {e}"))
}

fn check_validation(name: &str, make: &dyn Fn(f64) -> Box<dyn Press>) {
    assert!(make(0.5).validate().is_ok(), "{name}: ratio 0.5 is valid");
    assert!(make(0.0).validate().is_ok(), "{name}: ratio 0 is valid");
    for bad in [1.0, 1.5, -0.1] {
        let error = make(bad)
            .validate()
            .expect_err(&format!("{name}: ratio {bad} must be rejected"));
        assert!(
            error.to_string().contains("compression_ratio"),
            "{name}: the error for ratio {bad} names the field: {error}"
        );
    }
}

fn check_config_round_trip(name: &str, press: &dyn Press) {
    let json = press_to_json(press).expect("serializes");
    let back = press_from_json(&json)
        .unwrap_or_else(|e| panic!("{name}: its own config does not load: {e}\n{json}"));
    assert_eq!(
        press_to_json(back.as_ref()).expect("serializes"),
        json,
        "{name}: config round trip"
    );
}

fn check_shapes(
    name: &str,
    layer: &SyntheticLayer,
    make: &dyn Fn(f64) -> Box<dyn Press>,
    promises: &Promises,
) {
    let shape = layer.shape;
    for ratio in [0.25, 0.5, 0.75] {
        let compression = compress(name, layer, make(ratio).as_ref());
        let selection = &compression.selection;
        assert_eq!(selection.batch(), shape.batch, "{name}: batch");
        assert_eq!(selection.n_kv_heads(), shape.n_kv_heads, "{name}: heads");
        assert_eq!(selection.n_tokens(), shape.n_tokens, "{name}: tokens");
        if promises.uniform_budget {
            assert_eq!(
                selection.uniform_len(),
                Some(n_kept(shape.n_tokens, ratio)),
                "{name}: every head keeps floor(T(1-r)) at ratio {ratio}"
            );
        }
        assert!(
            selection.total_kept() < shape.n_kv_heads * shape.n_tokens,
            "{name}: ratio {ratio} removes tokens"
        );
        if let Some(scores) = &compression.scores {
            assert_eq!(
                scores.dims(),
                &[shape.batch, shape.n_kv_heads, shape.n_tokens],
                "{name}: scores are (batch, n_kv_heads, n_tokens)"
            );
        }
    }
}

fn check_ratio_zero_keeps_everything(
    name: &str,
    layer: &SyntheticLayer,
    make: &dyn Fn(f64) -> Box<dyn Press>,
) {
    let compression = compress(name, layer, make(0.0).as_ref());
    assert!(
        compression.selection.keeps_everything(),
        "{name}: ratio 0 keeps every token"
    );
    assert!(compression.keys.is_none(), "{name}: ratio 0 keeps the keys");
}

fn check_determinism(name: &str, layer: &SyntheticLayer, make: &dyn Fn(f64) -> Box<dyn Press>) {
    let first = compress(name, layer, make(0.5).as_ref());
    let second = compress(name, layer, make(0.5).as_ref());
    assert_eq!(first.selection, second.selection, "{name}: deterministic");
    if let (Some(a), Some(b)) = (&first.scores, &second.scores) {
        let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap();
        let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap();
        assert_eq!(a, b, "{name}: identical scores on identical input");
    }
}

fn check_promised_tokens(
    name: &str,
    layer: &SyntheticLayer,
    make: &dyn Fn(f64) -> Box<dyn Press>,
    promises: &Promises,
) {
    let promised = (promises.always_kept)(layer.shape.n_tokens);
    for ratio in [0.25, 0.5, 0.75] {
        if n_kept(layer.shape.n_tokens, ratio) < promised.len() {
            continue;
        }
        let compression = compress(name, layer, make(ratio).as_ref());
        for head in compression.selection.heads() {
            for token in &promised {
                assert!(
                    head.binary_search(token).is_ok(),
                    "{name}: token {token} is promised to be kept at ratio {ratio}"
                );
            }
        }
    }
}

fn check_finite(name: &str, what: &str, layer: &SyntheticLayer, press: &dyn Press) {
    let compression = compress(name, layer, press);
    if let Some(scores) = &compression.scores {
        let values = scores
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        assert!(
            values.iter().all(|v| !v.is_nan()),
            "{name}: NaN scores on {what}"
        );
    }
    let expected = n_kept(layer.shape.n_tokens, press.compression_ratio());
    assert!(
        compression
            .selection
            .heads()
            .iter()
            .all(|h| !h.is_empty() && h.len() <= expected.max(1) * 2),
        "{name}: every head keeps tokens on {what}"
    );
}
