//! Properties of the flattened cache: its attention equals dense attention with the dropped keys
//! masked, its layout stays consistent, and every surviving token's K/V stay bit-exact through
//! appends, truncations and compactions. And the allocator keeps exactly the layer budget.

use adakv::{AdaKvAllocator, FlatLayerCache};
use candle_core::{Device, Tensor};
use kvpress_core::press::{n_kept, BudgetAllocator, LayerPosition, Selection};
use kvpress_core::LayerCache;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_tensor(rng: &mut StdRng, shape: (usize, usize, usize, usize)) -> (Tensor, Vec<f32>) {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    (
        Tensor::from_vec(data.clone(), shape, &Device::Cpu).unwrap(),
        data,
    )
}

fn random_selection(rng: &mut StdRng, heads: usize, n_tokens: usize) -> Vec<Vec<u32>> {
    (0..heads)
        .map(|_| {
            let keep = rng.random_range(1..=n_tokens);
            let mut all: Vec<u32> = (0..n_tokens as u32).collect();
            for i in (1..all.len()).rev() {
                all.swap(i, rng.random_range(0..=i));
            }
            all.truncate(keep);
            all.sort_unstable();
            all
        })
        .collect()
}

/// Textbook attention of one query over the visible rows, in f64.
fn reference_row(query: &[f32], keys: &[&[f32]], values: &[&[f32]]) -> Vec<f64> {
    let d = query.len();
    let scale = 1.0 / (d as f64).sqrt();
    let logits: Vec<f64> = keys
        .iter()
        .map(|k| {
            k.iter()
                .zip(query)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    (0..d)
        .map(|c| {
            weights
                .iter()
                .zip(values)
                .map(|(w, v)| w * v[c] as f64)
                .sum::<f64>()
                / total
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn flattened_attention_equals_masked_dense_attention(
        seed in 0u64..10_000,
        batch in 1usize..3,
        n_kv_heads in 1usize..4,
        group in 1usize..4,
        n_tokens in 1usize..40,
        n_new in 1usize..5,
    ) {
        let d = 8;
        let mut rng = StdRng::seed_from_u64(seed);
        let heads = batch * n_kv_heads;
        let (keys, key_data) = random_tensor(&mut rng, (batch, n_kv_heads, n_tokens, d));
        let (values, value_data) = random_tensor(&mut rng, (batch, n_kv_heads, n_tokens, d));
        let mut cache = FlatLayerCache::new();
        cache.append(&keys, &values).unwrap();
        let kept = random_selection(&mut rng, heads, n_tokens);
        cache
            .compact(&Selection::new(kept.clone(), batch, n_kv_heads, n_tokens).unwrap(), None)
            .unwrap();
        let (new_keys, new_key_data) = random_tensor(&mut rng, (batch, n_kv_heads, n_new, d));
        let (new_values, new_value_data) = random_tensor(&mut rng, (batch, n_kv_heads, n_new, d));
        cache.append(&new_keys, &new_values).unwrap();
        let n_heads = n_kv_heads * group;
        let (queries, query_data) = random_tensor(&mut rng, (batch, n_heads, n_new, d));
        let output = cache.attend(&queries, false).unwrap().output;
        let output = output.flatten_all().unwrap().to_vec1::<f32>().unwrap();

        for b in 0..batch {
            for h in 0..n_heads {
                let kv = b * n_kv_heads + h / group;
                for i in 0..n_new {
                    // Visible: the kept old tokens, then new tokens up to this query.
                    let old = |t: usize| ((kv * n_tokens) + t) * d..((kv * n_tokens) + t + 1) * d;
                    let new = |t: usize| ((kv * n_new) + t) * d..((kv * n_new) + t + 1) * d;
                    let mut ks: Vec<&[f32]> = kept[kv].iter().map(|&t| &key_data[old(t as usize)]).collect();
                    let mut vs: Vec<&[f32]> = kept[kv].iter().map(|&t| &value_data[old(t as usize)]).collect();
                    for t in 0..=i {
                        ks.push(&new_key_data[new(t)]);
                        vs.push(&new_value_data[new(t)]);
                    }
                    let q_at = ((b * n_heads + h) * n_new + i) * d;
                    let want = reference_row(&query_data[q_at..q_at + d], &ks, &vs);
                    for c in 0..d {
                        let got = output[q_at + c] as f64;
                        prop_assert!((got - want[c]).abs() <= 1e-5, "head {h} row {i}: {got} vs {}", want[c]);
                    }
                }
            }
        }
    }

    #[test]
    fn appends_truncations_and_compactions_keep_tokens_bit_exact(
        seed in 0u64..10_000,
        n_kv_heads in 1usize..4,
        operations in proptest::collection::vec(0u8..5, 1..25),
    ) {
        let d = 4;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cache = FlatLayerCache::new();
        // The reference: each head's list of (key row, value row).
        let mut expected: Vec<Vec<(Vec<f32>, Vec<f32>)>> = vec![Vec::new(); n_kv_heads];
        for op in operations {
            let len = cache.len();
            match op {
                0 | 1 => {
                    let n = rng.random_range(1..80);
                    let (k, kd) = random_tensor(&mut rng, (1, n_kv_heads, n, d));
                    let (v, vd) = random_tensor(&mut rng, (1, n_kv_heads, n, d));
                    cache.append(&k, &v).unwrap();
                    for (h, rows) in expected.iter_mut().enumerate() {
                        for t in 0..n {
                            let at = (h * n + t) * d;
                            rows.push((kd[at..at + d].to_vec(), vd[at..at + d].to_vec()));
                        }
                    }
                }
                2 if len > 0 => {
                    let shortest = expected.iter().map(Vec::len).min().unwrap();
                    let drop = rng.random_range(0..=shortest);
                    cache.truncate(len - drop).unwrap();
                    expected.iter_mut().for_each(|rows| rows.truncate(rows.len() - drop));
                }
                3 if len > 0 => {
                    // Each head keeps a random subset of its own tokens (heads may be ragged).
                    let kept: Vec<Vec<u32>> = expected
                        .iter()
                        .map(|rows| {
                            (0..rows.len() as u32).filter(|_| rng.random::<f32>() < 0.6).collect()
                        })
                        .collect();
                    cache.compact(&Selection::new(kept.clone(), 1, n_kv_heads, len).unwrap(), None).unwrap();
                    for (rows, kept) in expected.iter_mut().zip(&kept) {
                        *rows = kept.iter().map(|&t| rows[t as usize].clone()).collect();
                    }
                }
                4 if len > 0 => cache.shrink_to_fit().unwrap(),
                _ => {}
            }
            // Layout invariants.
            let offsets = cache.offsets();
            prop_assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "offsets monotone");
            prop_assert!(cache.head_lengths().iter().zip(cache.capacities()).all(|(l, c)| l <= c));
            prop_assert_eq!(cache.stored_rows(), expected.iter().map(Vec::len).sum::<usize>());
            prop_assert_eq!(cache.bytes_used(), 2 * cache.stored_rows() * d * 4 + cache.metadata_bytes());
            if cache.head_lengths().is_empty() {
                prop_assert!(expected.iter().all(Vec::is_empty));
                continue;
            }
            for (h, rows) in expected.iter().enumerate() {
                prop_assert_eq!(cache.head_lengths()[h], rows.len());
                let keys: Vec<f32> = rows.iter().flat_map(|(k, _)| k.clone()).collect();
                let values: Vec<f32> = rows.iter().flat_map(|(_, v)| v.clone()).collect();
                let (mut key_buffer, mut value_buffer) = (Vec::new(), Vec::new());
                prop_assert_eq!(cache.head_keys(h, &mut key_buffer), keys.as_slice());
                prop_assert_eq!(cache.head_values(h, &mut value_buffer), values.as_slice());
            }
        }
    }

    #[test]
    fn evicting_in_place_stores_what_compacting_stores_and_appends_after_it(
        seed in 0u64..10_000,
        n_kv_heads in 1usize..4,
        n_tokens in 1usize..40,
        rounds in 1usize..4,
    ) {
        let d = 4;
        let mut rng = StdRng::seed_from_u64(seed);
        let (keys, _) = random_tensor(&mut rng, (1, n_kv_heads, n_tokens, d));
        let (values, _) = random_tensor(&mut rng, (1, n_kv_heads, n_tokens, d));
        let mut evicted = FlatLayerCache::new();
        evicted.append(&keys, &values).unwrap();
        let mut compacted = evicted.clone();
        for _ in 0..rounds {
            let lengths = evicted.head_lengths().to_vec();
            let longest = lengths.iter().copied().max().unwrap_or(0);
            let kept: Vec<Vec<u32>> = lengths
                .iter()
                .map(|&l| random_selection(&mut rng, 1, l).remove(0))
                .collect();
            let selection = Selection::new(kept, 1, n_kv_heads, longest).unwrap();
            evicted.evict(&selection).unwrap();
            compacted.compact(&selection, None).unwrap();
            // Both take the same next token.
            let (k, _) = random_tensor(&mut rng, (1, n_kv_heads, 1, d));
            let (v, _) = random_tensor(&mut rng, (1, n_kv_heads, 1, d));
            evicted.append(&k, &v).unwrap();
            compacted.append(&k, &v).unwrap();
            prop_assert_eq!(evicted.head_lengths(), compacted.head_lengths());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for h in 0..n_kv_heads {
                prop_assert_eq!(evicted.head_keys(h, &mut a), compacted.head_keys(h, &mut b));
                prop_assert_eq!(evicted.head_values(h, &mut a), compacted.head_values(h, &mut b));
            }
        }
    }

    #[test]
    fn the_allocator_keeps_the_layer_budget_and_every_safeguard(
        seed in 0u64..10_000,
        n_kv_heads in 1usize..5,
        n_tokens in 2usize..120,
        ratio in 0.05f64..0.95,
        alpha in 0.0f64..1.0,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let scores: Vec<f32> = (0..n_kv_heads * n_tokens)
            .map(|_| (rng.random_range(0..6) as f32) * rng.random::<f32>())
            .collect();
        let scores = Tensor::from_vec(scores, (1, n_kv_heads, n_tokens), &Device::Cpu).unwrap();
        let allocator = AdaKvAllocator::kvpress(alpha);
        let layer = LayerPosition { layer_idx: 0, n_layers: 1 };
        let selection = allocator.allocate(&scores, ratio, layer).unwrap();
        let budget = n_kept(n_tokens, ratio);
        prop_assert_eq!(selection.total_kept(), budget * n_kv_heads);
        for head in selection.heads() {
            prop_assert!(head.len() >= allocator.n_safe(budget));
            prop_assert!(head.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
