//! The CUDA kernels against the CPU path (random ragged lengths, f32 and bf16). These need a
//! CUDA device and fail without one: they are run by `scripts/gpu-bundle.sh`'s `run.sh` on a GPU
//! machine, never as part of the CPU test suite (the file only builds with `--features cuda`).
#![cfg(feature = "cuda")]

use adakv::cuda::{compact, segment_starts, top_k, CudaFlatLayer, KeptRows};
use adakv::{ragged_attention, CacheData, FlatLayerCache, RaggedHeads};
use candle_core::{DType, Device, Tensor};
use kvpress_core::press::top_k_indices;
use kvpress_core::LayerCache;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| {
        panic!(
            "these tests need a CUDA device (run them with scripts/gpu-bundle.sh on a GPU \
             machine): {e}"
        )
    })
}

/// Values rounded through `dtype`, so the CPU reference sees exactly what the GPU stores.
fn rounded(values: Vec<f32>, dtype: DType) -> Vec<f32> {
    let n = values.len();
    Tensor::from_vec(values, n, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .expect("rounding on the CPU")
}

fn random(rng: &mut StdRng, n: usize, dtype: DType) -> Vec<f32> {
    rounded(
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect(),
        dtype,
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn to_host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_device(&Device::Cpu))
        .and_then(|t| t.to_vec1::<f32>())
        .expect("copy to host")
}

/// One ragged layer: keys and values `(rows, d)` back to back in head order.
struct Ragged {
    keys: Vec<f32>,
    values: Vec<f32>,
    lengths: Vec<usize>,
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Ragged {
    fn random(
        rng: &mut StdRng,
        lengths: Vec<usize>,
        batch: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Self {
        let rows: usize = lengths.iter().sum();
        Self {
            keys: random(rng, rows * head_dim, dtype),
            values: random(rng, rows * head_dim, dtype),
            n_kv_heads: lengths.len() / batch,
            lengths,
            batch,
            head_dim,
        }
    }

    fn offsets(&self) -> Vec<usize> {
        self.lengths
            .iter()
            .scan(0, |start, &len| {
                let offset = *start;
                *start += len;
                Some(offset)
            })
            .collect()
    }

    fn cpu_cache(&self) -> FlatLayerCache {
        let rows = self.keys.len() / self.head_dim;
        let keys =
            Tensor::from_vec(self.keys.clone(), (rows, self.head_dim), &Device::Cpu).unwrap();
        let values =
            Tensor::from_vec(self.values.clone(), (rows, self.head_dim), &Device::Cpu).unwrap();
        FlatLayerCache::from_rows(&keys, &values, &self.lengths, self.batch, self.n_kv_heads)
            .unwrap()
    }

    fn gpu_layer(&self, device: &Device, dtype: DType, slack: usize) -> CudaFlatLayer {
        let rows = self.keys.len() / self.head_dim;
        let put = |v: &[f32]| {
            Tensor::from_slice(v, (rows, self.head_dim), device)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap()
        };
        CudaFlatLayer::from_rows(
            &put(&self.keys),
            &put(&self.values),
            &self.lengths,
            self.batch,
            self.n_kv_heads,
            slack,
        )
        .unwrap()
    }
}

fn ragged_lengths(rng: &mut StdRng, heads: usize, max: usize) -> Vec<usize> {
    (0..heads).map(|_| rng.random_range(1..=max)).collect()
}

fn check_decode(
    dtype: DType,
    head_dim: usize,
    group: usize,
    lengths: Vec<usize>,
    batch: usize,
    tol: f32,
) {
    let device = gpu();
    let mut rng = StdRng::seed_from_u64(7 + head_dim as u64 + group as u64);
    let layer = Ragged::random(&mut rng, lengths, batch, head_dim, dtype);
    let n_heads = layer.n_kv_heads * group;
    let queries = random(&mut rng, batch * n_heads * head_dim, dtype);
    let q_cpu =
        Tensor::from_vec(queries.clone(), (batch, n_heads, 1, head_dim), &Device::Cpu).unwrap();
    let offsets = layer.offsets();
    let expected = ragged_attention(
        &RaggedHeads {
            keys: CacheData::F32(&layer.keys),
            values: CacheData::F32(&layer.values),
            offsets: &offsets,
            lengths: &layer.lengths,
            batch,
            n_kv_heads: layer.n_kv_heads,
            head_dim,
        },
        &q_cpu,
    )
    .unwrap();
    let gpu_layer = layer.gpu_layer(&device, dtype, 3);
    let q_gpu = q_cpu.to_device(&device).unwrap().to_dtype(dtype).unwrap();
    let got = gpu_layer.attend(&q_gpu).unwrap();
    assert_eq!(got.dims(), [batch, n_heads, 1, head_dim]);
    assert_eq!(got.dtype(), dtype);
    let err = max_abs_diff(&to_host(&got), &to_host(&expected));
    assert!(
        err <= tol,
        "{dtype:?} d={head_dim} G={group}: max error {err} > {tol}"
    );
}

#[test]
fn decode_attention_matches_cpu_f32() {
    let mut rng = StdRng::seed_from_u64(1);
    check_decode(
        DType::F32,
        128,
        4,
        ragged_lengths(&mut rng, 8, 3000),
        1,
        1e-4,
    );
    check_decode(DType::F32, 64, 3, ragged_lengths(&mut rng, 6, 700), 2, 1e-4);
    // More query heads per KV head than one block takes (8), and one head of one token.
    check_decode(DType::F32, 128, 12, vec![1, 500, 2049, 37], 1, 1e-4);
    // Split-K over long heads: 20k and 70k tokens next to short ones.
    check_decode(DType::F32, 128, 4, vec![20_000, 5, 70_000, 9000], 1, 1e-4);
}

#[test]
fn decode_attention_matches_cpu_bf16() {
    let mut rng = StdRng::seed_from_u64(2);
    check_decode(
        DType::BF16,
        128,
        4,
        ragged_lengths(&mut rng, 8, 3000),
        1,
        2e-2,
    );
    check_decode(DType::BF16, 128, 4, vec![20_000, 5, 70_000, 9000], 1, 2e-2);
    check_decode(
        DType::F16,
        64,
        2,
        ragged_lengths(&mut rng, 4, 1500),
        2,
        5e-3,
    );
}

#[test]
fn appends_match_the_cpu_cache() {
    let device = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let mut rng = StdRng::seed_from_u64(3);
        let (batch, n_kv, d) = (1, 4, 64);
        let lengths = ragged_lengths(&mut rng, n_kv, 300);
        let layer = Ragged::random(&mut rng, lengths, batch, d, dtype);
        let mut cpu = layer.cpu_cache();
        // Slack 2: the third append lays the layer out again.
        let mut gpu_layer = layer.gpu_layer(&device, dtype, 2);
        for _ in 0..70 {
            let k = random(&mut rng, n_kv * d, dtype);
            let v = random(&mut rng, n_kv * d, dtype);
            let k = Tensor::from_vec(k, (batch, n_kv, 1, d), &Device::Cpu).unwrap();
            let v = Tensor::from_vec(v, (batch, n_kv, 1, d), &Device::Cpu).unwrap();
            cpu.append(&k, &v).unwrap();
            gpu_layer
                .append(
                    &k.to_device(&device).unwrap(),
                    &v.to_device(&device).unwrap(),
                )
                .unwrap();
        }
        let cpu_lengths: Vec<u32> = cpu.head_lengths().iter().map(|&l| l as u32).collect();
        assert_eq!(gpu_layer.head_lengths(), cpu_lengths.as_slice());
        let (packed, lengths) = gpu_layer.packed().unwrap();
        assert_eq!(lengths, cpu_lengths);
        let packed = to_host(&packed);
        let half = packed.len() / 2;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for head in 0..n_kv {
            keys.extend_from_slice(cpu.head_keys(head, &mut Vec::new()));
            values.extend_from_slice(cpu.head_values(head, &mut Vec::new()));
        }
        assert_eq!(&packed[..half], keys.as_slice(), "{dtype:?} keys");
        assert_eq!(&packed[half..], values.as_slice(), "{dtype:?} values");
    }
}

#[test]
fn compaction_keeps_the_selected_rows() {
    let device = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let mut rng = StdRng::seed_from_u64(4);
        let (batch, n_kv, d) = (2, 3, 128);
        let lengths = ragged_lengths(&mut rng, batch * n_kv, 500);
        let layer = Ragged::random(&mut rng, lengths, batch, d, dtype);
        let kept: Vec<Vec<u32>> = layer
            .lengths
            .iter()
            .map(|&len| {
                (0..len as u32)
                    .filter(|_| rng.random::<f32>() < 0.3)
                    .collect()
            })
            .collect();
        let mut gpu_layer = layer.gpu_layer(&device, dtype, 5);
        gpu_layer.compact_heads(&kept, 7).unwrap();
        let (packed, lengths) = gpu_layer.packed().unwrap();
        let expected_lengths: Vec<u32> = kept.iter().map(|k| k.len() as u32).collect();
        assert_eq!(lengths, expected_lengths);
        let offsets = layer.offsets();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (head, indices) in kept.iter().enumerate() {
            for &t in indices {
                let row = (offsets[head] + t as usize) * d;
                keys.extend_from_slice(&layer.keys[row..row + d]);
                values.extend_from_slice(&layer.values[row..row + d]);
            }
        }
        let packed = to_host(&packed);
        let half = packed.len() / 2;
        assert_eq!(&packed[..half], keys.as_slice());
        assert_eq!(&packed[half..], values.as_slice());
        // Out-of-range selections are refused before anything runs.
        let mut bad = kept.clone();
        bad[0].push(10_000);
        assert!(gpu_layer.compact_heads(&bad, 0).is_err());
    }
}

/// Scores with ties, NaN, ±0 and infinities, so the tie rule and the NaN rule are exercised.
fn tricky_scores(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.random_range(0..20) {
            0 => f32::NAN,
            1 => -0.0,
            2 => 0.0,
            3 => f32::NEG_INFINITY,
            4 => f32::INFINITY,
            5..=9 => (rng.random_range(0..8) as f32) * 0.25,
            _ => rng.random::<f32>() * 4.0 - 2.0,
        })
        .collect()
}

