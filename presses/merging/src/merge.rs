//! The merge of kvpress's `MergingPress.merge`: each evicted token's value is folded into the
//! kept token whose key is most cosine-similar, weighted by that similarity and by the evicted
//! value's share of the two value norms; keys are unchanged.

use candle_core::{DType, Tensor};
use kvpress_core::press::Selection;
use kvpress_core::{Error, Result};
use kvpress_kernels::{dot, sgemm, GemmDims, MatMut, MatRef};

/// kvpress's `_EPS`: the smallest key norm divided by, and the term keeping weights finite.
const EPS: f32 = 1e-6;

/// Evicted rows whose similarities to every kept key are computed at once (bounds the memory of
/// the similarity block to `ROWS_PER_BLOCK * n_kept` floats).
const ROWS_PER_BLOCK: usize = 256;

/// Which evicted tokens are merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeGates {
    /// Minimum cosine similarity of a merge, in `[0, 1]`.
    pub similarity_threshold: f64,
    /// Share of the evicted tokens passing the threshold that merge (those of highest
    /// similarity), in `(0, 1]`.
    pub merge_fraction: f64,
}

/// The values the tokens `selection` keeps store after merging, `(batch, n_kv_heads, n_kept,
/// head_dim)` f32, in the selection's (position) order, from the cached `keys` and `values`
/// `(batch, n_kv_heads, n_tokens, head_dim)`. Every head must keep the same number of tokens.
pub fn merged_values(
    keys: &Tensor,
    values: &Tensor,
    selection: &Selection,
    gates: MergeGates,
) -> Result<Tensor> {
    let (b, h, n, d) = keys.dims4()?;
    let n_kept = selection.uniform_len().ok_or_else(|| {
        Error::Unsupported("merging needs every head to keep the same number of tokens".into())
    })?;
    let f32_rows = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (keys_data, values_data) = (f32_rows(keys)?, f32_rows(values)?);
    let mut out = Vec::with_capacity(b * h * n_kept * d);
    for (head, kept) in selection.heads().iter().enumerate() {
        let rows = head * n * d..(head + 1) * n * d;
        let head_keys = &keys_data[rows.clone()];
        let head_values = &values_data[rows];
        out.extend(merge_head(head_keys, head_values, kept, d, gates));
    }
    Ok(Tensor::from_vec(out, (b, h, n_kept, d), keys.device())?)
}

/// `row / max(||row||, EPS)`.
fn unit(row: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let norm = dot(row, row).sqrt().max(EPS);
    row.iter().map(move |&x| x / norm)
}

/// One head: the kept values `(n_kept, d)` after merging the evicted tokens into them.
fn merge_head(keys: &[f32], values: &[f32], kept: &[u32], d: usize, gates: MergeGates) -> Vec<f32> {
    let n = keys.len() / d.max(1);
    let row = |data: &'_ [f32], t: usize| data[t * d..(t + 1) * d].to_vec();
    let mut kept_values: Vec<f32> = kept.iter().flat_map(|&t| row(values, t as usize)).collect();
    let mut is_kept = vec![false; n];
    kept.iter().for_each(|&t| is_kept[t as usize] = true);
    let evicted: Vec<usize> = (0..n).filter(|&t| !is_kept[t]).collect();
    if evicted.is_empty() || kept.is_empty() {
        return kept_values;
    }
    let (max_sim, target) = nearest_survivors(keys, kept, &evicted, d);
    let merge_ok = gate(&max_sim, gates);
    let mut value_accum = vec![0f32; kept_values.len()];
    let mut weight_accum = vec![0f32; kept.len()];
    for (e, &t) in evicted.iter().enumerate() {
        let weight = max_sim[e].max(0.0) * if merge_ok[e] { 1.0 } else { 0.0 };
        let evict_value = &values[t * d..(t + 1) * d];
        let target_value = &kept_values[target[e] * d..(target[e] + 1) * d];
        let (evict_norm, target_norm) = (norm(evict_value), norm(target_value));
        let weight = weight * evict_norm / (evict_norm + target_norm + EPS);
        let accum = &mut value_accum[target[e] * d..(target[e] + 1) * d];
        accum
            .iter_mut()
            .zip(evict_value)
            .for_each(|(a, &v)| *a += weight * v);
        weight_accum[target[e]] += weight;
    }
    for (k, &w) in weight_accum.iter().enumerate() {
        if w > 0.0 {
            let accum = &value_accum[k * d..(k + 1) * d];
            kept_values[k * d..(k + 1) * d]
                .iter_mut()
                .zip(accum)
                .for_each(|(v, &a)| *v = (*v + a) / (1.0 + w));
        }
    }
    kept_values
}

