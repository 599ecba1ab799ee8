//! The torch generator against draws printed from `torch.randn` (tests/torch_draws): sizes
//! below 16 (the double path with its kept value), multiples of 16, and ragged sizes (the tail
//! drawn again), several seeds, and a sequence of calls sharing one generator.

mod torch_draws;

use presses_leverage::TorchGenerator;
use torch_draws::{SEQUENCE, SINGLE_DRAWS};

/// FNV-1a (64 bits) over the f32 bit patterns, as the printing script computes it.
fn fnv(values: &[f32]) -> u64 {
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn single_draws_equal_torch_bit_for_bit() {
    for &(seed, n, samples, hash) in SINGLE_DRAWS {
        let draws = TorchGenerator::new(seed).randn(n);
        assert_eq!(draws.len(), n);
        for &(index, bits) in samples {
            assert_eq!(
                draws[index].to_bits(),
                bits,
                "seed {seed}, n {n}, index {index}: {} vs torch {}",
                draws[index],
                f32::from_bits(bits)
            );
        }
        assert_eq!(fnv(&draws), hash, "seed {seed}, n {n}: some value differs");
    }
}

#[test]
fn a_sequence_of_draws_equals_torch() {
    let mut generator = TorchGenerator::new(5);
    for (call, &(n, bits)) in SEQUENCE.iter().enumerate() {
        let draws: Vec<u32> = generator.randn(n).iter().map(|v| v.to_bits()).collect();
        assert_eq!(draws, bits, "call {call} (randn({n}))");
    }
}

#[test]
fn skipping_a_draw_then_drawing_equals_drawing_twice() {
    let mut twice = TorchGenerator::new(0);
    twice.randn(9216);
    let mut skipped = TorchGenerator::new(0);
    skipped.skip_randn(9216);
    assert_eq!(twice.randn(9216), skipped.randn(9216));
}
