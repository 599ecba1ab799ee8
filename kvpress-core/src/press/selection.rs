//! [`Selection`]: which context tokens each KV head keeps (and, for the presses that say so,
//! which key channels of them, and what values they store).

use candle_core::{DType, Tensor};

use crate::press::KeyChannels;
use crate::{Error, Result};

/// The token indices each KV head of one layer keeps, sorted by position.
///
/// Heads are numbered `batch_idx * n_kv_heads + kv_head`. Heads may keep different tokens; they
/// keep the same number of tokens unless a head-wise allocator (AdaKV) decided otherwise.
///
/// Two presses store the kept tokens differently from the cache, and say so in the selection
/// that reaches [`crate::LayerCache::compact`] (a cache stores it, or refuses it with an error):
/// ThinK keeps only some channels of the keys ([`Self::key_channels`]), a merging press stores
/// values of its own for the kept tokens ([`Self::values`]). Chaining selections
/// ([`Self::then`], which is how `composed` combines its presses) carries both.
#[derive(Debug, Clone)]
pub struct Selection {
    kept: Vec<Vec<u32>>,
    batch: usize,
    n_kv_heads: usize,
    n_tokens: usize,
    key_channels: Option<KeyChannels>,
    values: Option<Tensor>,
}

impl PartialEq for Selection {
    /// Same tokens, key channels and replacement values (compared bit for bit).
    fn eq(&self, other: &Self) -> bool {
        let bits = |t: &Tensor| -> Option<(Vec<usize>, Vec<u32>)> {
            let data = t.to_dtype(DType::F32).ok()?.flatten_all().ok()?;
            let data = data.to_vec1::<f32>().ok()?;
            Some((
                t.dims().to_vec(),
                data.iter().map(|v| v.to_bits()).collect(),
            ))
        };
        let same_values = match (&self.values, &other.values) {
            (None, None) => true,
            (Some(a), Some(b)) => matches!((bits(a), bits(b)), (Some(a), Some(b)) if a == b),
            _ => false,
        };
        self.kept == other.kept
            && (self.batch, self.n_kv_heads, self.n_tokens)
                == (other.batch, other.n_kv_heads, other.n_tokens)
            && self.key_channels == other.key_channels
            && same_values
    }
}

impl Eq for Selection {}

impl Selection {
    /// A selection from per-head index lists (`batch * n_kv_heads` of them) over `n_tokens`
    /// tokens. Each list is sorted and deduplicated here; an index `>= n_tokens` is an error.
    pub fn new(
        mut kept: Vec<Vec<u32>>,
        batch: usize,
        n_kv_heads: usize,
        n_tokens: usize,
    ) -> Result<Self> {
        if kept.len() != batch * n_kv_heads {
            return Err(Error::Shape(format!(
                "a selection needs {} head lists (batch {batch} x {n_kv_heads} KV heads), got {}",
                batch * n_kv_heads,
                kept.len()
            )));
        }
        for head in &mut kept {
            head.sort_unstable();
            head.dedup();
            if let Some(&last) = head.last() {
                if last as usize >= n_tokens {
                    return Err(Error::InvalidArgument(format!(
                        "kept index {last} is outside the {n_tokens} tokens of the layer"
                    )));
                }
            }
        }
        Ok(Self {
            kept,
            batch,
            n_kv_heads,
            n_tokens,
            key_channels: None,
            values: None,
        })
    }