/// `||row||`.
fn norm(row: &[f32]) -> f32 {
    dot(row, row).sqrt()
}

/// For every evicted token, the largest cosine similarity of its key to a kept key and the
/// position (in `kept`) of that key; ties go to the earlier kept token.
fn nearest_survivors(
    keys: &[f32],
    kept: &[u32],
    evicted: &[usize],
    d: usize,
) -> (Vec<f32>, Vec<usize>) {
    let kept_unit: Vec<f32> = kept
        .iter()
        .flat_map(|&t| unit(&keys[t as usize * d..(t as usize + 1) * d]).collect::<Vec<_>>())
        .collect();
    let n_kept = kept.len();
    let (mut max_sim, mut target) = (Vec::with_capacity(evicted.len()), Vec::new());
    let mut block = vec![0f32; ROWS_PER_BLOCK * n_kept];
    for rows in evicted.chunks(ROWS_PER_BLOCK) {
        let evict_unit: Vec<f32> = rows
            .iter()
            .flat_map(|&t| unit(&keys[t * d..(t + 1) * d]).collect::<Vec<_>>())
            .collect();
        let similarities = &mut block[..rows.len() * n_kept];
        sgemm(
            GemmDims {
                m: rows.len(),
                n: n_kept,
                k: d,
            },
            1.0,
            MatRef {
                data: &evict_unit,
                row_stride: d,
                transposed: false,
            },
            MatRef {
                data: &kept_unit,
                row_stride: d,
                transposed: true,
            },
            0.0,
            MatMut {
                data: similarities,
                row_stride: n_kept,
            },
        );
        for similarity in similarities.chunks_exact(n_kept) {
            let (best, value) =
                similarity
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv {
                            (i, v)
                        } else {
                            (bi, bv)
                        }
                    });
            max_sim.push(value);
            target.push(best);
        }
    }
    (max_sim, target)
}

/// Which evicted tokens merge: similarity at least the threshold, and, when `merge_fraction` is
/// below 1, among the `merge_fraction` most similar of those (kvpress's quantile gate).
fn gate(max_sim: &[f32], gates: MergeGates) -> Vec<bool> {
    let threshold = gates.similarity_threshold as f32;
    let mut merge_ok: Vec<bool> = max_sim.iter().map(|&s| s >= threshold).collect();
    if gates.merge_fraction < 1.0 && merge_ok.iter().any(|&ok| ok) {
        let candidates: Vec<f32> = max_sim
            .iter()
            .zip(&merge_ok)
            .map(|(&s, &ok)| if ok { s } else { f32::NEG_INFINITY })
            .collect();
        let cut = quantile(&candidates, (1.0 - gates.merge_fraction) as f32);
        merge_ok
            .iter_mut()
            .zip(max_sim)
            .for_each(|(ok, &s)| *ok = *ok && s >= cut);
    }
    merge_ok
}

/// `torch.quantile(values, q)` (linear interpolation, `torch.lerp` between the neighbouring
/// sorted values; NaN when a value is NaN).
pub fn quantile(values: &[f32], q: f32) -> f32 {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = q * (sorted.len() - 1) as f32;
    let below = rank as usize;
    let above = (rank.ceil() as usize).min(sorted.len() - 1);
    lerp(sorted[below], sorted[above], rank - below as f32)
}

/// `torch.lerp(start, end, weight)` as ATen computes it.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_torch() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&[1.0, 2.0], 0.0), 1.0);
        assert_eq!(quantile(&[1.0, 2.0], 1.0), 2.0);
        // A -inf neighbour makes torch's lerp NaN below a weight of 0.5 (every token is then
        // gated out), -inf from 0.5 on.
        assert!(quantile(&[f32::NEG_INFINITY, 1.0, 2.0], 0.1).is_nan());
        assert_eq!(
            quantile(&[f32::NEG_INFINITY, 1.0, 2.0], 0.25),
            f32::NEG_INFINITY
        );
        assert_eq!(quantile(&[f32::NEG_INFINITY, 1.0, 2.0], 0.5), 1.0);
    }
}
