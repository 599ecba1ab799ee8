//! SwiGLU's `silu(gate) * up` in one vectorised pass over row-strided views (for example the two
//! halves of a fused gate/up projection), instead of three candle ops on strided tensors.

use candle_core::Tensor;
use rayon::prelude::*;

use super::softmax::exp;
use super::view::f32_slice;
use candle_core::Result;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `silu(gate) * up` for f32 CPU tensors of equal shape `(..., width)` whose last dimension is
/// contiguous; `None` for other tensors (use candle ops then).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if gate.dims() != up.dims() || gate.rank() < 2 {
        return Ok(None);
    }
    let width = gate.dims()[gate.rank() - 1];
    let rows = gate.elem_count() / width.max(1);
    let row_stride = |strides: &[usize]| -> Option<usize> {
        let (last, outer) = strides.split_last()?;
        // Rows must be evenly spaced: every outer dimension steps by whole rows.
        let dims = &gate.dims()[..gate.rank() - 1];
        let step = *outer.last()?;
        let evenly = outer
            .iter()
            .zip(dims)
            .rev()
            .try_fold(step, |expected, (&s, &d)| {
                (s == expected || d == 1).then_some(s * d)
            });
        (*last == 1 && evenly.is_some()).then_some(step)
    };
    let mut out = vec![0f32; rows * width];
    let done = f32_slice(gate, |g, g_start, g_strides| {
        f32_slice(up, |u, u_start, u_strides| {
            let (Some(g_step), Some(u_step)) = (row_stride(g_strides), row_stride(u_strides))
            else {
                return false;
            };
            out.par_chunks_mut(ROWS_PER_TASK * width)
                .enumerate()
                .for_each(|(task, chunk)| {
                    for (i, dst) in chunk.chunks_mut(width).enumerate() {
                        let row = task * ROWS_PER_TASK + i;
                        let g_row = &g[g_start + row * g_step..][..width];
                        let u_row = &u[u_start + row * u_step..][..width];
                        silu_mul_row(g_row, u_row, dst);
                    }
                });
            true
        })
    });
    if done != Some(Some(true)) {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, gate.dims(), gate.device())?))
}

fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `avx2` and `fma`, the features `silu_mul_row_avx2` is compiled for, were detected
            // at run time just above; it has no other precondition.
            return unsafe { silu_mul_row_avx2(gate, up, out) };
        }
    }
    silu_mul_row_generic(gate, up, out)
}

/// [`silu_mul_row_generic`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (check with `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_row_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_row_generic(gate, up, out)
}

#[inline(always)]
fn silu_mul_row_generic(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn equals_candle_ops_on_halves_of_a_fused_projection() -> Result<()> {
        let fused = (Tensor::randn(0f32, 1.0, (2, 5, 2 * 40), &Device::Cpu)? * 6.0)?;
        let gate = fused.narrow(D::Minus1, 0, 40)?;
        let up = fused.narrow(D::Minus1, 40, 40)?;
        let got = silu_mul(&gate, &up)?.expect("f32 CPU row-strided views are handled");
        let want = (candle_nn::ops::silu(&gate.contiguous()?)? * &up)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        // A transposed view is not row-strided: left to candle.
        let t = Tensor::randn(0f32, 1.0, (8, 8), &Device::Cpu)?.t()?;
        assert!(silu_mul(&t, &t)?.is_none());
        Ok(())
    }
}