    /// Every head keeps every token.
    pub fn all(batch: usize, n_kv_heads: usize, n_tokens: usize) -> Self {
        let every: Vec<u32> = (0..n_tokens as u32).collect();
        Self {
            kept: vec![every; batch * n_kv_heads],
            batch,
            n_kv_heads,
            n_tokens,
            key_channels: None,
            values: None,
        }
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// KV heads per sequence.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }

    /// Tokens the layer held before the selection.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Sorted kept indices of one head.
    pub fn head(&self, batch_idx: usize, kv_head: usize) -> &[u32] {
        &self.kept[batch_idx * self.n_kv_heads + kv_head]
    }

    /// Sorted kept indices of every head, `batch * n_kv_heads` lists.
    pub fn heads(&self) -> &[Vec<u32>] {
        &self.kept
    }

    /// The number of tokens every head keeps, or `None` when heads keep different numbers.
    pub fn uniform_len(&self) -> Option<usize> {
        let first = self.kept.first().map_or(0, Vec::len);
        self.kept.iter().all(|h| h.len() == first).then_some(first)
    }

    /// Whether every head keeps every token.
    pub fn keeps_everything(&self) -> bool {
        self.uniform_len() == Some(self.n_tokens)
    }

    /// Tokens kept, summed over heads.
    pub fn total_kept(&self) -> usize {
        self.kept.iter().map(Vec::len).sum()
    }

    /// Fraction of `(head, token)` pairs kept.
    pub fn kept_fraction(&self) -> f64 {
        let total = self.kept.len() * self.n_tokens;
        if total == 0 {
            return 1.0;
        }
        self.total_kept() as f64 / total as f64
    }

    /// The selection `next`, made over the tokens this selection kept, expressed in this
    /// selection's original token indices (used to chain presses).
    pub fn then(&self, next: &Selection) -> Result<Selection> {
        if next.kept.len() != self.kept.len() {
            return Err(Error::Shape(format!(
                "cannot chain a selection of {} heads after one of {} heads",
                next.kept.len(),
                self.kept.len()
            )));
        }
        let mut kept = Vec::with_capacity(self.kept.len());
        for (outer, inner) in self.kept.iter().zip(&next.kept) {
            let mapped = inner
                .iter()
                .map(|&i| {
                    outer.get(i as usize).copied().ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "chained selection index {i} is outside the {} kept tokens",
                            outer.len()
                        ))
                    })
                })
                .collect::<Result<Vec<u32>>>()?;
            kept.push(mapped);
        }
        let mut chained = Selection::new(kept, self.batch, self.n_kv_heads, self.n_tokens)?;
        chained.key_channels = match (&self.key_channels, &next.key_channels) {
            (Some(first), Some(second)) => Some(first.intersect(second)?),
            (first, second) => first.clone().or_else(|| second.clone()),
        };
        chained.values = match (&self.values, &next.values) {
            (_, Some(values)) => Some(values.clone()),
            (Some(values), None) => Some(next.gather(values)?),
            (None, None) => None,
        };
        Ok(chained)
    }

    /// This selection with every index shifted by `offset` inside a layer of `n_tokens` tokens
    /// (used to put chunk selections back together).
    pub fn shifted(&self, offset: usize, n_tokens: usize) -> Result<Selection> {
        let kept = self
            .kept
            .iter()
            .map(|h| h.iter().map(|&i| i + offset as u32).collect())
            .collect();
        let mut shifted = Selection::new(kept, self.batch, self.n_kv_heads, n_tokens)?;
        shifted.key_channels = self.key_channels.clone();
        shifted.values = self.values.clone();
        Ok(shifted)
    }

    /// Appends `other`'s indices to each head (both must be over the same layer). Selections
    /// that prune key channels or replace values cannot be merged (each part would need its
    /// own).
    pub fn merge(&mut self, other: &Selection) -> Result<()> {
        if other.kept.len() != self.kept.len() || other.n_tokens != self.n_tokens {
            return Err(Error::Shape(
                "cannot merge selections of different layers".to_string(),
            ));
        }
        if !self.stores_as_cached() || !other.stores_as_cached() {
            return Err(Error::Unsupported(
                "selections that prune key channels (think) or replace values (merging) cannot \
                 be merged part by part (e.g. chunk by chunk)"
                    .to_string(),
            ));
        }
        for (mine, theirs) in self.kept.iter_mut().zip(&other.kept) {
            mine.extend_from_slice(theirs);
            mine.sort_unstable();
            mine.dedup();
        }
        Ok(())
    }
}

impl Selection {
    /// This selection, keeping only `key_channels` of the kept tokens' keys (ThinK): the cache
    /// stores those channels, and attention over these tokens uses only them. One channel list
    /// per head.
    pub fn with_key_channels(mut self, key_channels: KeyChannels) -> Result<Self> {
        if key_channels.heads().len() != self.kept.len() {
            return Err(Error::Shape(format!(
                "key channels for {} heads cannot refine a selection of {} heads",
                key_channels.heads().len(),
                self.kept.len()
            )));
        }
        self.key_channels = Some(key_channels);
        Ok(self)
    }

    /// The key channels each head keeps, when a press pruned channels; `None` keeps them all.
    pub fn key_channels(&self) -> Option<&KeyChannels> {
        self.key_channels.as_ref()
    }

    /// This selection, storing `values` `(batch, n_kv_heads, n_kept, head_dim)` for the kept
    /// tokens instead of their cached values (a merging press folds evicted values into them).
    /// Every head must keep the same number of tokens.
    pub fn with_values(mut self, values: Tensor) -> Result<Self> {
        let n_kept = self.uniform_len().ok_or_else(|| {
            Error::Unsupported(
                "replacement values need every head to keep the same number of tokens".to_string(),
            )
        })?;
        match values.dims4() {
            Ok((b, h, n, _)) if (b, h, n) == (self.batch, self.n_kv_heads, n_kept) => {}
            _ => {
                return Err(Error::Shape(format!(
                    "replacement values {:?} do not match a selection keeping {n_kept} tokens \
                     of batch {}, {} KV heads",
                    values.dims(),
                    self.batch,
                    self.n_kv_heads
                )))
            }
        }
        self.values = Some(values);
        Ok(self)
    }

    /// The values to store for the kept tokens instead of the cached ones, `(batch,
    /// n_kv_heads, n_kept, head_dim)`, when a press replaced them.
    pub fn values(&self) -> Option<&Tensor> {
        self.values.as_ref()
    }

