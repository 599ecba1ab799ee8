//! [`KeyChannels`]: which channels of the cached keys each KV head keeps (ThinK's channel
//! pruning), carried by a [`crate::press::Selection`] to the cache.

use crate::{Error, Result};

/// The key channels each KV head keeps, sorted, in `0..head_dim` (the rotate-half layout of the
/// cached keys). Heads are numbered `batch_idx * n_kv_heads + kv_head`, as in a selection.
///
/// A press that prunes channels (ThinK) says which channels of the compressed context's keys
/// still count: attention over those tokens uses only these channels of the query, which is what
/// kvpress computes by setting the other channels of the cached keys to zero. Tokens appended
/// afterwards keep every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChannels {
    heads: Vec<Vec<u32>>,
    head_dim: usize,
}

impl KeyChannels {
    /// The channels kept by every head (one list per head), out of `head_dim`. Each list is
    /// sorted and deduplicated here; a channel `>= head_dim` is an error.
    pub fn new(mut heads: Vec<Vec<u32>>, head_dim: usize) -> Result<Self> {
        for head in &mut heads {
            head.sort_unstable();
            head.dedup();
            if let Some(&last) = head.last() {
                if last as usize >= head_dim {
                    return Err(Error::InvalidArgument(format!(
                        "kept key channel {last} is outside the head dimension {head_dim}"
                    )));
                }
            }
        }
        Ok(Self { heads, head_dim })
    }

    /// Channels kept by the given number of heads when `pruned[h]` lists the channels head `h`
    /// drops.
    pub fn from_pruned(pruned: &[Vec<u32>], head_dim: usize) -> Result<Self> {
        let heads = pruned
            .iter()
            .map(|dropped| {
                (0..head_dim as u32)
                    .filter(|c| !dropped.contains(c))
                    .collect()
            })
            .collect();
        Self::new(heads, head_dim)
    }

    /// The head dimension the channels index.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Sorted kept channels of every head.
    pub fn heads(&self) -> &[Vec<u32>] {
        &self.heads
    }

    /// Sorted channels head `head` drops (the complement of its kept ones).
    pub fn pruned(&self, head: usize) -> Vec<u32> {
        let kept = self.heads.get(head).map_or(&[][..], Vec::as_slice);
        (0..self.head_dim as u32)
            .filter(|c| kept.binary_search(c).is_err())
            .collect()
    }

    /// The number of channels every head keeps, or `None` when heads keep different numbers.
    pub fn uniform_len(&self) -> Option<usize> {
        let first = self.heads.first().map_or(0, Vec::len);
        self.heads.iter().all(|h| h.len() == first).then_some(first)
    }

    /// The channels both keep (a channel pruned by either is pruned), head by head.
    pub fn intersect(&self, other: &KeyChannels) -> Result<KeyChannels> {
        if other.heads.len() != self.heads.len() || other.head_dim != self.head_dim {
            return Err(Error::Shape(format!(
                "cannot combine the key channels of {} heads of dimension {} with those of {} \
                 heads of dimension {}",
                self.heads.len(),
                self.head_dim,
                other.heads.len(),
                other.head_dim
            )));
        }
        let heads = self
            .heads
            .iter()
            .zip(&other.heads)
            .map(|(a, b)| a.iter().filter(|c| b.binary_search(c).is_ok()).copied())
            .map(Iterator::collect)
            .collect();
        Self::new(heads, self.head_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_pruned_are_complements() -> Result<()> {
        let channels = KeyChannels::from_pruned(&[vec![1, 3], vec![0]], 4)?;
        assert_eq!(channels.heads(), &[vec![0, 2], vec![1, 2, 3]]);
        assert_eq!(channels.pruned(0), vec![1, 3]);
        assert_eq!(channels.uniform_len(), None);
        let other = KeyChannels::new(vec![vec![2, 0], vec![3, 1]], 4)?;
        assert_eq!(
            channels.intersect(&other)?.heads(),
            &[vec![0, 2], vec![1, 3]]
        );
        assert!(KeyChannels::new(vec![vec![4]], 4).is_err());
        Ok(())
    }
}
