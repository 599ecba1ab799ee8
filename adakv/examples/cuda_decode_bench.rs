//! Decode speed of a synthetic Llama-shaped decoder on the GPU with a head-wise compressed
//! flattened cache (feature `cuda`): random bf16 weights, random ragged per-head lengths as an
//! AdaKV press leaves them, and the adakv kernels for appending and attention.
//!
//! Prints ms/token, bytes read per token (weights + KV), achieved bandwidth and its share of the
//! H200's 4.8 TB/s; then the attention kernel alone, and the dense full-cache attention (candle
//! matmuls + softmax) at the uncompressed context for comparison. The embedding and LM head are
//! left out (layers only); no RoPE (it does not change what is read).
//!
//! `cargo run --release -p adakv --features cuda --example cuda_decode_bench -- [--layers 32]
//! [--context 32768] [--ratio 0.75] [--tokens 32]`

use std::time::Instant;

use adakv::cuda::CudaFlatLayer;
use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HIDDEN: usize = 4096;
const N_HEADS: usize = 32;
const N_KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const MLP: usize = 14336;
const PEAK_BYTES_PER_S: f64 = 4.8e12;
const DTYPE: DType = DType::BF16;

struct Options {
    layers: usize,
    context: usize,
    ratio: f64,
    tokens: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        layers: 32,
        context: 32768,
        ratio: 0.75,
        tokens: 32,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair
            .get(1)
            .ok_or_else(|| anyhow::anyhow!("{} needs a value", pair[0]))?;
        match pair[0].as_str() {
            "--layers" => o.layers = value.parse()?,
            "--context" => o.context = value.parse()?,
            "--ratio" => o.ratio = value.parse()?,
            "--tokens" => o.tokens = value.parse()?,
            other => anyhow::bail!(
                "unknown option {other}; valid: --layers, --context, --ratio, --tokens"
            ),
        }
    }
    if !(0.0..1.0).contains(&o.ratio) || o.layers == 0 || o.tokens == 0 || o.context == 0 {
        anyhow::bail!("need layers, tokens, context >= 1 and ratio in [0, 1)");
    }
    Ok(o)
}

/// Weights of one decoder layer, `(out, in)` like Hugging Face checkpoints.
struct Layer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

fn weight(out: usize, inp: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 0.02, (out, inp), device)?.to_dtype(DTYPE)
}

impl Layer {
    fn random(device: &Device) -> candle_core::Result<Self> {
        Ok(Self {
            attn_norm: Tensor::ones(HIDDEN, DTYPE, device)?,
            wq: weight(N_HEADS * HEAD_DIM, HIDDEN, device)?,
            wk: weight(N_KV_HEADS * HEAD_DIM, HIDDEN, device)?,
            wv: weight(N_KV_HEADS * HEAD_DIM, HIDDEN, device)?,
            wo: weight(HIDDEN, N_HEADS * HEAD_DIM, device)?,
            mlp_norm: Tensor::ones(HIDDEN, DTYPE, device)?,
            gate: weight(MLP, HIDDEN, device)?,
            up: weight(MLP, HIDDEN, device)?,
            down: weight(HIDDEN, MLP, device)?,
        })
    }

    fn bytes(&self) -> usize {
        [
            &self.attn_norm,
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.mlp_norm,
            &self.gate,
            &self.up,
            &self.down,
        ]
        .iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
    }

    /// One decode step of this layer for hidden state `x` `(1, HIDDEN)`.
    fn forward(&self, x: &Tensor, cache: &mut CudaFlatLayer) -> candle_core::Result<Tensor> {
        let h = rms_norm(x, &self.attn_norm)?;
        let q = h
            .matmul(&self.wq.t()?)?
            .reshape((1, N_HEADS, 1, HEAD_DIM))?;
        let k = h.matmul(&self.wk.t()?)?.reshape((N_KV_HEADS, HEAD_DIM))?;
        let v = h.matmul(&self.wv.t()?)?.reshape((N_KV_HEADS, HEAD_DIM))?;
        cache.append(&k, &v).map_err(candle_core::Error::wrap)?;
        let attn = cache.attend(&q).map_err(candle_core::Error::wrap)?;
        let x = (x + attn.reshape((1, HIDDEN))?.matmul(&self.wo.t()?)?)?;
        let h = rms_norm(&x, &self.mlp_norm)?;
        let mlp = (h.matmul(&self.gate.t()?)?.silu()? * h.matmul(&self.up.t()?)?)?;
        x + mlp.matmul(&self.down.t()?)?
    }
}

