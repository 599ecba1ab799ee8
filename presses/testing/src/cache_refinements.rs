//! The cache conformance checks of what a selection may ask beyond its tokens: replacement
//! values (a merging press) and kept key channels (ThinK). A layout stores them exactly or
//! refuses them, changing nothing.

use candle_core::{Device, Tensor};
use kvpress_core::press::{KeyChannels, Selection};
use kvpress_core::LayerCache;
use kvpress_kernels::grouped_query_attention;

use crate::cache_conformance::{
    assert_holds, cpu, kv, max_diff, random, stored, CacheLayout, BATCH, HEADS, HEAD_DIM, KV_HEADS,
};

/// Replacement values are stored for the kept tokens by layouts that store replacement keys
/// (by compaction and by `store_selected`), and refused by the others.
pub(crate) fn check_replacement_values(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: &CacheLayout,
) {
    let (tol, device) = (layout.storage_tolerance, &layout.device);
    let (k, v) = kv(12, 130, device);
    let tokens = Selection::new(vec![vec![1, 4, 7]; KV_HEADS], BATCH, KV_HEADS, 12).unwrap();
    let merged = random((BATCH, KV_HEADS, 3, HEAD_DIM), 132, device);
    let selection = tokens.clone().with_values(merged.clone()).unwrap();
    let mut cache = make();
    cache.append(&k, &v).unwrap();
    if !layout.replacement_keys {
        assert!(
            cache.compact(&selection, None).is_err(),
            "{name}: replacement values are refused"
        );
        assert_eq!(
            cache.len(),
            12,
            "{name}: a refused compaction changes nothing"
        );
        assert_holds(
            name,
            "refusing replacement values",
            cache.as_ref(),
            &k,
            &v,
            tol,
        );
        return;
    }
    let kept_keys = tokens.gather(&cpu(&k)).unwrap();
    cache.compact(&selection, None).unwrap();
    assert_holds(
        name,
        "replacement values",
        cache.as_ref(),
        &kept_keys,
        &merged,
        tol,
    );
    let mut direct = make();
    direct.store_selected(&k, &v, &selection, None).unwrap();
    assert_holds(
        name,
        "store_selected with replacement values",
        direct.as_ref(),
        &kept_keys,
        &merged,
        tol,
    );
}

/// `keys` `(1, heads, n, d)` with the channels each head drops set to zero.
fn zero_pruned(keys: &Tensor, channels: &KeyChannels) -> Tensor {
    let (b, h, n, d) = keys.dims4().unwrap();
    let mut data = cpu(keys).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (head, rows) in data.chunks_exact_mut(n * d).enumerate() {
        let pruned = channels.pruned(head);
        for row in rows.chunks_exact_mut(d) {
            pruned.iter().for_each(|&c| row[c as usize] = 0.0);
        }
    }
    Tensor::from_vec(data, (b, h, n, d), &Device::Cpu).unwrap()
}

/// A selection keeping every other token and half the key channels is either stored (the keys
/// read back with the dropped channels zeroed, fewer bytes than every channel would take, and
/// attention, before and after decoding appends, equal to attention over those zeroed keys) or
/// refused with the cache unchanged.
pub(crate) fn check_key_channels(
    name: &str,
    make: &dyn Fn() -> Box<dyn LayerCache>,
    layout: &CacheLayout,
) {
    let (tol, device) = (layout.storage_tolerance, &layout.device);
    let (k, v) = kv(20, 140, device);
    let channels = KeyChannels::new(vec![vec![0, 2, 5, 7], vec![1, 2, 3, 6]], HEAD_DIM).unwrap();
    let tokens = Selection::new(
        vec![(0..20).step_by(2).collect(); KV_HEADS],
        BATCH,
        KV_HEADS,
        20,
    )
    .unwrap();
    let selection = tokens.clone().with_key_channels(channels.clone()).unwrap();
    let mut cache = make();
    cache.append(&k, &v).unwrap();
    if cache.compact(&selection, None).is_err() {
        assert_eq!(
            cache.len(),
            20,
            "{name}: a refused compaction changes nothing"
        );
        assert_holds(name, "refusing key channels", cache.as_ref(), &k, &v, tol);
        return;
    }
    let want_k = zero_pruned(&tokens.gather(&cpu(&k)).unwrap(), &channels);
    let want_v = tokens.gather(&cpu(&v)).unwrap();
    assert_eq!(cache.len(), 10, "{name}: tokens kept with their channels");
    assert_holds(
        name,
        "keeping key channels",
        cache.as_ref(),
        &want_k,
        &want_v,
        tol,
    );
    cache.shrink_to_fit().unwrap();
    let every_channel = 2 * BATCH * KV_HEADS * 10 * HEAD_DIM * std::mem::size_of::<f32>();
    assert!(
        cache.bytes_used() < every_channel && cache.bytes_reserved() == cache.bytes_used(),
        "{name}: pruned channels are not stored ({} bytes, {every_channel} with every channel)",
        cache.bytes_used()
    );
    for step in 0..3 {
        let (nk, nv) = kv(1, 150 + step, device);
        cache.append(&nk, &nv).unwrap();
        for n_queries in [1, 3] {
            let queries = random((BATCH, HEADS, n_queries, HEAD_DIM), 160 + step, device);
            let got = cache.attend(&queries, false).unwrap().output;
            let (sk, sv) = stored(cache.as_ref());
            let want = grouped_query_attention(&cpu(&queries), &cpu(&sk), &cpu(&sv), false)
                .unwrap()
                .output;
            assert!(
                max_diff(&got, &want) <= 1e-5,
                "{name}: attention over pruned channels and {} appended tokens",
                step + 1
            );
        }
    }
    let (sk, _) = stored(cache.as_ref());
    let appended = cpu(&sk).narrow(2, 10, 3).unwrap();
    assert!(
        max_diff(&appended, &zero_pruned(&appended, &channels)) > 0.0,
        "{name}: appended tokens keep every channel"
    );
    cache.truncate(10).unwrap();
    assert_holds(
        name,
        "rewinding the appends",
        cache.as_ref(),
        &want_k,
        &want_v,
        tol,
    );
}