    /// This selection without its replacement values (what a record of it keeps: the values
    /// live in the cache).
    pub fn without_values(mut self) -> Self {
        self.values = None;
        self
    }

    /// `selection` with the key channels and values of this one (after its indices were
    /// mapped to other positions, e.g. without padding); the kept counts must agree.
    pub fn refinements_onto(&self, selection: Selection) -> Result<Selection> {
        let selection = match &self.key_channels {
            Some(channels) => selection.with_key_channels(channels.clone())?,
            None => selection,
        };
        match &self.values {
            Some(values) => selection.with_values(values.clone()),
            None => Ok(selection),
        }
    }

    /// Whether the kept tokens are stored as the cache holds them: every key channel, the
    /// cached values.
    pub fn stores_as_cached(&self) -> bool {
        self.key_channels.is_none() && self.values.is_none()
    }

    /// The kept tokens of `tensor` `(batch, n_kv_heads, n_tokens, head_dim)`, as `(batch,
    /// n_kv_heads, n_kept, head_dim)`; every head must keep the same number of tokens.
    pub fn gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let (batch, n_kv_heads, n_tokens, head_dim) = tensor.dims4()?;
        if (batch, n_kv_heads, n_tokens) != (self.batch, self.n_kv_heads, self.n_tokens) {
            return Err(Error::Shape(format!(
                "a selection over (batch {}, {} KV heads, {} tokens) cannot gather from {:?}",
                self.batch,
                self.n_kv_heads,
                self.n_tokens,
                tensor.dims()
            )));
        }
        let n_kept = self.uniform_len().ok_or_else(|| {
            Error::Unsupported(
                "the heads of this layer keep different numbers of tokens, which a dense cache \
                 cannot store: use the flattened per-head cache of the adakv crate"
                    .to_string(),
            )
        })?;
        let mut heads = Vec::with_capacity(self.kept.len());
        for (i, kept) in self.kept.iter().enumerate() {
            let index = Tensor::new(kept.as_slice(), tensor.device())?;
            heads.push(
                tensor
                    .get(i / n_kv_heads)?
                    .get(i % n_kv_heads)?
                    .index_select(&index, 0)?,
            );
        }
        Ok(Tensor::stack(&heads, 0)?.reshape((batch, n_kv_heads, n_kept, head_dim))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaining_maps_back_to_original_indices() -> Result<()> {
        let first = Selection::new(vec![vec![1, 3, 5, 7]], 1, 1, 8)?;
        let second = Selection::new(vec![vec![0, 2]], 1, 1, 4)?;
        assert_eq!(first.then(&second)?.head(0, 0), &[1, 5]);
        Ok(())
    }

    #[test]
    fn chaining_carries_key_channels_and_values() -> Result<()> {
        let device = candle_core::Device::Cpu;
        let first = Selection::new(vec![vec![1, 3, 5, 7]], 1, 1, 8)?;
        let values = Tensor::arange(0f32, 8.0, &device)?.reshape((1, 1, 4, 2))?;
        let first = first.with_values(values)?;
        let channels = KeyChannels::new(vec![vec![0, 1]], 2)?;
        let second = Selection::new(vec![vec![0, 2]], 1, 1, 4)?.with_key_channels(channels)?;
        let chained = first.then(&second)?;
        assert_eq!(chained.head(0, 0), &[1, 5]);
        assert_eq!(
            chained.key_channels().map(|c| c.heads()),
            Some(&[vec![0, 1]][..])
        );
        let kept_values = chained.values().expect("values carried").flatten_all()?;
        assert_eq!(kept_values.to_vec1::<f32>()?, vec![0.0, 1.0, 4.0, 5.0]);
        assert!(!chained.stores_as_cached());
        assert!(chained.clone().without_values().values().is_none());
        let mut merged = chained.clone();
        assert!(
            merged.merge(&chained).is_err(),
            "refinements are not merged"
        );
        assert!(Selection::new(vec![vec![0], vec![0, 1]], 1, 2, 2)?
            .with_values(Tensor::zeros((1, 2, 1, 2), DType::F32, &device)?)
            .is_err());
        Ok(())
    }

    #[test]
    fn out_of_range_indices_are_rejected() {
        assert!(Selection::new(vec![vec![0, 8]], 1, 1, 8).is_err());
        assert!(Selection::new(vec![vec![0]], 1, 2, 8).is_err());
    }

    #[test]
    fn uniform_length_and_fraction() -> Result<()> {
        let s = Selection::new(vec![vec![0, 1], vec![2, 3]], 1, 2, 4)?;
        assert_eq!(s.uniform_len(), Some(2));
        assert!((s.kept_fraction() - 0.5).abs() < 1e-12);
        let ragged = Selection::new(vec![vec![0], vec![2, 3, 1]], 1, 2, 4)?;
        assert_eq!(ragged.uniform_len(), None);
        assert_eq!(ragged.head(0, 1), &[1, 2, 3]);
        Ok(())
    }
}
