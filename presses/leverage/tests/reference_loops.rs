//! Each scorer against a plain loop written from kvpress's Python, on synthetic layers.

use candle_core::Tensor;
use kvpress_core::press::{InputChunk, Scorer};
use presses_leverage::{
    cur_projection, leverage_scores, leverage_sketch, Compactor, Cur, LeverageScore, LeverageType,
    NonCausalAttn, TorchGenerator,
};
use presses_testing::{SyntheticLayer, SyntheticShape};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// kvpress's z-normalisation over every element (unbiased std, clamped at 1e-6), in f64.
fn z(values: &[f64]) -> Vec<f64> {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    values
        .iter()
        .map(|v| (v - mean) / var.sqrt().max(1e-6))
        .collect()
}

/// Solves `a x = b` (`k x k`) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, k: usize) -> Vec<f64> {
    for c in 0..k {
        let p = (c..k)
            .max_by(|&i, &j| a[i * k + c].abs().total_cmp(&a[j * k + c].abs()))
            .unwrap();
        for j in 0..k {
            a.swap(c * k + j, p * k + j);
        }
        b.swap(c, p);
        for r in c + 1..k {
            let f = a[r * k + c] / a[c * k + c];
            for j in c..k {
                a[r * k + j] -= f * a[c * k + j];
            }
            b[r] -= f * b[c];
        }
    }
    for c in (0..k).rev() {
        let s: f64 = (c + 1..k).map(|j| a[c * k + j] * b[j]).sum();
        b[c] = (b[c] - s) / a[c * k + c];
    }
    b
}

