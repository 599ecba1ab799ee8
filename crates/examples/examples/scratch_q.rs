use kvpress::candle::quantized::{GgmlDType, QMatMul, QTensor};
use kvpress::candle::{Device, Tensor};
use kvpress::models::linear::{Linear, Weight};
use std::sync::Arc;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    for (n, k, dt) in [
        (1536usize, 576usize, GgmlDType::Q4_1),
        (98304, 576, GgmlDType::Q4_1),
        (49152, 576, GgmlDType::Q8_0),
    ] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let q = Arc::new(QTensor::quantize(&w, dt)?);
        let bytes = q.storage_size_in_bytes();
        let lin = Linear::new(Weight::Quantized(q.clone()), None)?;
        let x = Tensor::randn(0f32, 1.0, (1, k), &Device::Cpu)?;
        let reps = if n > 10000 { 50 } else { 2000 };
        lin.forward(&x)?;
        let s = Instant::now();
        for _ in 0..reps {
            lin.forward(&x)?;
        }
        let el = s.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{dt:?} {n}x{k}: {:.3} ms, {:.1} GB/s",
            el * 1e3,
            bytes as f64 / el / 1e9
        );
        let _ = QMatMul::from_arc(q)?;
    }
    Ok(())
}