fn rms_norm(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let x32 = x.to_dtype(DType::F32)?;
    let scale = (x32.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?
        .sqrt()?
        .recip()?;
    x32.broadcast_mul(&scale)?
        .to_dtype(DTYPE)?
        .broadcast_mul(weight)
}

/// Per-head lengths averaging `kept` (AdaKV-like: some heads keep 4x more than others).
fn ragged_lengths(rng: &mut StdRng, kept: usize) -> Vec<usize> {
    let weights: Vec<f64> = (0..N_KV_HEADS)
        .map(|_| rng.random_range(0.25..1.75))
        .collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| ((w / total) * (kept * N_KV_HEADS) as f64).round().max(1.0) as usize)
        .collect()
}

fn kv_bytes(caches: &[CudaFlatLayer]) -> usize {
    caches.iter().map(CudaFlatLayer::bytes_used).sum()
}

fn report(what: &str, seconds_per_token: f64, bytes: usize) {
    let rate = bytes as f64 / seconds_per_token;
    println!(
        "{what:<44} {:>9.3} ms/token  {:>9.1} MB/token  {:>7.1} GB/s  {:>5.1}% of 4.8 TB/s",
        seconds_per_token * 1e3,
        bytes as f64 / 1e6,
        rate / 1e9,
        100.0 * rate / PEAK_BYTES_PER_S
    );
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let device = Device::new_cuda(0)?;
    let mut rng = StdRng::seed_from_u64(0);
    let kept = ((o.context as f64) * (1.0 - o.ratio)).floor() as usize;
    println!(
        "synthetic decoder: {} layers, hidden {HIDDEN}, {N_HEADS} query / {N_KV_HEADS} KV heads, \
         head dim {HEAD_DIM}, MLP {MLP}, bf16; context {} compressed at ratio {} (~{kept} tokens \
         per head, ragged)",
        o.layers, o.context, o.ratio
    );
    let layers = (0..o.layers)
        .map(|_| Layer::random(&device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut caches = compressed_caches(&o, &device, &mut rng, kept)?;
    let weight_bytes: usize = layers.iter().map(Layer::bytes).sum();
    let kv = bench_decode_steps(&o, &device, &layers, &mut caches, weight_bytes)?;

    // Attention kernel alone, every layer's cache in turn (more than the L2 cache).
    let q = Tensor::randn(0f32, 1.0, (1, N_HEADS, 1, HEAD_DIM), &device)?.to_dtype(DTYPE)?;
    let per_token = time_attention(&device, &caches, &q, 20)?;
    report("flat decode attention only (all layers)", per_token, kv);

    let dense_bytes = bench_full_context(&o, &device, &q)?;
    println!(
        "weights {:.2} GB, compressed KV {:.2} GB, full KV {:.2} GB",
        weight_bytes as f64 / 1e9,
        kv as f64 / 1e9,
        dense_bytes as f64 / 1e9
    );
    Ok(())
}

/// One compressed cache per layer: random keys and values, ragged per-head lengths averaging
/// `kept`, slack for the timed tokens.
fn compressed_caches(
    o: &Options,
    device: &Device,
    rng: &mut StdRng,
    kept: usize,
) -> anyhow::Result<Vec<CudaFlatLayer>> {
    let mut caches = Vec::with_capacity(o.layers);
    for _ in 0..o.layers {
        let lengths = ragged_lengths(rng, kept);
        let rows: usize = lengths.iter().sum();
        let keys = Tensor::randn(0f32, 1.0, (rows, HEAD_DIM), device)?.to_dtype(DTYPE)?;
        let values = Tensor::randn(0f32, 1.0, (rows, HEAD_DIM), device)?.to_dtype(DTYPE)?;
        caches.push(CudaFlatLayer::from_rows(
            &keys,
            &values,
            &lengths,
            1,
            N_KV_HEADS,
            o.tokens + 64,
        )?);
    }
    Ok(caches)
}

/// Times full decode steps (3 warm-up steps, then `o.tokens`) and reports them; returns the KV
/// bytes of the caches after the steps.
fn bench_decode_steps(
    o: &Options,
    device: &Device,
    layers: &[Layer],
    caches: &mut [CudaFlatLayer],
    weight_bytes: usize,
) -> anyhow::Result<usize> {
    let mut x = Tensor::randn(0f32, 1.0, (1, HIDDEN), device)?.to_dtype(DTYPE)?;
    let warmup = 3;
    let mut start = Instant::now();
    for step in 0..warmup + o.tokens {
        if step == warmup {
            device.synchronize()?;
            start = Instant::now();
        }
        for (layer, cache) in layers.iter().zip(caches.iter_mut()) {
            x = layer.forward(&x, cache)?;
        }
    }
    device.synchronize()?;
    let per_token = start.elapsed().as_secs_f64() / o.tokens as f64;
    let kv = kv_bytes(caches);
    report(
        "decode step (layers, flat cache)",
        per_token,
        weight_bytes + kv,
    );
    Ok(kv)
}

/// Seconds per pass of `q` attending over every cache in turn: one warm-up pass, then the mean
/// of `reps` passes.
fn time_attention(
    device: &Device,
    caches: &[CudaFlatLayer],
    q: &Tensor,
    reps: usize,
) -> anyhow::Result<f64> {
    for cache in caches {
        cache.attend(q)?;
    }
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        for cache in caches {
            cache.attend(q)?;
        }
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

/// Dense full-cache attention at the uncompressed context, for context: candle matmuls over
/// (KV heads, context, head dim) per layer, K/V never repeated; then the flat kernel over the
/// same dense caches (every head at full length). Returns the dense KV bytes.
fn bench_full_context(o: &Options, device: &Device, q: &Tensor) -> anyhow::Result<usize> {
    let dense: Vec<(Tensor, Tensor)> = (0..o.layers)
        .map(|_| -> candle_core::Result<_> {
            let shape = (N_KV_HEADS, o.context, HEAD_DIM);
            Ok((
                Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(DTYPE)?,
                Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(DTYPE)?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let dense_bytes: usize = dense.iter().map(|(k, _)| 2 * k.elem_count() * 2).sum();
    let reps = 5;
    let per_token = time_dense_attention(device, &dense, q, reps)?;
    report(
        "dense attention, full context (candle ops)",
        per_token,
        dense_bytes,
    );

    // The flat kernel over the same dense caches (every head at full length).
    let full: Vec<CudaFlatLayer> = dense
        .iter()
        .map(|(k, v)| {
            let rows = N_KV_HEADS * o.context;
            CudaFlatLayer::from_rows(
                &k.reshape((rows, HEAD_DIM))?,
                &v.reshape((rows, HEAD_DIM))?,
                &[o.context; N_KV_HEADS],
                1,
                N_KV_HEADS,
                0,
            )
            .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    drop(dense);
    let per_token = time_attention(device, &full, q, reps)?;
    report("flat kernel, full context", per_token, kv_bytes(&full));
    Ok(dense_bytes)
}

/// Seconds per pass of dense attention (candle matmuls + softmax) of `q` over every layer's
/// `(keys, values)`: one warm-up pass, then the mean of `reps` passes.
fn time_dense_attention(
    device: &Device,
    dense: &[(Tensor, Tensor)],
    q: &Tensor,
    reps: usize,
) -> anyhow::Result<f64> {
    let group = N_HEADS / N_KV_HEADS;
    let qd = q.reshape((N_KV_HEADS, group, HEAD_DIM))?;
    let dense_attend = |k: &Tensor, v: &Tensor| -> candle_core::Result<Tensor> {
        let scores = (qd.matmul(&k.t()?)? / (HEAD_DIM as f64).sqrt())?.to_dtype(DType::F32)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let p = scores.broadcast_sub(&max)?.exp()?;
        let p = p
            .broadcast_div(&p.sum_keepdim(D::Minus1)?)?
            .to_dtype(DTYPE)?;
        p.matmul(v)
    };
    for (k, v) in dense {
        dense_attend(k, v)?;
    }
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        for (k, v) in dense {
            dense_attend(k, v)?;
        }
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}
