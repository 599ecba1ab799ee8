//! LagKV's scores against kvpress 0.5.5's `LagKVPress.score` on a small deterministic input
//! (numbers from PyTorch, float32 on the CPU).

use candle_core::{Device, Tensor};
use kvpress_core::press::{press_from_json, Press};
use presses_baselines::{lagkv_scores, LagKv};

/// `sin(0.37 (t + 1) (c + 1) + seed (h + 1)) (1 + 0.1 c)` for 2 heads, `n` tokens, 4 channels,
/// computed in f64 and rounded to f32 (as `torch.tensor` of the Python floats).
fn states(n: usize, seed: f64) -> Tensor {
    let mut data = Vec::new();
    for h in 0..2 {
        for t in 0..n {
            for c in 0..4 {
                let x = (0.37 * (t + 1) as f64 * (c + 1) as f64 + seed * (h + 1) as f64).sin()
                    * (1.0 + 0.1 * c as f64);
                data.push(x as f32);
            }
        }
    }
    Tensor::from_vec(data, (1, 2, n, 4), &Device::Cpu).unwrap()
}

fn scores(press: &LagKv, n: usize) -> Vec<Vec<f32>> {
    lagkv_scores(press, &states(n, 1.0), &states(n, 2.0))
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn press(cross_scoring: bool) -> LagKv {
    LagKv {
        compression_ratio: 0.5,
        n_sink: 2,
        lag_size: 3,
        cross_scoring,
    }
}

#[test]
fn ranks_match_kvpress() {
    // T = 13, sinks 2, lag 3: partitions 2..5, 5..8 scored against the next one; 8..13 kept.
    let third = 1.0f32 / 3.0;
    let expected = [
        1.0,
        1.0,
        2.0 * third,
        third,
        0.0,
        2.0 * third,
        0.0,
        third,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for head in scores(&press(false), 13) {
        assert_eq!(head, expected);
    }
}

#[test]
fn cross_scores_match_kvpress() {
    let expected = [
        [
            1.0,
            1.0,
            0.6013603806495667,
            0.24659864604473114,
            0.1520410031080246,
            0.5959251523017883,
            0.1854265034198761,
            0.21864832937717438,
            1.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        [
            1.0,
            1.0,
            0.591555118560791,
            0.24821940064430237,
            0.16022545099258423,
            0.5451504588127136,
            0.2257806956768036,
            0.2290688455104828,
            1.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
    ];
    for (got, want) in scores(&press(true), 13).iter().zip(expected) {
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
}

#[test]
fn a_short_context_scores_by_recency() {
    // T = 7 < n_sink + 2 lag = 8.
    let expected = [1.0, 1.0, 0.0, 0.2, 0.4, 0.6, 0.8];
    for head in scores(&press(false), 7) {
        assert_eq!(head, expected);
    }
}

#[test]
fn lagkv_keeps_sinks_the_tail_and_the_best_ranks() {
    let layer =
        presses_testing::SyntheticLayer::random(presses_testing::SyntheticShape::small(13), 2)
            .unwrap();
    let input = layer.input();
    let compression = press(false).compress(&input).unwrap();
    // floor(13 / 2) = 6 tokens: sinks 0, 1 and tail 8..13 are seven candidates at score 1, so
    // the six kept are among them.
    for head in compression.selection.heads() {
        assert_eq!(head.len(), 6);
        assert!(head.iter().all(|t| !(2..8).contains(t)), "{head:?}");
    }
}

#[test]
fn lagkv_config_and_checks() {
    let press = press_from_json(r#"{"press": "lagkv", "compression_ratio": 0.5}"#).unwrap();
    assert_eq!(press.compression_ratio(), 0.5);
    let error = press_from_json(r#"{"press": "lagkv", "compression_ratio": 0.5, "lag_size": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(error.contains("lag_size 1 must be at least 2"), "{error}");
}
