//! [`TorchTopK`]: the uniform budget with PyTorch's choice among tied scores.
//!
//! kvpress keeps `scores.topk(n_kept)`. On the CPU, PyTorch's `topk` runs libstdc++'s
//! `std::nth_element` (or, when `64 k <= n`, `std::partial_sort`) over `(score, index)` pairs
//! compared by score alone, so which of several equal scores at the cut are kept is decided by
//! that algorithm's swaps, not by position. Presses whose scores tie by design (LagKV's ranks
//! are equal across partitions) need the same choice to keep the same tokens. This module
//! replays libstdc++'s introselect and heap select exactly (checked against `torch.topk` on
//! inputs full of ties).

use candle_core::Tensor;
use kvpress_core::press::{keep_top_per_head, n_kept, BudgetAllocator, LayerPosition, Selection};
use kvpress_core::Result;

/// A score and its token, as PyTorch's top-k queue holds them.
type Entry = (f32, u32);

/// PyTorch's comparison for the largest values: NaN first, then larger scores.
fn before(a: &Entry, b: &Entry) -> bool {
    (a.0.is_nan() && !b.0.is_nan()) || a.0 > b.0
}

/// libstdc++'s `__adjust_heap` followed by `__push_heap` on `heap`.
fn adjust_heap(heap: &mut [Entry], mut hole: usize, value: Entry) {
    let len = heap.len();
    let top = hole;
    let mut second = hole;
    while len >= 1 && second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if before(&heap[second], &heap[second - 1]) {
            second -= 1;
        }
        heap[hole] = heap[second];
        hole = second;
    }
    if len >= 2 && len.is_multiple_of(2) && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        heap[hole] = heap[second - 1];
        hole = second - 1;
    }
    while hole > top {
        let parent = (hole - 1) / 2;
        if !before(&heap[parent], &value) {
            break;
        }
        heap[hole] = heap[parent];
        hole = parent;
    }
    heap[hole] = value;
}

/// libstdc++'s `__heap_select`: the first `middle` entries become the best of `queue`.
fn heap_select(queue: &mut [Entry], middle: usize) {
    if middle >= 2 {
        for parent in (0..=(middle - 2) / 2).rev() {
            let value = queue[parent];
            adjust_heap(&mut queue[..middle], parent, value);
        }
    }
    for i in middle..queue.len() {
        if middle > 0 && before(&queue[i], &queue[0]) {
            let value = queue[i];
            queue[i] = queue[0];
            adjust_heap(&mut queue[..middle], 0, value);
        }
    }
}

/// libstdc++'s `__move_median_to_first`.
fn move_median_to_first(q: &mut [Entry], result: usize, a: usize, b: usize, c: usize) {
    let pick = if before(&q[a], &q[b]) {
        if before(&q[b], &q[c]) {
            b
        } else if before(&q[a], &q[c]) {
            c
        } else {
            a
        }
    } else if before(&q[a], &q[c]) {
        a
    } else if before(&q[b], &q[c]) {
        c
    } else {
        b
    };
    q.swap(result, pick);
}

/// libstdc++'s `__unguarded_partition` of `q[first..last]` around `q[pivot]`.
fn unguarded_partition(q: &mut [Entry], mut first: usize, mut last: usize, pivot: usize) -> usize {
    loop {
        while before(&q[first], &q[pivot]) {
            first += 1;
        }
        last -= 1;
        while before(&q[pivot], &q[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        q.swap(first, last);
        first += 1;
    }
}

/// libstdc++'s `__insertion_sort` of `q[first..last]`.
fn insertion_sort(q: &mut [Entry], first: usize, last: usize) {
    for i in first + 1..last {
        let value = q[i];
        if before(&value, &q[first]) {
            q.copy_within(first..i, first + 1);
            q[first] = value;
        } else {
            let mut j = i;
            while before(&value, &q[j - 1]) {
                q[j] = q[j - 1];
                j -= 1;
            }
            q[j] = value;
        }
    }
}

/// libstdc++'s `std::nth_element(q, q + nth, q + len)` (introselect).
fn nth_element(q: &mut [Entry], nth: usize) {
    let (mut first, mut last) = (0, q.len());
    if last < 2 {
        return;
    }
    let mut depth = 2 * (usize::BITS - 1 - last.leading_zeros());
    while last - first > 3 {
        if depth == 0 {
            heap_select(&mut q[first..last], nth + 1 - first);
            q.swap(first, nth);
            return;
        }
        depth -= 1;
        let mid = first + (last - first) / 2;
        move_median_to_first(q, first, first + 1, mid, last - 1);
        let cut = unguarded_partition(q, first + 1, last, first);
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    insertion_sort(q, first, last);
}

/// The tokens `torch.topk(row, k)` returns on the CPU, sorted by position.
pub fn torch_top_k(row: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut queue: Vec<Entry> = row
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i as u32))
        .collect();
    if k * 64 <= queue.len() {
        heap_select(&mut queue, k);
    } else {
        nth_element(&mut queue, k - 1);
    }
    let mut kept: Vec<u32> = queue[..k].iter().map(|&(_, i)| i).collect();
    kept.sort_unstable();
    kept
}

/// kvpress's uniform budget (`floor(T (1 - ratio))` per head, at least 1) with PyTorch's choice
/// among tied scores ([`torch_top_k`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TorchTopK;

impl TorchTopK {
    /// Every head of `scores` `(batch, n_kv_heads, n_tokens)` keeps what `topk(n_kept)` keeps.
    pub fn keep_top(scores: &Tensor, n_kept: usize) -> Result<Selection> {
        keep_top_per_head(scores, n_kept, torch_top_k)
    }
}

impl BudgetAllocator for TorchTopK {
    fn allocate(
        &self,
        scores: &Tensor,
        compression_ratio: f64,
        _layer: LayerPosition,
    ) -> Result<Selection> {
        let n_tokens = scores.dims().last().copied().unwrap_or(0);
        Self::keep_top(scores, n_kept(n_tokens, compression_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sorted(torch.tensor(row).topk(k).indices.tolist())` from PyTorch 2 on the CPU.
    #[test]
    fn ties_are_chosen_as_pytorch_chooses_them() {
        let row = [1.0, 0.5, 1.0, 0.5, 0.5, 1.0, 0.0, 0.5, 0.5, 1.0, 0.5, 0.5];
        assert_eq!(torch_top_k(&row, 5), vec![0, 1, 2, 5, 9]);
        let thirds: Vec<f32> = (0..200).map(|i| (i % 3) as f32).collect();
        // 66 twos, then four of the ones: 109, 187, 193, 199 (introselect's swaps).
        let mut expected: Vec<u32> = (0..200).filter(|i| i % 3 == 2).collect();
        expected.extend([109, 187, 193, 199]);
        expected.sort_unstable();
        assert_eq!(torch_top_k(&thirds, 70), expected);
        // 64 k <= n: the heap-select path.
        assert_eq!(torch_top_k(&thirds, 3), vec![2, 5, 8]);
        assert_eq!(torch_top_k(&thirds, 0), Vec::<u32>::new());
        assert_eq!(torch_top_k(&[f32::NAN, 1.0, 2.0], 1), vec![0]);
    }
}