#[test]
fn leverage_scores_equal_an_explicit_solve() {
    let (n, d, k) = (40, 6, 4);
    let mut generator = TorchGenerator::new(3);
    let keys = generator.randn(n * d);
    let sketch = generator.randn(d * k);
    let got = leverage_scores(&keys, &sketch, [1, n, d, k]).unwrap();
    // X = (K - mean) Φ / sqrt(k); score_i = x_iᵀ (XᵀX + 0.01 I)⁻¹ x_i.
    let scale = (1.0 / (k as f64).sqrt()) as f32;
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| f64::from(keys[i * d + j])).sum::<f64>() / n as f64)
        .collect();
    let x: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..k)
                .map(|c| {
                    (0..d)
                        .map(|j| {
                            (f64::from(keys[i * d + j]) - mean[j])
                                * f64::from(sketch[j * k + c] * scale)
                        })
                        .sum()
                })
                .collect()
        })
        .collect();
    let mut gram = vec![0f64; k * k];
    for row in &x {
        for a in 0..k {
            for b in 0..k {
                gram[a * k + b] += row[a] * row[b];
            }
        }
    }
    (0..k).for_each(|a| gram[a * k + a] += 1e-2);
    for (i, row) in x.iter().enumerate() {
        let y = solve(gram.clone(), row.clone(), k);
        let want: f64 = row.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!(
            (got[i] - want).abs() < 1e-5 * want.abs() + 1e-9,
            "token {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn each_layer_draws_its_own_sketch_in_layer_order() {
    let shape = [1, 2, 8, 5];
    let mut generator = TorchGenerator::new(11);
    for layer in 0..4 {
        assert_eq!(
            leverage_sketch(11, layer, shape),
            generator.randn(80),
            "layer {layer}"
        );
    }
}

/// kvpress's `non_causal_chunked_attn` column sums of one query head over one key head, with
/// its padding of the last chunk (padded query rows 0, padded key columns -1e-9).
fn non_causal_column_sums(q: &[f32], k: &[f32], n: usize, d: usize, chunk: usize) -> Vec<f64> {
    let padded_len = n.div_ceil(chunk) * chunk;
    let last_start = if padded_len > n {
        n / chunk * chunk
    } else {
        (n - 1) / chunk * chunk
    };
    let mut sums = vec![0f64; padded_len];
    for start in (0..padded_len).step_by(chunk) {
        for i in start..start + chunk {
            let logits: Vec<f64> = (start..start + chunk)
                .map(|j| {
                    let in_last = start == last_start;
                    if in_last && j >= n {
                        -1e-9
                    } else if in_last && i >= n {
                        0.0
                    } else {
                        (0..d)
                            .map(|c| f64::from(q[i * d + c]) * f64::from(k[j * d + c]))
                            .sum()
                    }
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            for (j, l) in (start..).zip(&logits) {
                sums[j] += (l - max).exp() / total;
            }
        }
    }
    sums.truncate(n);
    sums
}

fn non_causal_reference(layer: &SyntheticLayer, chunk: usize) -> Vec<f64> {
    let input = layer.input();
    let (_, n_kv, n, d) = input.keys.dims4().unwrap();
    let group = input.shape.group_size();
    let (q, k, v) = (flat(input.queries), flat(input.keys), flat(input.values));
    let mut scores = Vec::new();
    for h in 0..n_kv {
        let kh = &k[h * n * d..(h + 1) * n * d];
        let mut attention = vec![0f64; n];
        for g in 0..group {
            let qh = &q[(h * group + g) * n * d..(h * group + g + 1) * n * d];
            let sums = non_causal_column_sums(qh, kh, n, d, chunk);
            attention
                .iter_mut()
                .zip(sums)
                .for_each(|(a, s)| *a += s / group as f64);
        }
        let weighted: Vec<f64> = (0..n)
            .map(|t| {
                attention[t]
                    * v[(h * n + t) * d..(h * n + t + 1) * d]
                        .iter()
                        .map(|x| f64::from(x * x))
                        .sum::<f64>()
                        .sqrt()
            })
            .collect();
        scores.extend((0..n).map(|t| {
            weighted[t.saturating_sub(1)..(t + 2).min(n)]
                .iter()
                .sum::<f64>()
                / 3.0
        }));
    }
    z(&scores)
}

#[test]
fn non_causal_attention_equals_a_plain_loop() {
    for (n, chunk) in [(40, 16), (48, 16), (30, 64)] {
        let layer = SyntheticLayer::random(SyntheticShape::small(n), 5).unwrap();
        let press = NonCausalAttn {
            compression_ratio: 0.5,
            chunk_size: chunk,
        };
        let got = flat(&press.score(&layer.input(), 0.5).unwrap());
        let want = non_causal_reference(&layer, chunk);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() < 2e-5,
                "n {n}, chunk {chunk}, {i}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn compactor_blends_the_scores_of_the_unprotected_tokens() {
    let n = 40;
    let layer = SyntheticLayer::random(SyntheticShape::small(n), 9)
        .unwrap()
        .at_layer(2, 4);
    let input = layer.input();
    let press = Compactor {
        chunk_size: 16,
        ..Compactor::default()
    };
    let got = flat(&press.score(&input, 0.25).unwrap());
    let middle = InputChunk::new(&input, 8, n - 12).unwrap();
    let middle = middle.input(&input);
    let leverage = flat(&LeverageScore::default().score(&middle, 0.25).unwrap());
    let attention = flat(
        &NonCausalAttn {
            compression_ratio: 0.25,
            chunk_size: 16,
        }
        .score(&middle, 0.25)
        .unwrap(),
    );
    let blended: Vec<f32> = leverage
        .iter()
        .zip(&attention)
        .map(|(l, a)| 0.25 * l + a)
        .collect();
    let max = blended.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for h in 0..2 {
        let row = &got[h * n..(h + 1) * n];
        assert!(
            row[..8].iter().chain(&row[n - 4..]).all(|&s| s == max),
            "protected tokens score the maximum"
        );
        assert_eq!(&row[8..n - 4], &blended[h * (n - 12)..(h + 1) * (n - 12)]);
    }
}

fn cur_reference(layer: &SyntheticLayer, press: &Cur) -> Vec<f64> {
    let input = layer.input();
    let (_, n_kv, n, d) = input.keys.dims4().unwrap();
    let projection = press
        .use_random_leverage
        .then(|| cur_projection(press.seed, input.layer_idx, d));
    let norms = |x: &[f32]| -> Vec<f64> {
        x.chunks(d)
            .map(|row| match &projection {
                Some(p) => (0..20)
                    .map(|c| {
                        (0..d)
                            .map(|j| f64::from(row[j]) * f64::from(p[j * 20 + c]))
                            .sum::<f64>()
                            .powi(2)
                    })
                    .sum(),
                None => row.iter().map(|v| f64::from(v * v)).sum(),
            })
            .collect()
    };
    let local = |mut x: Vec<f64>| {
        if press.use_local_approximation {
            for w in x.chunks_mut(press.local_window_size) {
                let s: f64 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= s);
            }
        }
        x
    };
    let (k2, v2) = (norms(&flat(input.keys)), norms(&flat(input.values)));
    let mut out = Vec::new();
    for h in 0..n_kv {
        let k = local(k2[h * n..(h + 1) * n].to_vec());
        let v = local(v2[h * n..(h + 1) * n].to_vec());
        let mut s: Vec<f64> = match press.leverage_type {
            LeverageType::Key => k,
            LeverageType::Value => v,
            LeverageType::KvAvg => k.iter().zip(&v).map(|(a, b)| (a + b) / 2.0).collect(),
            LeverageType::KvProduct => k.iter().zip(&v).map(|(a, b)| a * b).collect(),
        };
        let total: f64 = s.iter().sum();
        s.iter_mut().for_each(|x| *x /= total);
        s[..press.num_sinks.min(n)].fill(1.0);
        out.extend(s);
    }
    out
}

#[test]
fn cur_equals_a_plain_loop_for_every_option() {
    let layer = SyntheticLayer::random(SyntheticShape::small(50), 4)
        .unwrap()
        .at_layer(1, 4);
    for leverage_type in [
        LeverageType::Key,
        LeverageType::Value,
        LeverageType::KvAvg,
        LeverageType::KvProduct,
    ] {
        for use_random_leverage in [false, true] {
            for use_local_approximation in [false, true] {
                let press = Cur {
                    leverage_type,
                    use_random_leverage,
                    use_local_approximation,
                    ..Cur::default()
                };
                let got = flat(&press.score(&layer.input(), 0.5).unwrap());
                let want = cur_reference(&layer, &press);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - w).abs() <= 1e-5 * w.abs() + 1e-9,
                        "{press:?}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// Leverage of ill-conditioned keys (a large common offset, channel scales over four orders of
/// magnitude, as real keys have) moves by little when every key changes by one rounding step,
/// because the Gram matrix is accumulated in f64: here by less than 1e-3 of the mean score,
/// where kvpress's float32 pipeline moves by 8e-3 (and by 2e-4 in float64).
#[test]
fn leverage_scores_are_stable_under_one_rounding_step() {
    let (n, d, k) = (1200, 64, 48);
    let mut generator = TorchGenerator::new(21);
    let noise = generator.randn(n * d);
    let keys: Vec<f32> = noise
        .iter()
        .enumerate()
        .map(|(i, x)| 50.0 + x * 10f32.powf(-3.0 + 4.0 * (i % d) as f32 / d as f32))
        .collect();
    let nudged: Vec<f32> = keys
        .iter()
        .enumerate()
        .map(|(i, x)| {
            f32::from_bits(if i % 2 == 0 {
                x.to_bits() + 1
            } else {
                x.to_bits() - 1
            })
        })
        .collect();
    let sketch = generator.randn(d * k);
    let before = leverage_scores(&keys, &sketch, [1, n, d, k]).unwrap();
    let after = leverage_scores(&nudged, &sketch, [1, n, d, k]).unwrap();
    let mean = before.iter().sum::<f64>() / n as f64;
    let worst = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-3 * mean, "moved by {worst} (mean score {mean})");
}
