//! Matrix-vector kernels for quantized weights with f32 activations (decode steps).
//!
//! candle's quantized matmul quantizes the activations to 8 bits and, for Q4_1 on x86, has no
//! SIMD kernel. These kernels read the GGML blocks directly and multiply with f32 activations,
//! so a decode step computes exactly the dequantized product (up to summation order), reading
//! only the quantized bytes.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use half::f16;
use kvpress_core::cpu::for_each_output_row;

use crate::Result;

/// Most input rows handled here (decode steps and short question chunks).
const MAX_ROWS: usize = 16;

/// `x (m, in) @ W^T` for Q4_1 / Q8_0 `W (out, in)` on the CPU; `None` for other types, devices
/// or shapes.
pub(crate) fn quantized_matvec(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let kind = match w.dtype() {
        GgmlDType::Q4_1 => BlockKind::Q4_1,
        GgmlDType::Q8_0 => BlockKind::Q8_0,
        _ => return Ok(None),
    };
    if rows > MAX_ROWS || !kvpress_core::cpu::is_cpu_f32(x) || !w.device().is_cpu() || k % 32 != 0 {
        return Ok(None);
    }
    let (n, wk) = w.shape().dims2()?;
    if wk != k {
        return Ok(None);
    }
    let data = w.data()?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let row_bytes = data.len() / n;
    let mut out = vec![0f32; rows * n];
    for_each_output_row(n, rows, &mut out, |j, outputs| {
        let w_row = &data[j * row_bytes..(j + 1) * row_bytes];
        for (r, d) in outputs.iter_mut().enumerate() {
            *d = dot(kind, w_row, &xs[r * k..(r + 1) * k]);
        }
    });
    Ok(Some(Tensor::from_vec(out, (rows, n), x.device())?))
}

#[derive(Clone, Copy)]
enum BlockKind {
    Q4_1,
    Q8_0,
}

fn dot(kind: BlockKind, w_row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2(kind, w_row, x) };
        }
    }
    dot_generic(kind, w_row, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(kind: BlockKind, w_row: &[u8], x: &[f32]) -> f32 {
    dot_generic(kind, w_row, x)
}

#[inline(always)]
fn dot_generic(kind: BlockKind, w_row: &[u8], x: &[f32]) -> f32 {
    match kind {
        BlockKind::Q4_1 => dot_q4_1(w_row, x),
        BlockKind::Q8_0 => dot_q8_0(w_row, x),
    }
}

/// Q4_1 block: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles; element `i < 16` is the low
/// nibble of byte `i`, element `i + 16` its high nibble; value `d * q + m`.
#[inline(always)]
fn dot_q4_1(w_row: &[u8], x: &[f32]) -> f32 {
    const BLOCK_BYTES: usize = 20;
    let mut acc = [0f32; 16];
    let mut offsets = [0f32; 16];
    for (block, xb) in w_row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(32)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let qs = &block[4..20];
        for i in 0..16 {
            let lo = (qs[i] & 0x0F) as f32;
            let hi = (qs[i] >> 4) as f32;
            acc[i] += d * (lo * xb[i] + hi * xb[i + 16]);
            offsets[i] += m * (xb[i] + xb[i + 16]);
        }
    }
    acc.iter().sum::<f32>() + offsets.iter().sum::<f32>()
}

/// Q8_0 block: f16 scale `d`, 32 signed bytes; value `d * q`.
#[inline(always)]
fn dot_q8_0(w_row: &[u8], x: &[f32]) -> f32 {
    const BLOCK_BYTES: usize = 34;
    let mut acc = [0f32; 32];
    for (block, xb) in w_row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(32)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let qs = &block[2..34];
        for i in 0..32 {
            acc[i] += d * (qs[i] as i8 as f32) * xb[i];
        }
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_kernels_equal_the_dequantized_product() -> Result<()> {
        let w = Tensor::randn(0f32, 1.0, (70, 96), &Device::Cpu)?;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            let deq = q.dequantize(&Device::Cpu)?;
            for rows in [1, 3] {
                let x = Tensor::randn(0f32, 1.0, (rows, 96), &Device::Cpu)?;
                let got = quantized_matvec(&x, &q)?.expect("Q4_1/Q8_0 on CPU are handled");
                let want = x.matmul(&deq.t()?)?;
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{dtype:?} rows={rows}: {diff}");
            }
        }
        let q = QTensor::quantize(&w, GgmlDType::Q4_0)?;
        let x = Tensor::randn(0f32, 1.0, (1, 96), &Device::Cpu)?;
        assert!(quantized_matvec(&x, &q)?.is_none(), "other types fall back to candle");
        Ok(())
    }
}
