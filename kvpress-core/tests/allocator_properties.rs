//! The uniform allocator keeps exactly `floor(T(1-r))` distinct, sorted, in-range indices per
//! head, and they are the best-scored ones.

use candle_core::{Device, Tensor};
use kvpress_core::press::{n_kept, BudgetAllocator, LayerPosition, UniformAllocator};
use proptest::prelude::*;

fn scores_strategy() -> impl Strategy<Value = (usize, usize, usize, Vec<f32>)> {
    (1usize..3, 1usize..4, 1usize..200).prop_flat_map(|(batch, heads, tokens)| {
        (
            Just(batch),
            Just(heads),
            Just(tokens),
            // Few distinct values: plenty of ties.
            proptest::collection::vec(
                (-4i32..4).prop_map(|v| v as f32 * 0.5),
                batch * heads * tokens,
            ),
        )
    })
}

proptest! {
    #[test]
    fn uniform_allocator_keeps_floor_t_one_minus_r(
        (batch, heads, tokens, values) in scores_strategy(),
        ratio in 0.0f64..0.999,
    ) {
        let scores = Tensor::from_vec(values.clone(), (batch, heads, tokens), &Device::Cpu).unwrap();
        let layer = LayerPosition { layer_idx: 0, n_layers: 1 };
        let selection = UniformAllocator.allocate(&scores, ratio, layer).unwrap();
        let expected = n_kept(tokens, ratio);
        prop_assert_eq!(expected, ((tokens as f64 * (1.0 - ratio)) as usize).max(1));
        for (head, kept) in selection.heads().iter().enumerate() {
            prop_assert_eq!(kept.len(), expected);
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            prop_assert!(kept.iter().all(|&i| (i as usize) < tokens), "in range");
            // Every kept token scores at least as high as every dropped one.
            let row = &values[head * tokens..(head + 1) * tokens];
            let worst_kept = kept.iter().map(|&i| row[i as usize]).fold(f32::INFINITY, f32::min);
            let best_dropped = (0..tokens as u32)
                .filter(|i| kept.binary_search(i).is_err())
                .map(|i| row[i as usize])
                .fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(worst_kept >= best_dropped);
        }
    }
}