#[test]
fn top_k_matches_the_cpu_rule_for_long_rows() {
    let device = gpu();
    let mut rng = StdRng::seed_from_u64(5);
    for dtype in [DType::F32, DType::BF16] {
        for (rows, n, ks) in [
            (3, 5, vec![0, 1, 3, 5, 9]),
            (4, 1000, vec![1, 250, 999]),
            (2, 8193, vec![2048, 8000]),
            (3, 100_000, vec![1, 25_000, 99_999]),
            (1, 300_000, vec![75_000]),
        ] {
            let scores = rounded(tricky_scores(&mut rng, rows * n), dtype);
            let gpu_scores = Tensor::from_slice(&scores, (rows, n), &device)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for k in ks {
                let got = top_k(&gpu_scores, k).unwrap();
                let got = got
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_vec2::<u32>()
                    .unwrap();
                for (row, got) in got.iter().enumerate() {
                    let expected = top_k_indices(&scores[row * n..(row + 1) * n], k);
                    assert_eq!(got, &expected, "{dtype:?} n={n} k={k} row {row}");
                }
            }
        }
    }
}

#[test]
fn layer_wide_selection_runs_on_the_gpu() {
    // AdaKV's global top-k over a layer's flattened (heads, T) scores, split into heads and
    // compacted without leaving the device, against the CPU top-k of the same scores.
    let device = gpu();
    let mut rng = StdRng::seed_from_u64(6);
    let (heads, t, d, budget) = (8, 4096, 64, 8 * 1024);
    let layer = Ragged::random(&mut rng, vec![t; heads], 1, d, DType::F32);
    let scores: Vec<f32> = (0..heads * t).map(|_| rng.random::<f32>()).collect();
    let gpu_scores = Tensor::from_slice(&scores, (1, heads * t), &device).unwrap();
    let kept = top_k(&gpu_scores, budget).unwrap().flatten_all().unwrap();
    let starts = segment_starts(&kept, t, heads).unwrap();
    let mut gpu_layer = layer.gpu_layer(&device, DType::F32, 0);
    gpu_layer.compact_segments(&kept, &starts, t, 16).unwrap();

    let global = top_k_indices(&scores, budget);
    let mut per_head = vec![Vec::new(); heads];
    for i in global {
        per_head[i as usize / t].push(i % t as u32);
    }
    let mut reference = layer.gpu_layer(&device, DType::F32, 0);
    reference.compact_heads(&per_head, 16).unwrap();
    assert_eq!(gpu_layer.head_lengths(), reference.head_lengths());
    let (a, _) = gpu_layer.packed().unwrap();
    let (b, _) = reference.packed().unwrap();
    assert_eq!(to_host(&a), to_host(&b));

    // The free function with explicit metadata gives the same buffer.
    let offsets = Tensor::new(
        &[0u32, 4096, 8192, 12288, 16384, 20480, 24576, 28672],
        &device,
    )
    .unwrap();
    let lengths = Tensor::new(&[4096u32; 8], &device).unwrap();
    let kv = layer.gpu_layer(&device, DType::F32, 0).kv().clone();
    let counts: Vec<u32> = per_head.iter().map(|k| k.len() as u32).collect();
    let dst: Vec<u32> = counts
        .iter()
        .scan(0, |s, &c| {
            let o = *s;
            *s += c;
            Some(o)
        })
        .collect();
    let dst = Tensor::new(dst.as_slice(), &device).unwrap();
    let out = compact(
        &kv,
        &offsets,
        &lengths,
        KeptRows {
            kept: &kept,
            kept_starts: &starts,
            index_stride: t,
        },
        &dst,
        budget,
    )
    .unwrap();
    assert_eq!(to_host(&out), to_host(&b));
}

