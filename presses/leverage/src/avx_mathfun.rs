//! One lane of the Cephes-derived `log256_ps` and `sincos256_ps` of PyTorch's
//! `ATen/native/cpu/avx_mathfun.h`, which `torch.randn` uses on CPUs with AVX2 or AVX-512 (see
//! [`crate::torch_rng`]).
//!
//! PyTorch compiles these intrinsics with floating-point contraction, so a multiply feeding an
//! add becomes one fused multiply-add; every `mul_add` below stands where the compiled code has
//! one (each was checked bit for bit against `torch.randn`). Plain `*`/`+` are the operations
//! that stay separately rounded. Constants are written as in the C header.
#![allow(clippy::excessive_precision, clippy::unreadable_literal)]

/// `cephes_SQRTHF` of `log256_ps`.
/// (The header writes it as `0.707106781186547524`, the same float.)
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// Coefficients `cephes_log_p0..p8`.
const LOG_P: [f32; 9] = [
    7.0376836292E-2,
    -1.1514610310E-1,
    1.1676998740E-1,
    -1.2420140846E-1,
    1.4249322787E-1,
    -1.6668057665E-1,
    2.0000714765E-1,
    -2.4999993993E-1,
    3.3333331174E-1,
];
/// `cephes_log_q1`, `cephes_log_q2`: log(2) split in a small and a large part.
const LOG_Q1: f32 = -2.12194440e-4;
const LOG_Q2: f32 = 0.693359375;

/// `ln(x)` as `log256_ps` computes it, for positive normal `x` (torch only passes `(0, 1]`).
pub(crate) fn log(x: f32) -> f32 {
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // Keep the mantissa, with the exponent of 0.5: x in [0.5, 1).
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRT_HALF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    if below {
        e -= 1.0;
    }
    x += tmp;

    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * LOG_Q1);
    y = z.mul_add(-0.5, y);
    let x = x + y;
    e.mul_add(LOG_Q2, x)
}

/// `4 / pi` (`cephes_FOPI`).
const FOUR_OVER_PI: f32 = 1.27323954473516;
/// `-pi / 4` in three parts (`minus_cephes_DP1..3`).
const MINUS_DP: [f32; 3] = [
    -0.78515625,
    -2.4187564849853515625e-4,
    -3.77489497744594108e-8,
];
/// `coscof_p0..p2`.
const COS_P: [f32; 3] = [
    2.443315711809948E-005,
    -1.388731625493765E-003,
    4.166664568298827E-002,
];
/// `sincof_p0..p2`.
const SIN_P: [f32; 3] = [-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1];

/// `(sin(x), cos(x))` as `sincos256_ps` computes them (accurate for `|x| < 8192`).
pub(crate) fn sin_cos(x: f32) -> (f32, f32) {
    let mut sign_sin = x.to_bits() & 0x8000_0000;
    let mut x = x.abs();
    // Octant, rounded up to even (`j = (j + 1) & ~1`).
    let j = (((x * FOUR_OVER_PI) as i32) + 1) & !1;
    let y = j as f32;
    sign_sin ^= ((j & 4) as u32) << 29;
    let sine_polynomial = j & 2 == 0;
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;

    // Extended-precision reduction: x - j * pi / 4.
    for dp in MINUS_DP {
        x = y.mul_add(dp, x);
    }
    let z = x * x;
    let mut cos_poly = COS_P[0].mul_add(z, COS_P[1]);
    cos_poly = cos_poly.mul_add(z, COS_P[2]);
    cos_poly *= z;
    cos_poly = cos_poly.mul_add(z, -(z * 0.5));
    cos_poly += 1.0;

    let mut sin_poly = SIN_P[0].mul_add(z, SIN_P[1]);
    sin_poly = sin_poly.mul_add(z, SIN_P[2]);
    sin_poly *= z;
    sin_poly = sin_poly.mul_add(x, x);

    let (sin, cos) = if sine_polynomial {
        (sin_poly, cos_poly)
    } else {
        (cos_poly, sin_poly)
    };
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_close_to_the_true_logarithm() {
        for i in 1..=1000 {
            let x = i as f32 / 1000.0;
            let err = (log(x) as f64 - (x as f64).ln()).abs();
            assert!(err < 1e-6, "log({x}) off by {err}");
        }
        assert_eq!(log(1.0), 0.0);
    }

    #[test]
    fn sin_cos_are_close_to_the_true_functions() {
        for i in 0..1000 {
            let x = i as f32 * 0.006_283_185;
            let (s, c) = sin_cos(x);
            assert!((s as f64 - (x as f64).sin()).abs() < 1e-6, "sin({x})");
            assert!((c as f64 - (x as f64).cos()).abs() < 1e-6, "cos({x})");
        }
    }
}
