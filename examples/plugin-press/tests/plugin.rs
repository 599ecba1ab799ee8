use kvpress_core::press::{find_press, press_from_toml};
use kvpress_example_press::ValueNorm;
use presses_testing::{run_conformance, Promises, SyntheticLayer, SyntheticShape};

#[test]
fn value_norm_conforms() {
    run_conformance(
        &|r| {
            Box::new(ValueNorm {
                compression_ratio: r,
            })
        },
        &Promises::default(),
    );
}

#[test]
fn registered_and_buildable_by_name() {
    assert!(find_press("value_norm").is_some());
    let press = press_from_toml("press = \"value_norm\"\ncompression_ratio = 0.25\n").unwrap();
    let layer = SyntheticLayer::random(SyntheticShape::small(32), 2).unwrap();
    let kept = press.compress(&layer.input()).unwrap().selection;
    assert_eq!(kept.uniform_len(), Some(24));
    // The kept tokens are those with the largest value norms.
    let norms = presses_ops::vector_norms(layer.input().values).unwrap();
    let norms: Vec<Vec<f32>> = norms.get(0).unwrap().to_vec2().unwrap();
    for (head, kept) in kept.heads().iter().enumerate() {
        let smallest_kept = kept
            .iter()
            .map(|&i| norms[head][i as usize])
            .fold(f32::MAX, f32::min);
        let largest_dropped = (0..32u32)
            .filter(|i| !kept.contains(i))
            .map(|i| norms[head][i as usize])
            .fold(f32::MIN, f32::max);
        assert!(smallest_kept >= largest_dropped);
    }
}
