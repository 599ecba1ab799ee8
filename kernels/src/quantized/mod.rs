//! Matrix-vector kernels for quantized weights with f32 activations (decode steps).
//!
//! candle's quantized matmul quantizes the activations to 8 bits and, for Q4_1 on x86, has no
//! SIMD kernel. These kernels read the GGML blocks directly and multiply with f32 activations,
//! so a decode step computes exactly the dequantized product (up to summation order), reading
//! only the quantized bytes.

use crate::for_each_output_row;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use candle_core::Result;

mod portable;
#[cfg(target_arch = "x86_64")]
mod simd_driver;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_512;

/// Most input rows of one sequence handled here (decode steps and short question chunks); more
/// rows of one sequence are faster dequantized through the sgemm.
pub const MAX_ROWS: usize = 16;

/// `x (m, in) @ W^T` for Q4_1 / Q8_0 `W (out, in)` on the CPU, each row computed exactly as
/// alone; `None` for other types, devices or shapes, or more than `max_rows` rows.
pub fn quantized_matvec(x: &Tensor, w: &QTensor, max_rows: usize) -> Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let kind = match w.dtype() {
        GgmlDType::Q4_1 => BlockKind::Q4_1,
        GgmlDType::Q8_0 => BlockKind::Q8_0,
        _ => return Ok(None),
    };
    if rows > max_rows || !crate::is_cpu_f32(x) || !w.device().is_cpu() || k % 32 != 0 {
        return Ok(None);
    }
    let (n, wk) = w.shape().dims2()?;
    if wk != k {
        return Ok(None);
    }
    let data = w.data()?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    // Q4_1 adds `m * sum(x)` per block: the block sums of each input are shared by all rows.
    let block_sums: Vec<f32> = xs.chunks_exact(32).map(|b| b.iter().sum()).collect();
    let blocks_per_row = k / 32;
    let row_bytes = data.len() / n;
    let dot = select_dot(kind);
    let rows_kernel = select_rows_kernel(kind).filter(|_| rows > 1);
    let mut out = vec![0f32; rows * n];
    for_each_output_row(n, rows, &mut out, |j, outputs| {
        let w_row = &data[j * row_bytes..(j + 1) * row_bytes];
        if let Some(kernel) = rows_kernel {
            // SAFETY: `select_rows_kernel` only returns a kernel after its module's
            // `is_supported()` detected the kernel's CPU features at run time. `xs` holds the
            // `rows * k` values of `x (rows, k)` and `for_each_output_row` passes `rows`
            // outputs, so `xs.len() == outputs.len() * k`, the kernels' other precondition.
            unsafe { kernel(w_row, &xs, &block_sums, k, outputs) };
            return;
        }
        for (r, d) in outputs.iter_mut().enumerate() {
            let x = &xs[r * k..(r + 1) * k];
            let sums = &block_sums[r * blocks_per_row..(r + 1) * blocks_per_row];
            // SAFETY: `select_dot` only returns a SIMD kernel after its module's
            // `is_supported()` detected the kernel's CPU features at run time (the portable
            // kernels have no precondition); these kernels bound their reads by the slices.
            *d = unsafe { dot(w_row, x, sums) };
        }
    });
    Ok(Some(Tensor::from_vec(out, (rows, n), x.device())?))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockKind {
    Q4_1,
    Q8_0,
}

/// A row kernel: `(weight row bytes, input, input block sums) -> dot product`.
///
/// Calling one is unsafe: the CPU must support the kernel's instruction set (what
/// [`select_dot`] checks); the slices may have any lengths.
type DotKernel = unsafe fn(&[u8], &[f32], &[f32]) -> f32;

/// A kernel multiplying one weight row with several input rows: `(weight row bytes, inputs
/// (rows x k), their block sums, k, outputs)`.
///
/// Calling one is unsafe: the CPU must support the kernel's instruction set (what
/// [`select_rows_kernel`] checks), and the inputs must hold a row of `k` values per output
/// (`inputs.len() >= outputs.len() * k`).
type RowsKernel = unsafe fn(&[u8], &[f32], &[f32], usize, &mut [f32]);

/// The multi-row kernel for `kind` on this CPU, when there is one (AVX2 or AVX-512; the portable
/// kernels multiply one row at a time).
fn select_rows_kernel(kind: BlockKind) -> Option<RowsKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if x86_512::is_supported() {
            return Some(match kind {
                BlockKind::Q4_1 => x86_512::dot_q4_1_rows,
                BlockKind::Q8_0 => x86_512::dot_q8_0_rows,
            });
        }
        if x86::is_supported() {
            return Some(match kind {
                BlockKind::Q4_1 => x86::dot_q4_1_rows,
                BlockKind::Q8_0 => x86::dot_q8_0_rows,
            });
        }
    }
    let _ = kind;
    None
}