#[test]
fn wrong_devices_and_dtypes_are_clear_errors() {
    let device = gpu();
    let cpu_scores = Tensor::zeros((2, 10), DType::F32, &Device::Cpu).unwrap();
    let err = top_k(&cpu_scores, 3).unwrap_err().to_string();
    assert!(err.contains("CUDA"), "{err}");
    let ints = Tensor::zeros((2, 10), DType::U32, &device).unwrap();
    let err = top_k(&ints, 3).unwrap_err().to_string();
    assert!(err.contains("f32, f16 or bf16"), "{err}");
}

#[test]
fn adakv_allocation_matches_the_cpu_allocator() {
    let device = gpu();
    let mut rng = StdRng::seed_from_u64(8);
    let (heads, t) = (8, 12_000);
    let budget = t / 4;
    let n_safe = adakv::AdaKvAllocator::kvpress(0.2).n_safe(budget);
    let rows: Vec<Vec<f32>> = (0..heads)
        .map(|h| {
            // Heads of different spread, so budgets differ, with ties.
            let spread = 1.0 + h as f32;
            (0..t)
                .map(|_| (rng.random::<f32>() * spread * 64.0).round() / 64.0)
                .collect()
        })
        .collect();
    let budgets = adakv::head_budgets(&rows, budget, n_safe);
    let expected: Vec<Vec<u32>> = rows
        .iter()
        .zip(&budgets)
        .map(|(row, &b)| {
            let mut protected = row.clone();
            for i in top_k_indices(row, n_safe) {
                protected[i as usize] = f32::INFINITY;
            }
            top_k_indices(&protected, b)
        })
        .collect();
    let flat: Vec<f32> = rows.concat();
    let scores = Tensor::from_slice(&flat, (heads, t), &device).unwrap();
    let (kept, starts) = adakv::cuda::protect_selection(&scores, budget, n_safe).unwrap();
    let kept = kept
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let starts = starts
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let got: Vec<Vec<u32>> = (0..heads)
        .map(|h| {
            kept[starts[h] as usize..starts[h + 1] as usize]
                .iter()
                .map(|&i| i - (h * t) as u32)
                .collect()
        })
        .collect();
    assert_eq!(got, expected);
}
