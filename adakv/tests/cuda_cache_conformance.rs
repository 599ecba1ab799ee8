//! The CUDA flattened cache ([`CudaFlatLayer`] as a [`LayerCache`]) against the cache
//! conformance suite on GPU 0, in every storage dtype; and, with a head dimension the decode
//! kernel takes (the suite's is 8, which the candle-ops fallback serves), against the CPU
//! flattened cache through prefill, a ragged compaction, decoding past the slack, truncation
//! and snapshots. Needs a CUDA device.
#![cfg(feature = "cuda")]

use adakv::cuda::CudaFlatLayer;
use adakv::FlatLayerCache;
use candle_core::{DType, Device, Tensor};
use kvpress_core::press::Selection;
use kvpress_core::{LayerCache, LayerSnapshot};
use presses_testing::{run_cache_conformance, CacheLayout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device (these tests need a GPU)")
}

#[test]
fn the_cuda_flattened_cache_conforms_in_every_storage_dtype() {
    let device = gpu();
    // Tolerances of rounding values in [-1, 1) to the storage dtype, as for the dense cache.
    for (dtype, storage_tolerance) in [(DType::F32, 0.0), (DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        run_cache_conformance(
            &format!("cuda flattened {dtype:?}"),
            &|| Box::new(CudaFlatLayer::new(&device, dtype).expect("an empty CUDA layer")),
            CacheLayout {
                replacement_keys: false,
                ragged: true,
                storage_tolerance,
                device: device.clone(),
            },
        );
    }
}

/// Random values in [-1, 1) rounded to `dtype`, as an f32 CPU tensor (what both caches store).
fn random(rng: &mut StdRng, shape: (usize, usize, usize, usize), dtype: DType) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.to_dtype(DType::F32))
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes");
    let flat = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap()
    };
    flat(a)
        .iter()
        .zip(&flat(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Both snapshots are per head, with the same lengths and rows.
fn assert_same_snapshot(what: &str, gpu: &CudaFlatLayer, cpu: &FlatLayerCache) {
    match (gpu.snapshot().unwrap(), cpu.snapshot().unwrap()) {
        (
            LayerSnapshot::PerHead {
                keys,
                values,
                head_lengths,
                ..
            },
            LayerSnapshot::PerHead {
                keys: want_keys,
                values: want_values,
                head_lengths: want_lengths,
                ..
            },
        ) => {
            assert_eq!(head_lengths, want_lengths, "{what}: head lengths");
            assert_eq!(max_diff(&keys, &want_keys), 0.0, "{what}: keys");
            assert_eq!(max_diff(&values, &want_values), 0.0, "{what}: values");
        }
        other => panic!("{what}: both snapshots are per head, got {other:?}"),
    }
}

#[test]
fn the_decode_kernel_path_matches_the_cpu_flattened_cache() {
    let device = gpu();
    let (batch, kv_heads, heads, d, prefill) = (2, 2, 8, 64, 40);
    // Attention tolerances of the kernel tests (tests/cuda_kernels.rs): f32 accumulation either
    // way; bf16 rounds the output.
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
        let mut rng = StdRng::seed_from_u64(7);
        let on_gpu = |t: &Tensor| {
            t.to_device(&device)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap()
        };
        let mut cpu = FlatLayerCache::new();
        let mut gpu = CudaFlatLayer::new(&device, dtype).unwrap();
        let (k, v) = (
            random(&mut rng, (batch, kv_heads, prefill, d), dtype),
            random(&mut rng, (batch, kv_heads, prefill, d), dtype),
        );
        cpu.append(&k, &v).unwrap();
        LayerCache::append(&mut gpu, &on_gpu(&k), &on_gpu(&v)).unwrap();
        let kept: Vec<Vec<u32>> = (0..(batch * kv_heads) as u32)
            .map(|h| (0..prefill as u32).filter(|t| t % (h + 2) == 0).collect())
            .collect();
        let selection = Selection::new(kept, batch, kv_heads, prefill).unwrap();
        cpu.compact(&selection, None).unwrap();
        gpu.compact(&selection, None).unwrap();
        assert_same_snapshot("ragged compaction", &gpu, &cpu);
        // 70 decoded tokens: past the slack of 64, so the layer is laid out again.
        for step in 0..70 {
            let (k, v) = (
                random(&mut rng, (batch, kv_heads, 1, d), dtype),
                random(&mut rng, (batch, kv_heads, 1, d), dtype),
            );
            cpu.append(&k, &v).unwrap();
            LayerCache::append(&mut gpu, &on_gpu(&k), &on_gpu(&v)).unwrap();
            // One query token takes the kernel, three the candle-ops path.
            for n_queries in [1, 3] {
                let q = random(&mut rng, (batch, heads, n_queries, d), dtype);
                let want = cpu.attend(&q, false).unwrap().output;
                let got = LayerCache::attend(&gpu, &on_gpu(&q), false).unwrap().output;
                let diff = max_diff(&got, &want);
                assert!(
                    diff <= tol,
                    "{dtype:?} step {step}, {n_queries} queries: {diff}"
                );
            }
        }
        assert_same_snapshot("decoding", &gpu, &cpu);
        cpu.truncate(LayerCache::len(&cpu) - 70).unwrap();
        gpu.truncate(LayerCache::len(&gpu) - 70).unwrap();
        assert_same_snapshot("truncation", &gpu, &cpu);
        LayerCache::shrink_to_fit(&mut gpu).unwrap();
        assert_eq!(
            LayerCache::bytes_reserved(&gpu),
            LayerCache::bytes_used(&gpu)
        );
        assert_same_snapshot("shrink_to_fit", &gpu, &cpu);
    }
}

#[test]
fn attention_weights_match_the_dense_reference() {
    let device = gpu();
    let mut rng = StdRng::seed_from_u64(9);
    let (k, v) = (
        random(&mut rng, (1, 2, 50, 64), DType::F32),
        random(&mut rng, (1, 2, 50, 64), DType::F32),
    );
    let q = random(&mut rng, (1, 4, 5, 64), DType::F32);
    let mut gpu = CudaFlatLayer::new(&device, DType::F32).unwrap();
    LayerCache::append(
        &mut gpu,
        &k.to_device(&device).unwrap(),
        &v.to_device(&device).unwrap(),
    )
    .unwrap();
    let got = LayerCache::attend(&gpu, &q.to_device(&device).unwrap(), true).unwrap();
    let want = cpu_reference(&q, &k, &v);
    assert!(max_diff(&got.output, &want.0) <= 1e-5, "output");
    assert!(
        max_diff(&got.weights.expect("weights"), &want.1) <= 1e-5,
        "weights"
    );
}

/// The CPU flattened cache's attention with weights (its dense kernel) as the reference.
fn cpu_reference(q: &Tensor, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
    let mut cpu = FlatLayerCache::new();
    cpu.append(k, v).unwrap();
    let out = cpu.attend(q, true).unwrap();
    (out.output, out.weights.expect("weights"))
}
