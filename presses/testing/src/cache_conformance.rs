//! The cache conformance suite: one set of checks of the [`LayerCache`] contract, written once
//! and run for every layout (the dense cache, the flattened per-head cache, the CUDA one behind
//! its feature). A failed check panics with what went wrong.
//!
//! It checks: an empty cache; appends in one and in several forwards (what is stored is what was
//! appended, in order); attention against textbook attention over the stored tokens; truncation
//! undoing appends (the rewind after an answer); compaction by a selection, with and without
//! replacement keys; a ragged selection (for layouts that store one) followed by decoding, each
//! head attending over its own tokens; `store_selected` equal to append-compact-shrink;
//! `shrink_to_fit`; snapshots; `clear`; replacement values (stored or refused, as replacement
//! keys are); a selection keeping only some key channels (stored, then attention equals attention
//! over the keys with the other channels zeroed, or refused, leaving the cache as it was).
//!
//! Every tensor the suite hands a cache is created on [`CacheLayout::device`] (the CPU, or the
//! GPU of a CUDA layout); what the cache returns is compared on the CPU, against references
//! computed there.

use candle_core::{DType, Device, Tensor};
use kvpress_core::press::Selection;
use kvpress_core::{LayerCache, LayerSnapshot};
use kvpress_kernels::grouped_query_attention;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a layout stores, and where its tensors live.
#[derive(Debug, Clone)]
pub struct CacheLayout {
    /// Heads may keep different numbers of tokens (a ragged selection is stored as it is).
    pub ragged: bool,
    /// Compaction may store replacement keys (key re-rotation) and replacement values
    /// (merging); else it must refuse both.
    pub replacement_keys: bool,
    /// Largest difference allowed between what was appended and what is read back (0 for
    /// f32 storage).
    pub storage_tolerance: f32,
    /// The device every key, value and query given to the cache is created on.
    pub device: Device,
}

pub(crate) const BATCH: usize = 1;
pub(crate) const KV_HEADS: usize = 2;
pub(crate) const HEADS: usize = 4;
pub(crate) const HEAD_DIM: usize = 8;

pub(crate) fn random(shape: (usize, usize, usize, usize), seed: u64, device: &Device) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, device).expect("a tensor")
}

pub(crate) fn kv(n: usize, seed: u64, device: &Device) -> (Tensor, Tensor) {
    (
        random((BATCH, KV_HEADS, n, HEAD_DIM), seed, device),
        random((BATCH, KV_HEADS, n, HEAD_DIM), seed + 1, device),
    )
}

