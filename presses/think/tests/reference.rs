//! ThinK against plain reference loops, its cache end to end, `composed` [snapkv, think], and
//! what is refused (head-wise presses, saving, compressing twice).

use candle_core::Tensor;
use kvpress_core::press::{Compression, Press, Selection};
use kvpress_core::LayerCache;
use kvpress_kernels::grouped_query_attention;
use presses_snapkv::SnapKv;
use presses_testing::{SyntheticLayer, SyntheticShape};
use presses_think::{ChannelPrunedCache, Think};
use presses_wrappers::Composed;

fn think() -> Think {
    Think {
        key_channel_compression_ratio: 0.5,
        ..Think::default()
    }
}

fn snapkv() -> SnapKv {
    SnapKv {
        compression_ratio: 0.5,
        window_size: 8,
        kernel_size: 5,
    }
}

fn nested(t: &Tensor) -> Vec<Vec<Vec<Vec<f32>>>> {
    let (b, h, n, d) = t.dims4().unwrap();
    let flat = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..b)
        .map(|i| {
            (0..h)
                .map(|j| {
                    (0..n)
                        .map(|k| flat[((i * h + j) * n + k) * d..][..d].to_vec())
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// ThinK's channel scores by plain loops: mean over the last `window` queries of q², averaged
/// over the group, times the mean over tokens of k².
fn reference_scores(queries: &Tensor, keys: &Tensor, window: usize) -> Vec<Vec<f32>> {
    let (q, k) = (nested(queries), nested(keys));
    let (n_heads, n_kv) = (q[0].len(), k[0].len());
    let group = n_heads / n_kv;
    let n_q = q[0][0].len();
    let w = window.min(n_q);
    let d = k[0][0][0].len();
    (0..n_kv)
        .map(|h| {
            (0..d)
                .map(|c| {
                    let mut qn = 0f64;
                    for g in 0..group {
                        let rows = &q[0][h * group + g][n_q - w..];
                        qn += rows.iter().map(|r| (r[c] as f64).powi(2)).sum::<f64>() / w as f64;
                    }
                    let rows = &k[0][h];
                    let kn =
                        rows.iter().map(|r| (r[c] as f64).powi(2)).sum::<f64>() / rows.len() as f64;
                    (qn / group as f64 * kn) as f32
                })
                .collect()
        })
        .collect()
}

fn note<'a>(compression: &'a Compression, name: &str) -> &'a serde_json::Value {
    &compression
        .notes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no note {name}"))
        .value
}

#[test]
fn channel_scores_and_pruned_channels_match_a_plain_loop() {
    let layer = SyntheticLayer::random(SyntheticShape::small(80), 5).unwrap();
    let input = layer.input();
    let compression = think().compress(&input).unwrap();
    let want = reference_scores(input.queries, input.keys, 32);
    let got: Vec<Vec<f32>> =
        serde_json::from_value(note(&compression, "channel_scores").clone()).unwrap();
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((g - w).abs() <= 1e-5 + 1e-4 * w.abs(), "{g} vs {w}");
    }
    let zeroed: Vec<Vec<u32>> =
        serde_json::from_value(note(&compression, "zeroed_channels").clone()).unwrap();
    let channels = compression.selection.key_channels().unwrap();
    for (head, scores) in want.iter().enumerate() {
        let mut order: Vec<u32> = (0..8).collect();
        order.sort_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
        let mut lowest = order[..4].to_vec();
        lowest.sort_unstable();
        assert_eq!(zeroed[head], lowest, "head {head}");
        assert_eq!(channels.pruned(head), lowest, "head {head}");
    }
}

/// Keys with the channels `zeroed[head]` set to 0 (kvpress's cache).
fn zeroed_keys(keys: &Tensor, zeroed: &[Vec<u32>]) -> Tensor {
    let (b, h, n, d) = keys.dims4().unwrap();
    let mut data = keys.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (head, rows) in data.chunks_exact_mut(n * d).enumerate() {
        for row in rows.chunks_exact_mut(d) {
            zeroed[head].iter().for_each(|&c| row[c as usize] = 0.0);
        }
    }
    Tensor::from_vec(data, (b, h, n, d), keys.device()).unwrap()
}

/// Appends `compression`'s kept tokens of `layer` to a fresh pruned cache, then a question of
/// `n_question` tokens (the layer's last tokens again), and checks attention against kvpress's
/// (the kept keys with the zeroed channels, then the question with every channel).
fn answer_like_kvpress(layer: &SyntheticLayer, compression: &Compression, n_question: usize) {
    let input = layer.input();
    let mut cache = ChannelPrunedCache::new();
    cache.append(input.keys, input.values).unwrap();
    let full_bytes = cache.bytes_reserved();
    cache
        .compact(&compression.selection, compression.keys.as_ref())
        .unwrap();
    cache.shrink_to_fit().unwrap();
    let zeroed: Vec<Vec<u32>> =
        serde_json::from_value(note(compression, "zeroed_channels").clone()).unwrap();
    let kept_keys = zeroed_keys(&compression.selection.gather(input.keys).unwrap(), &zeroed);
    let kept_values = compression.selection.gather(input.values).unwrap();
    let n = layer.shape.n_tokens;
    let (q_keys, q_values) = (
        input.keys.narrow(2, n - n_question, n_question).unwrap(),
        input.values.narrow(2, n - n_question, n_question).unwrap(),
    );
    cache.append(&q_keys, &q_values).unwrap();
    let queries = input.queries.narrow(2, n - n_question, n_question).unwrap();
    let got = cache.attend(&queries, true).unwrap();
    let keys = Tensor::cat(&[&kept_keys, &q_keys], 2).unwrap();
    let values = Tensor::cat(&[&kept_values, &q_values], 2).unwrap();
    let want = grouped_query_attention(&queries, &keys, &values, true).unwrap();
    let diff = (got.output - want.output).unwrap().abs().unwrap();
    assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    let weights = (got.weights.unwrap() - want.weights.unwrap())
        .unwrap()
        .abs()
        .unwrap();
    assert!(weights.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    cache
        .truncate(compression.selection.uniform_len().unwrap())
        .unwrap();
    assert!(
        cache.bytes_used() < full_bytes,
        "pruned channels free memory"
    );
}

#[test]
fn the_pruned_cache_answers_like_kvpress_zeroed_keys() {
    let layer = SyntheticLayer::random(SyntheticShape::small(96), 9).unwrap();
    let compression = think().compress(&layer.input()).unwrap();
    for n_question in [1, 5, 20] {
        answer_like_kvpress(&layer, &compression, n_question);
    }
    // Half the key bytes of the context: 3/4 of its K+V bytes, plus the channel lists.
    let mut cache = ChannelPrunedCache::new();
    let input = layer.input();
    cache.append(input.keys, input.values).unwrap();
    let before = cache.bytes_reserved();
    cache
        .compact(&compression.selection, compression.keys.as_ref())
        .unwrap();
    assert_eq!(cache.bytes_reserved(), before * 3 / 4 + 2 * 4 * 4);
}

#[test]
fn composed_snapkv_then_think_prunes_the_channels_of_the_kept_keys() {
    let layer = SyntheticLayer::random(SyntheticShape::small(96), 13).unwrap();
    let input = layer.input();
    let composed = Composed {
        presses: vec![Box::new(snapkv()), Box::new(think())],
    };
    assert!(composed.new_layer_cache().is_some(), "ThinK's cache");
    let compression = composed.compress(&input).unwrap();
    let alone = snapkv().compress(&input).unwrap();
    assert_eq!(compression.selection.heads(), alone.selection.heads());
    let (keys, values) = (
        alone.selection.gather(input.keys).unwrap(),
        alone.selection.gather(input.values).unwrap(),
    );
    let after = think()
        .compress(&input.with_keys_values(&keys, &values))
        .unwrap();
    assert_eq!(
        compression.selection.key_channels(),
        after.selection.key_channels(),
        "ThinK runs on SnapKV's kept keys"
    );
    answer_like_kvpress(&layer, &compression, 6);
}

#[test]
fn head_wise_presses_saving_and_compressing_twice_are_refused() {
    let layer = SyntheticLayer::random(SyntheticShape::small(64), 17).unwrap();
    let input = layer.input();
    let compression = think().compress(&input).unwrap();
    // The flattened per-head cache of head-wise presses stores every channel.
    let mut flat = adakv::FlatLayerCache::new();
    flat.append(input.keys, input.values).unwrap();
    let error = flat.compact(&compression.selection, None).unwrap_err();
    assert!(error.to_string().contains("think"), "{error}");
    // adakv needs a scorer, which ThinK is not.
    let adakv_think = adakv::AdaKv::new(Box::new(think()));
    assert!(adakv_think
        .validate()
        .unwrap_err()
        .to_string()
        .contains("think"));
    // Heads of different lengths in the pruned cache.
    let mut cache = ChannelPrunedCache::new();
    cache.append(input.keys, input.values).unwrap();
    let ragged = Selection::new(vec![vec![0, 1, 2], vec![3]], 1, 2, 64).unwrap();
    let error = cache.compact(&ragged, None).unwrap_err();
    assert!(error.to_string().contains("head-wise"), "{error}");
    assert_eq!(cache.len(), 64, "a refused compaction changes nothing");
    // A pruned context has no layout-independent snapshot (context files) ...
    cache.snapshot().expect("nothing pruned yet");
    cache
        .compact(&compression.selection, compression.keys.as_ref())
        .unwrap();
    let error = cache.snapshot().unwrap_err();
    assert!(error.to_string().contains("cannot be saved"), "{error}");
    // ... and is not compressed again (a decode-time press after ThinK).
    let half = Selection::new(vec![(0..32).collect(); 2], 1, 2, 64).unwrap();
    let error = cache.compact(&half, None).unwrap_err();
    assert!(error.to_string().contains("already pruned"), "{error}");
    cache
        .compact(&Selection::all(1, 2, 64), None)
        .expect("keeping everything is a no-op");
}