/// The fastest kernel this CPU runs for `kind`.
fn select_dot(kind: BlockKind) -> DotKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if x86_512::is_supported() {
            return match kind {
                BlockKind::Q4_1 => x86_512::dot_q4_1,
                BlockKind::Q8_0 => x86_512::dot_q8_0,
            };
        }
        if x86::is_supported() {
            return match kind {
                BlockKind::Q4_1 => x86::dot_q4_1,
                BlockKind::Q8_0 => x86::dot_q8_0,
            };
        }
    }
    match kind {
        BlockKind::Q4_1 => portable::dot_q4_1,
        BlockKind::Q8_0 => portable::dot_q8_0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The kernels for `dtype` that this CPU can run, the portable one first.
    fn kernels_on_this_cpu(dtype: GgmlDType) -> Vec<(&'static str, DotKernel)> {
        let q4 = dtype == GgmlDType::Q4_1;
        let mut kernels: Vec<(&'static str, DotKernel)> = vec![(
            "portable",
            if q4 {
                portable::dot_q4_1
            } else {
                portable::dot_q8_0
            },
        )];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::is_supported() {
                kernels.push(("avx2", if q4 { x86::dot_q4_1 } else { x86::dot_q8_0 }));
            }
            if x86_512::is_supported() {
                kernels.push((
                    "avx512",
                    if q4 {
                        x86_512::dot_q4_1
                    } else {
                        x86_512::dot_q8_0
                    },
                ));
            }
        }
        kernels
    }

    #[test]
    fn fused_kernels_equal_the_dequantized_product() -> Result<()> {
        let w = Tensor::randn(0f32, 1.0, (70, 96), &Device::Cpu)?;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            let deq = q.dequantize(&Device::Cpu)?;
            for rows in [1, 3, 16] {
                let x = Tensor::randn(0f32, 1.0, (rows, 96), &Device::Cpu)?;
                let got =
                    quantized_matvec(&x, &q, MAX_ROWS)?.expect("Q4_1/Q8_0 on CPU are handled");
                let want = x.matmul(&deq.t()?)?;
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{dtype:?} rows={rows}: {diff}");
            }
        }
        // Every kernel this CPU can run agrees with the portable one (odd block counts too).
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            let data = q.data()?;
            let x: Vec<f32> = (0..96).map(|i| (i as f32 * 0.3).sin()).collect();
            let sums: Vec<f32> = x.chunks_exact(32).map(|b| b.iter().sum()).collect();
            let row = &data[..data.len() / 70];
            for (name, kernel) in kernels_on_this_cpu(dtype) {
                // SAFETY: `kernels_on_this_cpu` lists only the portable kernel and the SIMD
                // kernels whose `is_supported()` detected their CPU features at run time.
                let (got, want) = unsafe {
                    (
                        kernel(row, &x, &sums),
                        kernels_on_this_cpu(dtype)[0].1(row, &x, &sums),
                    )
                };
                assert!(
                    (got - want).abs() < 1e-4,
                    "{dtype:?} {name}: {got} vs {want}"
                );
            }
        }
        // Several rows at once give exactly what one row at a time gives, also beyond
        // `MAX_ROWS` (independent sequences decoded together).
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            for rows in [7, 37] {
                let x = Tensor::randn(0f32, 1.0, (rows, 96), &Device::Cpu)?;
                let together = quantized_matvec(&x, &q, usize::MAX)?
                    .expect("handled")
                    .to_vec2::<f32>()?;
                for (r, row) in together.iter().enumerate() {
                    let alone = quantized_matvec(&x.narrow(0, r, 1)?, &q, 1)?.expect("handled");
                    assert_eq!(row, &alone.to_vec2::<f32>()?[0], "{dtype:?} row {r}");
                }
            }
        }
        let x = Tensor::randn(0f32, 1.0, (MAX_ROWS + 1, 96), &Device::Cpu)?;
        let q = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        assert!(
            quantized_matvec(&x, &q, MAX_ROWS)?.is_none(),
            "more rows than allowed go to the sgemm"
        );
        let q = QTensor::quantize(&w, GgmlDType::Q4_0)?;
        let x = Tensor::randn(0f32, 1.0, (1, 96), &Device::Cpu)?;
        assert!(
            quantized_matvec(&x, &q, MAX_ROWS)?.is_none(),
            "other types fall back to candle"
        );
        Ok(())
    }
}