/// A copy of `tensor` on the CPU, where every comparison and reference runs.
pub(crate) fn cpu(tensor: &Tensor) -> Tensor {
    tensor.to_device(&Device::Cpu).expect("a copy on the CPU")
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes");
    let a = cpu(a)
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .unwrap();
    let b = cpu(b)
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .unwrap();
    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub(crate) fn stored(cache: &dyn LayerCache) -> (Tensor, Tensor) {
    cache
        .keys_values()
        .expect("keys_values")
        .expect("the cache holds tokens")
}

pub(crate) fn assert_holds(
    name: &str,
    what: &str,
    cache: &dyn LayerCache,
    keys: &Tensor,
    values: &Tensor,
    tol: f32,
) {
    let (k, v) = stored(cache);
    assert!(max_diff(&k, keys) <= tol, "{name}: keys after {what}");
    assert!(max_diff(&v, values) <= tol, "{name}: values after {what}");
}

/// Runs every check on fresh caches from `make`.
pub fn run_cache_conformance(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: CacheLayout,
) {
    let layout = &layout;
    check_empty(name, make().as_ref(), &layout.device);
    check_appends_and_attention(name, make, layout);
    check_truncate_undoes_appends(name, make, layout);
    check_uniform_compaction(name, make, layout);
    check_store_selected(name, make, layout);
    crate::cache_refinements::check_replacement_values(name, make, layout);
    crate::cache_refinements::check_key_channels(name, make, layout);
    if layout.ragged {
        check_ragged_compaction_then_decoding(name, make, layout);
    } else {
        check_ragged_selection_is_refused(name, make, &layout.device);
    }
    check_clear(name, make, &layout.device);
}

fn check_empty(name: &str, cache: &dyn LayerCache, device: &Device) {
    assert_eq!(cache.len(), 0, "{name}: a new cache is empty");
    assert!(cache.is_empty(), "{name}: is_empty");
    assert!(
        cache.keys_values().unwrap().is_none(),
        "{name}: nothing to view"
    );
    let queries = random((BATCH, HEADS, 1, HEAD_DIM), 1, device);
    assert!(
        cache.attend(&queries, false).is_err(),
        "{name}: attending over nothing is an error"
    );
}

fn check_appends_and_attention(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: &CacheLayout,
) {
    let (tol, device) = (layout.storage_tolerance, &layout.device);
    let mut cache = make();
    let (k1, v1) = kv(37, 10, device);
    cache.append(&k1, &v1).unwrap();
    assert_eq!(cache.len(), 37, "{name}: length after a prefill");
    assert_holds(name, "a prefill", cache.as_ref(), &k1, &v1, tol);
    let mut all = (cpu(&k1), cpu(&v1));
    for step in 0..5 {
        let (k, v) = kv(1, 20 + step, device);
        cache.append(&k, &v).unwrap();
        all = (
            Tensor::cat(&[&all.0, &cpu(&k)], 2).unwrap(),
            Tensor::cat(&[&all.1, &cpu(&v)], 2).unwrap(),
        );
        // One new query (decoding) and several (a question's prefill) against the reference.
        for n_queries in [1, 3] {
            let queries = random((BATCH, HEADS, n_queries, HEAD_DIM), 40 + step, device);
            let got = cache.attend(&queries, false).unwrap().output;
            let (k, v) = stored(cache.as_ref());
            let want = grouped_query_attention(&cpu(&queries), &cpu(&k), &cpu(&v), false)
                .unwrap()
                .output;
            assert!(
                max_diff(&got, &want) <= 1e-5,
                "{name}: attention over {} tokens",
                cache.len()
            );
        }
    }
    assert_eq!(cache.len(), 42, "{name}: length after decoding");
    assert_holds(name, "decoding", cache.as_ref(), &all.0, &all.1, tol);
    assert!(
        cache.bytes_used() > 0 && cache.bytes_reserved() >= cache.bytes_used(),
        "{name}: bytes"
    );
}

fn check_truncate_undoes_appends(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: &CacheLayout,
) {
    let device = &layout.device;
    let mut cache = make();
    let (k, v) = kv(20, 50, device);
    cache.append(&k, &v).unwrap();
    let (q, a) = kv(6, 52, device);
    cache.append(&q, &a).unwrap();
    cache.truncate(20).unwrap();
    assert_eq!(cache.len(), 20, "{name}: truncate");
    assert_holds(
        name,
        "truncating the appends",
        cache.as_ref(),
        &k,
        &v,
        layout.storage_tolerance,
    );
    assert!(
        cache.truncate(21).is_err(),
        "{name}: truncating to more tokens than stored"
    );
}

fn check_uniform_compaction(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: &CacheLayout,
) {
    let (tol, device) = (layout.storage_tolerance, &layout.device);
    let mut cache = make();
    let (k, v) = kv(16, 60, device);
    cache.append(&k, &v).unwrap();
    let kept: Vec<Vec<u32>> = vec![vec![0, 3, 4, 9, 15], vec![1, 2, 8, 10, 11]];
    let selection = Selection::new(kept, BATCH, KV_HEADS, 16).unwrap();
    let (want_k, want_v) = (
        selection.gather(&cpu(&k)).unwrap(),
        selection.gather(&cpu(&v)).unwrap(),
    );
    cache.compact(&selection, None).unwrap();
    assert_eq!(cache.len(), 5, "{name}: compacted length");
    assert_holds(name, "compaction", cache.as_ref(), &want_k, &want_v, tol);
    cache.shrink_to_fit().unwrap();
    assert_eq!(
        cache.bytes_reserved(),
        cache.bytes_used(),
        "{name}: shrink_to_fit"
    );
    let replacement = random((BATCH, KV_HEADS, 3, HEAD_DIM), 62, device);
    let three = Selection::new(vec![vec![0, 1, 2]; KV_HEADS], BATCH, KV_HEADS, 5).unwrap();
    let kept_values = three.gather(&want_v).unwrap();
    if !layout.replacement_keys {
        assert!(
            cache.compact(&three, Some(&replacement)).is_err(),
            "{name}: replacement keys are refused"
        );
        assert_holds(
            name,
            "refusing replacement keys",
            cache.as_ref(),
            &want_k,
            &want_v,
            tol,
        );
        return;
    }
    cache.compact(&three, Some(&replacement)).unwrap();
    assert_holds(
        name,
        "compaction with replacement keys",
        cache.as_ref(),
        &replacement,
        &kept_values,
        tol,
    );
    let wrong = Selection::new(vec![vec![0]; KV_HEADS], BATCH, KV_HEADS, 7).unwrap();
    assert!(
        cache.compact(&wrong, None).is_err(),
        "{name}: a selection over another length"
    );
    match cache.snapshot().unwrap() {
        LayerSnapshot::Dense(Some((k, v))) => {
            assert!(
                max_diff(&k, &replacement) <= tol && max_diff(&v, &kept_values) <= tol,
                "{name}: snapshot"
            );
        }
        LayerSnapshot::PerHead { head_lengths, .. } => {
            assert_eq!(
                head_lengths,
                vec![3; KV_HEADS],
                "{name}: snapshot head lengths"
            )
        }
        LayerSnapshot::Stored(copy) => {
            let (k, v) = stored(copy.as_ref());
            assert!(
                max_diff(&k, &replacement) <= tol && max_diff(&v, &kept_values) <= tol,
                "{name}: snapshot"
            );
            // The copy rebuilds the cache exactly: what it holds, bit for bit.
            let rebuilt = copy
                .try_clone()
                .expect("a stored snapshot rebuilds its cache");
            let ((rk, rv), (ck, cv)) = (stored(rebuilt.as_ref()), stored(cache.as_ref()));
            assert!(
                max_diff(&rk, &ck) == 0.0 && max_diff(&rv, &cv) == 0.0,
                "{name}: a stored snapshot rebuilds the cache exactly"
            );
        }
        other => panic!("{name}: snapshot of a non-empty cache: {other:?}"),
    }
}

fn check_store_selected(name: &str, make: &dyn Fn() -> Box<dyn LayerCache>, layout: &CacheLayout) {
    let (k, v) = kv(24, 70, &layout.device);
    let kept = vec![
        (0..24).step_by(3).collect(),
        (0..24).step_by(3).map(|i| i + 1).collect(),
    ];
    let selection = Selection::new(kept, BATCH, KV_HEADS, 24).unwrap();
    let mut stepwise = make();
    stepwise.append(&k, &v).unwrap();
    stepwise.compact(&selection, None).unwrap();
    stepwise.shrink_to_fit().unwrap();
    let mut direct = make();
    direct.store_selected(&k, &v, &selection, None).unwrap();
    let (want_k, want_v) = stored(stepwise.as_ref());
    assert_holds(
        name,
        "store_selected",
        direct.as_ref(),
        &want_k,
        &want_v,
        layout.storage_tolerance,
    );
    assert_eq!(
        direct.bytes_reserved(),
        stepwise.bytes_reserved(),
        "{name}: store_selected bytes"
    );
}

fn check_ragged_selection_is_refused(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    device: &Device,
) {
    let mut cache = make();
    let (k, v) = kv(8, 80, device);
    cache.append(&k, &v).unwrap();
    let ragged = Selection::new(vec![vec![0, 1, 2], vec![5]], BATCH, KV_HEADS, 8).unwrap();
    assert!(
        cache.compact(&ragged, None).is_err(),
        "{name}: heads of different lengths are refused"
    );
    assert_eq!(
        cache.len(),
        8,
        "{name}: a refused compaction changes nothing"
    );
}

fn check_ragged_compaction_then_decoding(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: &CacheLayout,
) {
    let device = &layout.device;
    // Attention over stored keys and values each within the storage tolerance of the exact
    // ones: the scores move by at most |q| (<= sqrt(HEAD_DIM)) x the tolerance, scaled by
    // 1/sqrt(HEAD_DIM), which (with values in [-1, 1)) moves the output by about twice that.
    let attention_tol = 1e-5 + 4.0 * layout.storage_tolerance;
    let mut cache = make();
    let (k, v) = kv(30, 90, device);
    cache.append(&k, &v).unwrap();
    let kept: Vec<Vec<u32>> = vec![(0..30).step_by(2).collect(), vec![3, 7, 29]];
    let selection = Selection::new(kept.clone(), BATCH, KV_HEADS, 30).unwrap();
    cache.compact(&selection, None).unwrap();
    assert_eq!(cache.len(), 15, "{name}: the longest head's length");
    // Each head keeps its own rows; then every head gets one more token per decoding step.
    let mut heads: Vec<(Vec<f32>, Vec<f32>)> = (0..KV_HEADS)
        .map(|h| (head_rows(&k, h, &kept[h]), head_rows(&v, h, &kept[h])))
        .collect();
    for step in 0..3 {
        let (nk, nv) = kv(1, 100 + step, device);
        cache.append(&nk, &nv).unwrap();
        for (h, (hk, hv)) in heads.iter_mut().enumerate() {
            hk.extend(head_rows(&nk, h, &[0]));
            hv.extend(head_rows(&nv, h, &[0]));
        }
        let queries = random((BATCH, HEADS, 1, HEAD_DIM), 110 + step, device);
        let got = cache.attend(&queries, false).unwrap().output;
        for (h, (hk, hv)) in heads.iter().enumerate() {
            check_head_attention(name, &queries, &got, h, (hk, hv), attention_tol);
        }
    }
    let queries = random((BATCH, HEADS, 1, HEAD_DIM), 130, device);
    match cache.snapshot().unwrap() {
        LayerSnapshot::PerHead { head_lengths, .. } => {
            assert_eq!(head_lengths, vec![18, 6], "{name}: snapshot head lengths")
        }
        LayerSnapshot::Stored(copy) => {
            // The copy rebuilds the cache: its length, and attention bit for bit.
            let rebuilt = copy
                .try_clone()
                .expect("a stored snapshot rebuilds its cache");
            assert_eq!(rebuilt.len(), 18, "{name}: the rebuilt cache's length");
            let (a, b) = (
                rebuilt.attend(&queries, false).unwrap().output,
                cache.attend(&queries, false).unwrap().output,
            );
            assert_eq!(
                max_diff(&a, &b),
                0.0,
                "{name}: a stored snapshot attends as the cache"
            );
        }
        other => panic!("{name}: a ragged cache snapshots per head, not {other:?}"),
    }
    // Rewinding the decoded tokens drops one token from every head.
    cache.truncate(cache.len() - 3).unwrap();
    if let LayerSnapshot::PerHead { head_lengths, .. } = cache.snapshot().unwrap() {
        assert_eq!(head_lengths, vec![15, 3], "{name}: rewound head lengths")
    }
    // Each head attends over its own rows without the decoded ones (a query over the whole
    // stored length: every row visible).
    let got = cache.attend(&queries, false).unwrap().output;
    for (h, (hk, hv)) in heads.iter().enumerate() {
        let kept = hk.len() - 3 * HEAD_DIM;
        let rows = (&hk[..kept], &hv[..kept]);
        check_head_attention(name, &queries, &got, h, rows, attention_tol);
    }
}

/// The rows `rows` of KV head `head` of a `(1, heads, n, d)` tensor, back to back.
fn head_rows(tensor: &Tensor, head: usize, rows: &[u32]) -> Vec<f32> {
    let head = cpu(tensor).get(0).and_then(|t| t.get(head)).unwrap();
    rows.iter()
        .flat_map(|&i| {
            head.get(i as usize)
                .and_then(|r| r.to_vec1::<f32>())
                .unwrap()
        })
        .collect()
}

/// Query heads of KV head `head` in `got` attend exactly over that head's own rows.
fn check_head_attention(
    name: &str,
    queries: &Tensor,
    got: &Tensor,
    head: usize,
    (keys, values): (&[f32], &[f32]),
    tol: f32,
) {
    let n = keys.len() / HEAD_DIM;
    let keys = Tensor::from_vec(keys.to_vec(), (1, 1, n, HEAD_DIM), &Device::Cpu).unwrap();
    let values = Tensor::from_vec(values.to_vec(), (1, 1, n, HEAD_DIM), &Device::Cpu).unwrap();
    let group = HEADS / KV_HEADS;
    let q = cpu(queries).narrow(1, head * group, group).unwrap();
    let want = grouped_query_attention(&q, &keys, &values, false)
        .unwrap()
        .output;
    let got = cpu(got).narrow(1, head * group, group).unwrap();
    let diff = max_diff(&got, &want);
    assert!(
        diff <= tol,
        "{name}: head {head} attends over its own {n} tokens (off by {diff}, allowed {tol})"
    );
}

fn check_clear(name: &str, make: &dyn Fn() -> Box<dyn LayerCache>, device: &Device) {
    let mut cache = make();
    let (k, v) = kv(5, 120, device);
    cache.append(&k, &v).unwrap();
    cache.clear();
    assert!(cache.is_empty(), "{name}: clear empties the cache");
    assert_eq!(cache.bytes_reserved(), 0, "{name}: clear frees the storage");
    cache.append(&k, &v).unwrap();
    assert_eq!(
        cache.len(),
        5,
        "{name}: a cleared cache takes appends again"
    );
}
