//! PyTorch's CPU random generator, bit for bit: `torch.manual_seed(seed)` followed by
//! `torch.randn(...)` calls in float32 on a CPU with AVX2 or AVX-512 (the path kvpress's
//! fixtures were made on). kvpress's `LeverageScorePress` and `CURPress` draw their Gaussian
//! sketches this way, so reproducing the draws reproduces their scores.
//!
//! What torch does (ATen `CPUGeneratorImpl`, `DistributionsHelper.h`,
//! `native/cpu/DistributionTemplates.h`):
//! * The engine is the reference 32-bit MT19937 seeded with the low 32 bits of the seed;
//!   `random64()` joins two draws as `(first << 32) | second`.
//! * A float uniform is `(random() & (2^24 - 1)) * 2^-24`; a double uniform is
//!   `(random64() & (2^53 - 1)) * 2^-53`.
//! * A contiguous float tensor of at least 16 elements is first filled with float uniforms,
//!   then turned into normals 16 at a time by Box-Muller: for `j < 8`, `u1 = 1 - data[j]` gives
//!   the radius `sqrt(-2 ln u1)` and `u2 = data[j + 8]` the angle `2 pi u2`; `data[j]` becomes
//!   `r cos`, `data[j + 8]` `r sin`. `ln`, `sin`, `cos` are the Cephes polynomials of
//!   `avx_mathfun.h` (module `avx_mathfun` of this crate). When the size is not a multiple of
//!   16, 16 fresh uniforms are drawn into the last 16 places (overwriting normals already made
//!   there) and transformed again.
//! * A smaller tensor takes one double normal per element (`normal_distribution<double>`,
//!   rounded to float): from two double uniforms `u1, u2`, `r = sqrt(-2 log1p(-u2))`,
//!   `theta = 2 pi u1`, it returns `r cos(theta)` and keeps `r sin(theta)` in the generator
//!   for the next such draw. The kept value survives calls in between, including large ones;
//!   `manual_seed` clears it.

use crate::avx_mathfun;

/// MT19937 state size.
const N: usize = 624;
/// MT19937 middle offset.
const M: usize = 397;

/// The reference 32-bit Mersenne Twister (`at::mt19937`).
#[derive(Debug, Clone)]
struct Mt19937 {
    state: Box<[u32; N]>,
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = Box::new([0u32; N]);
        state[0] = seed;
        for i in 1..N {
            let previous = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut next = y >> 1;
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = self.state[(i + M) % N] ^ next;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// `torch.default_generator` on the CPU after `torch.manual_seed(seed)`.
///
/// ```
/// use presses_leverage::TorchGenerator;
/// // torch.manual_seed(0); torch.randn(2)
/// let draws = TorchGenerator::new(0).randn(2);
/// assert_eq!(draws, vec![1.5409961, -0.2934289]);
/// ```
#[derive(Debug, Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// The generator as `torch.manual_seed(seed)` leaves it.
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed as u32),
            next_double_normal: None,
        }
    }

    /// `random()`: the next 32 bits of the engine.
    pub fn next_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// `random64()`: two draws, the first in the high half.
    pub fn next_u64(&mut self) -> u64 {
        let high = u64::from(self.next_u32());
        let low = u64::from(self.next_u32());
        (high << 32) | low
    }

    /// A float uniform in `[0, 1)` from 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A double uniform in `[0, 1)` from 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `torch.randn(n)` (any shape of `n` elements, contiguous, float32), in row-major order.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.double_normal() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            tail.iter_mut().for_each(|x| *x = self.uniform_f32());
            box_muller_16(tail);
        }
        data
    }

    /// Leaves the generator where `randn(n)` would, without computing the normals when
    /// `n >= 16` (they consume one engine draw each, plus 16 for a ragged tail).
    pub fn skip_randn(&mut self, n: usize) {
        if n < 16 {
            self.randn(n);
            return;
        }
        let draws = n + if !n.is_multiple_of(16) { 16 } else { 0 };
        for _ in 0..draws {
            self.next_u32();
        }
    }

    /// One `normal_distribution<double>(0, 1)` draw (with torch's kept second value).
    fn double_normal(&mut self) -> f64 {
        if let Some(kept) = self.next_double_normal.take() {
            return kept;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }
}

/// Box-Muller over one block of 16 uniforms, in place (torch's `normal_fill_16_AVX2` with mean
/// 0 and standard deviation 1).
fn box_muller_16(block: &mut [f32]) {
    // _mm256_set1_ps(2.0f * c10::pi<double>): 2 pi in double, rounded to float.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let (first, second) = block.split_at_mut(8);
    for (a, b) in first.iter_mut().zip(second.iter_mut()) {
        let radius = (-2.0 * avx_mathfun::log(1.0 - *a)).sqrt();
        let (sin, cos) = avx_mathfun::sin_cos(two_pi * *b);
        *a = radius * cos;
        *b = radius * sin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_the_reference_mt19937() {
        // std::mt19937 (seed 5489): the 10000th output is 4123659995.
        let mut engine = Mt19937::new(5489);
        let last = (0..10_000).map(|_| engine.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn skipping_leaves_the_generator_where_drawing_does() {
        for n in [1, 5, 15, 16, 17, 33, 48] {
            let mut drawn = TorchGenerator::new(9);
            let mut skipped = TorchGenerator::new(9);
            drawn.randn(n);
            skipped.skip_randn(n);
            assert_eq!(drawn.randn(20), skipped.randn(20), "n = {n}");
        }
    }
}
