//! Property tests: the dense cache behaves like a plain list of tokens under any sequence of
//! appends, truncations and replacements, in every storage dtype; attention over it equals
//! textbook attention for any head layout and lengths.

use candle_core::{DType, Device, Tensor};
use kvpress_core::LayerCache;
use kvpress_kernels::grouped_query_attention;
use kvpress_models::DenseLayerCache;
use proptest::prelude::*;

const HEADS: usize = 2;
const DIM: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Truncate(usize),
    Replace(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..300).prop_map(Op::Append),
        (0usize..400).prop_map(Op::Truncate),
        (1usize..50).prop_map(Op::Replace),
    ]
}

/// `n` tokens whose values encode a running counter, `(1, HEADS, n, DIM)`.
fn tokens(n: usize, counter: &mut f32) -> Tensor {
    let data: Vec<f32> = (0..HEADS * n * DIM)
        .map(|_| {
            *counter += 1.0;
            // Small integers are exact in f16 and bf16 too.
            *counter % 200.0
        })
        .collect();
    Tensor::from_vec(data, (1, HEADS, n, DIM), &Device::Cpu).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dense_cache_matches_a_token_list(ops in prop::collection::vec(op(), 1..12), dtype_index in 0usize..3) {
        let dtype = [DType::F32, DType::F16, DType::BF16][dtype_index];
        let mut cache = DenseLayerCache::with_dtype(dtype);
        let mut model: Vec<Tensor> = Vec::new(); // (1, HEADS, 1, DIM) per token
        let mut counter = 0.0;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let t = tokens(n, &mut counter);
                    cache.append(&t, &t).unwrap();
                    model.extend((0..n).map(|i| t.narrow(2, i, 1).unwrap()));
                }
                Op::Truncate(len) => {
                    let result = cache.truncate(len);
                    if len <= model.len() {
                        prop_assert!(result.is_ok());
                        model.truncate(len);
                    } else {
                        prop_assert!(result.is_err(), "truncating past the end must fail");
                    }
                }
                Op::Replace(n) => {
                    let t = tokens(n, &mut counter);
                    cache.replace(&t, &t).unwrap();
                    model = (0..n).map(|i| t.narrow(2, i, 1).unwrap()).collect();
                }
            }
            prop_assert_eq!(cache.len(), model.len());
            prop_assert_eq!(cache.bytes_used(), 2 * HEADS * model.len() * DIM * dtype.size_in_bytes());
            prop_assert!(cache.bytes_reserved() >= cache.bytes_used());
            match cache.keys_values().unwrap() {
                None => prop_assert!(model.is_empty()),
                Some((k, v)) => {
                    let want = Tensor::cat(&model, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let as_f32 = |t: Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    prop_assert_eq!(as_f32(k), want.clone());
                    prop_assert_eq!(as_f32(v), want);
                }
            }
        }
    }

    #[test]
    fn attention_equals_textbook_attention(
        n_kv_heads in 1usize..4,
        group in 1usize..5,
        head_dim in prop::sample::select(vec![4usize, 8, 16]),
        n_keys in 1usize..600,
        new_fraction in 0.0f64..1.0,
    ) {
        let n_queries = ((n_keys as f64 * new_fraction) as usize).clamp(1, n_keys);
        let n_heads = n_kv_heads * group;
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, n_heads, n_queries, head_dim), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, n_kv_heads, n_keys, head_dim), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, n_kv_heads, n_keys, head_dim), &device).unwrap();
        let got = grouped_query_attention(&q, &k, &v, false).unwrap().output;

        // Textbook: repeat K/V per query head, scores, causal mask, softmax, weighted sum.
        let repeat = |x: &Tensor| x.unsqueeze(2).unwrap().expand((1, n_kv_heads, group, n_keys, head_dim)).unwrap()
            .reshape((1, n_heads, n_keys, head_dim)).unwrap();
        let scores = (q.matmul(&repeat(&k).t().unwrap()).unwrap() / (head_dim as f64).sqrt()).unwrap();
        let first = n_keys - n_queries;
        let mask: Vec<f32> = (0..n_queries)
            .flat_map(|r| (0..n_keys).map(move |j| if j > first + r { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n_queries, n_keys), &device).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        let want = probs.matmul(&repeat(&v)).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        prop_assert!(diff < 1e-4, "max diff {}", diff);
    }
}
