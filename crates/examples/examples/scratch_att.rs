use kvpress::candle::{Device, Tensor};
use std::time::Instant;
fn t<F: FnMut() -> anyhow::Result<Tensor>>(name: &str, n: usize, mut f: F) -> anyhow::Result<Tensor> {
    f()?;
    let s = Instant::now();
    for _ in 0..n { f()?; }
    println!("{name}: {:.3} ms", s.elapsed().as_secs_f64() * 1e3 / n as f64);
    f()
}
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    for (s, tk) in [(1024, 1024), (4096, 4096), (1, 4096), (1, 1024)] {
        let q = Tensor::randn(0f32, 1.0, (1, 9, s, 64), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 3, tk, 64), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, 3, tk, 64), &dev)?;
        t(&format!("attention s={s} t={tk}"), if s == 1 { 100 } else { 3 }, || Ok(kvpress::core::attention::grouped_query_attention(&q, &k, &v, false)?.output))?;
    }
    let x = Tensor::randn(0f32, 1.0, (1024, 576), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (576,), &dev)?;
    t("rms_norm 1024x576", 20, || Ok(candle_nn::ops::rms_norm(&x, &w, 1e-5)?))?;
    let x = Tensor::randn(0f32, 1.0, (1024, 1536), &dev)?;
    t("silu 1024x1536", 20, || Ok(candle_nn::ops::silu(&x)?))?;
    t("mul 1024x1536", 20, || Ok((&x * &x)?))?;
    let q = Tensor::randn(0f32, 1.0, (1, 1024, 9, 64), &dev)?;
    t("transpose+contig", 20, || Ok(q.transpose(1, 2)?.contiguous()?))?;
    let (c, s) = kvpress::core::RotaryEmbedding::new(64, 1e5, 8192, &dev)?.tables_for_range(0, 1024, kvpress::candle::DType::F32)?;
    let qc = q.transpose(1,2)?.contiguous()?;
    t("rope", 20, || Ok(kvpress::core::RotaryEmbedding::apply(&qc, &c, &s)?))?;
    Ok(())
}
