//! The conformance suite for `cap`, its kept sets on a fixed input, and its scores against a
//! plain loop written from kvpress's Python (queries projected from the hidden states as kvpress
//! does, the averaged RoPE matrix built explicitly, the capacity system solved directly).

use candle_core::{DType, Tensor};
use kvpress_core::press::Scorer;
use kvpress_core::Press;
use presses_cap::Cap;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

fn cap(compression_ratio: f64) -> Box<dyn Press> {
    Box::new(Cap {
        compression_ratio,
        ..Cap::default()
    })
}

fn flat(t: &Tensor) -> Vec<f64> {
    let v = t.to_dtype(DType::F64).unwrap();
    v.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn cap_conforms() {
    run_conformance(
        &cap,
        &Promises {
            always_kept: |_| vec![0, 1, 2, 3],
            min_tokens: 5,
            ..Promises::default()
        },
    );
}

#[test]
fn cap_kept_sets_on_a_fixed_input() {
    let layer = SyntheticLayer::random(SyntheticShape::small(48), 1).unwrap();
    let kept = presses_testing::kept_sets(cap(0.5).as_ref(), layer).unwrap();
    insta::assert_json_snapshot!(kept);
}

#[test]
fn a_context_no_longer_than_the_sinks_is_refused() {
    let layer = SyntheticLayer::random(SyntheticShape::small(4), 1).unwrap();
    let error = Cap::default().score(&layer.input(), 0.5).unwrap_err();
    assert!(error.to_string().contains("n_sink"), "{error}");
    let bad = Cap {
        epsilon: -1.0,
        ..Cap::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("epsilon"));
}

/// Solves `a x = b` (`d x d`) by Gaussian elimination.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, d: usize) -> Vec<f64> {
    for c in 0..d {
        for r in c + 1..d {
            let f = a[r * d + c] / a[c * d + c];
            for j in c..d {
                a[r * d + j] -= f * a[c * d + j];
            }
            b[r] -= f * b[c];
        }
    }
    for c in (0..d).rev() {
        let s: f64 = (c + 1..d).map(|j| a[c * d + j] * b[j]).sum();
        b[c] = (b[c] - s) / a[c * d + c];
    }
    b
}

/// kvpress's `CapPress.score` with plain loops.
fn reference(layer: &SyntheticLayer, press: &Cap) -> Vec<f64> {
    let input = layer.input();
    let (_, n_kv, t_len, d) = input.keys.dims4().unwrap();
    let (n_heads, group, sink) = (input.shape.n_heads, input.shape.group_size(), press.n_sink);
    let n = t_len - sink;
    // Pre-RoPE queries: hidden states times W_qᵀ.
    let hidden = flat(input.hidden_states);
    let wq = flat(&input.projections.query_weight().unwrap());
    let width = hidden.len() / t_len;
    // The averaged RoPE matrix mean_p (cos_p I + sin_p P) over positions t_len..t_len+512.
    let half = d / 2;
    let mut r = vec![0f64; d * d];
    for p in t_len..t_len + press.n_future_positions {
        for (i, &f) in input.rotary.inv_freq().iter().enumerate() {
            let angle = p as f32 * f;
            let (c, s) = (f64::from(angle.cos()), f64::from(angle.sin()));
            for (row, col, value) in [
                (i, i, c),
                (i + half, i + half, c),
                (i + half, i, s),
                (i, i + half, -s),
            ] {
                r[row * d + col] += value / press.n_future_positions as f64;
            }
        }
    }
    let keys = flat(input.keys);
    let values = flat(input.values);
    let unit = |x: Vec<f64>| {
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        x.into_iter().map(|v| v / norm).collect::<Vec<f64>>()
    };
    let mut scores = vec![0f64; n_kv * n];
    for h in 0..n_heads {
        let mut mean = vec![0f64; d];
        for t in sink..t_len {
            for (j, m) in mean.iter_mut().enumerate() {
                let row = &wq[(h * d + j) * width..(h * d + j + 1) * width];
                *m += row
                    .iter()
                    .zip(&hidden[t * width..(t + 1) * width])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / n as f64;
            }
        }
        let anchor = unit(
            (0..d)
                .map(|i| (0..d).map(|j| r[i * d + j] * mean[j]).sum())
                .collect(),
        );
        let kv = h / group;
        let row = |x: &[f64], t: usize| {
            x[(kv * t_len + sink + t) * d..(kv * t_len + sink + t + 1) * d].to_vec()
        };
        let logits: Vec<f64> = (0..n)
            .map(|t| {
                press.tau
                    * unit(row(&keys, t))
                        .iter()
                        .zip(&anchor)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        .clamp(-1.0, 1.0)
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let mut capacity = vec![0f64; d * d];
        (0..d).for_each(|i| capacity[i * d + i] = 1.0);
        for (t, w) in weights.iter().enumerate() {
            let v = row(&values, t);
            for i in 0..d {
                for j in 0..d {
                    capacity[i * d + j] += (w + press.epsilon) * v[i] * v[j];
                }
            }
        }
        for (t, w) in weights.iter().enumerate() {
            let v = row(&values, t);
            let x = solve(capacity.clone(), v.clone(), d);
            scores[kv * n + t] +=
                w * v.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() / group as f64;
        }
    }
    scores
}

#[test]
fn cap_equals_a_plain_loop() {
    let layer = SyntheticLayer::random(SyntheticShape::small(37), 2).unwrap();
    for press in [
        Cap::default(),
        Cap {
            tau: 1.5,
            n_sink: 2,
            n_future_positions: 7,
            ..Cap::default()
        },
    ] {
        let got = flat(&press.score(&layer.input(), 0.5).unwrap());
        let want = reference(&layer, &press);
        let n = 37 - press.n_sink;
        let max = want.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for h in 0..2 {
            let row = &got[h * 37..(h + 1) * 37];
            assert!(row[..press.n_sink]
                .iter()
                .all(|&s| (s - (max + 1.0)).abs() < 1e-5));
            for (g, w) in row[press.n_sink..].iter().zip(&want[h * n..(h + 1) * n]) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs() + 1e-7,
                    "{press:?}: {g} vs {w}"
                );
            }
        }
    }
}
