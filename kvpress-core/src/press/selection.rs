//! [`Selection`]: which context tokens each KV head keeps.

use candle_core::Tensor;

use crate::{Error, Result};

/// The token indices each KV head of one layer keeps, sorted by position.
///
/// Heads are numbered `batch_idx * n_kv_heads + kv_head`. Heads may keep different tokens; they
/// keep the same number of tokens unless a head-wise allocator (AdaKV) decided otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    kept: Vec<Vec<u32>>,
    batch: usize,
    n_kv_heads: usize,
    n_tokens: usize,
}

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
        Selection::new(kept, self.batch, self.n_kv_heads, self.n_tokens)
    }

    /// This selection with every index shifted by `offset` inside a layer of `n_tokens` tokens
    /// (used to put chunk selections back together).
    pub fn shifted(&self, offset: usize, n_tokens: usize) -> Result<Selection> {
        let kept = self
            .kept
            .iter()
            .map(|h| h.iter().map(|&i| i + offset as u32).collect())
            .collect();
        Selection::new(kept, self.batch, self.n_kv_heads, n_tokens)
    }

    /// Appends `other`'s indices to each head (both must be over the same layer).
    pub fn merge(&mut self, other: &Selection) -> Result<()> {
        if other.kept.len() != self.kept.len() || other.n_tokens != self.n_tokens {
            return Err(Error::Shape(
                "cannot merge selections of different layers".to_string(),
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
