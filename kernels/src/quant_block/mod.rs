//! Decode attention's inner loops over a block of quantized rows ([`crate::kv_quant`]), read
//! as codes: nothing is dequantized into memory.
//!
//! A group of 32 channels stores `x = code * step + min`, so a query row's score against it is
//! `step * dot(q, codes) + min * sum(q)`, and a weight `p` adds `p * step * code + p * min` to
//! each output channel. The codes of each row are widened once, in registers, and used for
//! every query row of the block; the block's steps and minimums are converted from f16 once
//! ([`block_params`]). Four-bit codes hold channels `2i` and `2i + 1` in the low and high
//! nibble of byte `i`; the kernels work on a group's channels in the order `0, 2, .., 30, 1, 3,
//! .., 31` (low nibbles, then high ones), so the queries and the outputs are put into that
//! order once per block, never the codes.
//!
//! On x86-64 with AVX2, FMA and F16C the kernels of the `avx2` module run: scores from the
//! queries rounded to 16-bit integers per group ([`IntQueries`]) against codes widened to i16,
//! integer multiply-adds, four keys reduced together; weighted values from codes widened to
//! f32, up to four output rows per pass with their accumulators in registers. Elsewhere
//! portable loops over fixed-size arrays (the f32 queries).

use super::decode_attention::HeadRows;
use super::kv_quant::{QuantBits, QuantizedView, GROUP_SIZE};
use super::view::CacheData;

/// Channels per group, as the kernels require.
const G: usize = GROUP_SIZE;
/// Most query rows per block (as in [`super::decode_attention`]).
const MAX_ROWS: usize = super::decode_attention::MAX_ROWS;

/// Rows `first..first + n_rows` of a KV head stored quantized in groups of 32 channels that
/// start with each row, bounds checked.
pub(super) struct QuantBlock<'a> {
    view: QuantizedView<'a>,
    /// Element of the first row's first channel.
    first_element: usize,
    row_stride: usize,
    n_rows: usize,
    head_dim: usize,
}

impl<'a> QuantBlock<'a> {
    /// The block, or `None` when the rows are not quantized in groups of 32 that start with
    /// each row (the kernels' layout; other layouts take the dequantizing path).
    ///
    /// # Panics
    /// If the rows reach past the storage (a caller bug: the cache view is checked when it is
    /// made).
    pub(super) fn new(
        rows: &HeadRows<'a>,
        first: usize,
        n_rows: usize,
        head_dim: usize,
    ) -> Option<Self> {
        let CacheData::Quantized(view) = rows.data else {
            return None;
        };
        // Rows stored in another channel order are read whole (their order spans the row).
        let whole_rows = view.order.is_none_or(|order| order.len() == head_dim);
        let aligned = view.group == G
            && head_dim.is_multiple_of(G)
            && rows.start.is_multiple_of(G)
            && rows.row_stride.is_multiple_of(G)
            && whole_rows;
        if !aligned {
            return None;
        }
        assert!(
            rows.holds(first, n_rows, head_dim),
            "decode attention: rows out of bounds"
        );
        Some(Self {
            view,
            first_element: rows.start + first * rows.row_stride,
            row_stride: rows.row_stride,
            n_rows,
            head_dim,
        })
    }

    /// Where the kernels put a row's channels.
    fn kernel_order(&self) -> KernelOrder<'a> {
        KernelOrder {
            bits: self.view.bits,
            stored: self.view.order,
        }
    }

    fn groups_per_row(&self) -> usize {
        self.head_dim / G
    }

    /// The codes of group `g` of row `j` (32 bytes, or 16 in 4 bits); its step and minimum
    /// are read by [`block_params`].
    #[inline(always)]
    fn codes(&self, j: usize, g: usize) -> &'a [u8] {
        let element = self.first_element + j * self.row_stride + g * G;
        match self.view.bits {
            QuantBits::Eight => &self.view.codes[element..element + G],
            QuantBits::Four => &self.view.codes[element / 2..element / 2 + G / 2],
        }
    }
}

/// A group's codes widened to f32, in the kernels' channel order (see the module docs).
#[inline(always)]
fn widen(bits: QuantBits, codes: &[u8], out: &mut [f32; G]) {
    match bits {
        QuantBits::Eight => {
            let codes: &[u8; G] = codes.try_into().expect("a group holds 32 codes");
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = c as f32;
            }
        }
        QuantBits::Four => {
            let bytes: &[u8; G / 2] = codes.try_into().expect("a group holds 16 bytes");
            let (low, high) = out.split_at_mut(G / 2);
            for ((l, h), &b) in low.iter_mut().zip(high.iter_mut()).zip(bytes) {
                *l = (b & 0x0f) as f32;
                *h = (b >> 4) as f32;
            }
        }
    }
}

/// Where the kernels put a row's channels: position `g * 32 + i` of a row in the kernels' order
/// holds the stored position `g * 32 + stored_position(bits, i)`, which holds the row's channel
/// given by the stored channel order (if any).
#[derive(Clone, Copy)]
struct KernelOrder<'a> {
    bits: QuantBits,
    /// The stored channel order ([`QuantizedView::order`]), spanning a whole row.
    stored: Option<&'a [u16]>,
}

/// The stored position, within its group, of kernel position `i`: the same in 8 bits, low
/// nibbles (even positions) then high ones (odd) in 4 bits.
fn stored_position(bits: QuantBits, i: usize) -> usize {
    match bits {
        QuantBits::Eight => i,
        QuantBits::Four if i < G / 2 => 2 * i,
        QuantBits::Four => 2 * (i - G / 2) + 1,
    }
}

impl KernelOrder<'_> {
    /// Calls `f` with the row channel of every kernel position of a row of `head_dim` channels
    /// (computed once per call, on the stack up to 512 channels).
    fn with_sources<R>(&self, head_dim: usize, f: impl FnOnce(&ChannelSources<'_>) -> R) -> R {
        let mut on_stack = [0u16; 512];
        let mut on_heap = Vec::new();
        let sources = match head_dim <= on_stack.len() {
            true => &mut on_stack[..head_dim],
            false => {
                on_heap.resize(head_dim, 0);
                &mut on_heap[..]
            }
        };
        for (position, source) in sources.iter_mut().enumerate() {
            let stored = position - position % G + stored_position(self.bits, position % G);
            *source = self.stored.map_or(stored as u16, |order| order[stored]);
        }
        f(&ChannelSources(sources))
    }
}

/// The row channel each kernel position holds ([`KernelOrder::with_sources`]).
struct ChannelSources<'a>(&'a [u16]);

impl ChannelSources<'_> {
    /// Writes `rows` (of the sources' length) into `out` in the kernels' order.
    fn gather(&self, rows: &[f32], out: &mut [f32]) {
        let head_dim = self.0.len();
        for (dst, src) in out
            .chunks_exact_mut(head_dim)
            .zip(rows.chunks_exact(head_dim))
        {
            for (d, &c) in dst.iter_mut().zip(self.0) {
                *d = src[c as usize];
            }
        }
    }

    /// Writes `ordered` (rows in the kernels' order) into `rows` in channel order, adding to
    /// each channel its group's entry of `offsets` (per row, one per group).
    fn scatter(&self, ordered: &[f32], offsets: &[f32], rows: &mut [f32]) {
        let head_dim = self.0.len();
        for ((dst, src), offsets) in rows
            .chunks_exact_mut(head_dim)
            .zip(ordered.chunks_exact(head_dim))
            .zip(offsets.chunks_exact(head_dim / G))
        {
            for ((group, offset), group_sources) in
                src.chunks_exact(G).zip(offsets).zip(self.0.chunks_exact(G))
            {
                for (&value, &c) in group.iter().zip(group_sources) {
                    dst[c as usize] = value + offset;
                }
            }
        }
    }
}

/// The dot product of two groups.
#[inline(always)]
fn dot_group(a: &[f32; G], b: &[f32; G]) -> f32 {
    let mut lanes = [0f32; 8];
    for (a8, b8) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += a8[l] * b8[l];
        }
    }
    lanes.iter().sum()
}

/// Every row's group parameters as f32, `params[2 * (j * groups + g)]` the step of row `j`'s
/// group `g` and the next element its minimum (one F16C conversion pass per block, shared by
/// every query or output row).
fn block_params(block: &QuantBlock<'_>, params: &mut [f32]) {
    let groups = block.groups_per_row();
    let per_row = 2 * groups;
    if block.row_stride == block.head_dim {
        // Contiguous rows: their parameters are one range.
        let first = 2 * (block.first_element / G);
        let n = per_row * block.n_rows;
        return super::view::f16_to_f32(&block.view.params[first..first + n], &mut params[..n]);
    }
    for (j, row) in params
        .chunks_exact_mut(per_row)
        .take(block.n_rows)
        .enumerate()
    {
        let first = 2 * ((block.first_element + j * block.row_stride) / G);
        super::view::f16_to_f32(&block.view.params[first..first + per_row], row);
    }
}

/// `scores[r * stride + j] = scale * dot(queries[r], row j of the block)`, the rows read as
/// codes. `queries` holds rows of `head_dim` (at most 16); `buffer` is scratch space, reused
/// from block to block.
pub(super) fn quantized_block_scores(
    queries: &[f32],
    block: &QuantBlock<'_>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    buffer: &mut Vec<f32>,
) {
    let out = ScoresOut { scores, stride };
    block_scores_with(Kernel::Fastest, queries, block, scale, out, buffer)
}

/// Which implementation of the inner loops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// The SIMD kernels when the CPU has them, else the portable loops.
    Fastest,
    /// The portable loops (what CPUs without AVX2 run; tests compare the two).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

impl Kernel {
    /// Whether the SIMD kernels run.
    fn is_simd(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Fastest {
            return avx2::is_supported();
        }
        false
    }
}

/// Where scores go: `scores[r * stride + j]`.
struct ScoresOut<'a> {
    scores: &'a mut [f32],
    stride: usize,
}

/// [`quantized_block_scores`] with the kernel chosen.
fn block_scores_with(
    kernel: Kernel,
    queries: &[f32],
    block: &QuantBlock<'_>,
    scale: f32,
    ScoresOut { scores, stride }: ScoresOut<'_>,
    buffer: &mut Vec<f32>,
) {
    let head_dim = block.head_dim;
    let rows = queries.len() / head_dim;
    assert!(rows <= MAX_ROWS, "decode attention: too many query rows");
    assert!(
        block.n_rows == 0 || scores.len() >= (rows.max(1) - 1) * stride + block.n_rows,
        "decode attention: scores out of bounds"
    );
    let groups = block.groups_per_row();
    let n_params = 2 * groups * block.n_rows;
    buffer.resize(queries.len() + rows * groups + n_params, 0.0);
    let (ordered, rest) = buffer.split_at_mut(queries.len());
    let (sums, params) = rest.split_at_mut(rows * groups);
    block
        .kernel_order()
        .with_sources(head_dim, |sources| sources.gather(queries, ordered));
    // Per row and group, the sum of the query's channels (what the minimum multiplies).
    for (sum, group) in sums.iter_mut().zip(ordered.chunks_exact(G)) {
        *sum = group.iter().sum();
    }
    block_params(block, params);
    let simd = kernel.is_simd();
    INT_QUERIES.with_borrow_mut(|ints| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `is_simd` checked `avx2::is_supported()` (AVX2, FMA, F16C).
            unsafe { avx2::set_int_queries(ordered, ints) };
        }
        let problem = ScoreRows {
            ordered,
            sums,
            ints,
            params,
            rows,
        };
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `is_simd` checked `avx2::is_supported()`, which detected AVX2, FMA and
            // F16C, the kernel's only requirements (every slice it reads is bounds checked).
            return unsafe { avx2::scores(&problem, block, scale, scores, stride) };
        }
        scores_portable(&problem, block, scale, scores, stride);
    })
}

/// Query rows in the kernels' channel order, with their sums per group, the same rows as 16-bit
/// integers ([`IntQueries`]), and the block's group parameters as f32 ([`block_params`]).
struct ScoreRows<'a> {
    ordered: &'a [f32],
    sums: &'a [f32],
    ints: &'a IntQueries,
    params: &'a [f32],
    rows: usize,
}

/// Query rows (in the kernels' order) as 16-bit integers per group of 32 channels: `q ≈
/// scale · int` with `scale = max |q| / 32767` of the group, so a key's codes meet the query in
/// integer multiply-adds (exact up to the query's rounding, under 2e-5 of its largest channel).
#[derive(Default)]
struct IntQueries {
    ints: Vec<i16>,
    /// Per row and group.
    scales: Vec<f32>,
}

impl IntQueries {
    /// Group `g` of row `r`.
    #[inline(always)]
    fn group(&self, r: usize, g: usize, head_dim: usize) -> &[i16; G] {
        let at = r * head_dim + g * G;
        self.ints[at..at + G].try_into().expect("whole groups")
    }
}

thread_local! {
    /// Each thread's integer queries, reused from block to block.
    static INT_QUERIES: std::cell::RefCell<IntQueries> = std::cell::RefCell::default();
}

impl ScoreRows<'_> {
    /// Group `g` of row `r`, in the kernels' order.
    #[inline(always)]
    fn group(&self, r: usize, g: usize, head_dim: usize) -> &[f32; G] {
        let at = r * head_dim + g * G;
        self.ordered[at..at + G].try_into().expect("whole groups")
    }
}

fn scores_portable(
    problem: &ScoreRows<'_>,
    block: &QuantBlock<'_>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
    let mut widened = [0f32; G];
    let mut row_scores = [0f32; MAX_ROWS];
    for j in 0..block.n_rows {
        row_scores[..problem.rows].fill(0.0);
        for g in 0..groups {
            let codes = block.codes(j, g);
            let at = 2 * (j * groups + g);
            let (step, min) = (problem.params[at], problem.params[at + 1]);
            widen(bits, codes, &mut widened);
            for (r, score) in row_scores[..problem.rows].iter_mut().enumerate() {
                let q = problem.group(r, g, head_dim);
                *score += step * dot_group(q, &widened) + min * problem.sums[r * groups + g];
            }
        }
        for (r, score) in row_scores[..problem.rows].iter().enumerate() {
            scores[r * stride + j] = score * scale;
        }
    }
}

/// `outputs[r] += sum_j weights[r * stride + j] * row j of the block` for every row `r` of
/// `outputs` (rows of `head_dim`, at most 16), the rows read as codes; `buffer` is scratch
/// space, reused from block to block.
pub(super) fn quantized_block_values(
    weights: &[f32],
    stride: usize,
    block: &QuantBlock<'_>,
    outputs: &mut [f32],
    buffer: &mut Vec<f32>,
) {
    block_values_with(Kernel::Fastest, weights, stride, block, outputs, buffer)
}

/// [`quantized_block_values`] with the kernel chosen.
fn block_values_with(
    kernel: Kernel,
    weights: &[f32],
    stride: usize,
    block: &QuantBlock<'_>,
    outputs: &mut [f32],
    buffer: &mut Vec<f32>,
) {
    let head_dim = block.head_dim;
    let rows = outputs.len() / head_dim;
    assert!(rows <= MAX_ROWS, "decode attention: too many output rows");
    assert!(
        block.n_rows == 0 || weights.len() >= (rows.max(1) - 1) * stride + block.n_rows,
        "decode attention: weights out of bounds"
    );
    let groups = block.groups_per_row();
    buffer.resize(
        outputs.len() + rows * groups + 2 * groups * block.n_rows,
        0.0,
    );
    let (ordered, rest) = buffer.split_at_mut(outputs.len());
    let (offsets, params) = rest.split_at_mut(rows * groups);
    block.kernel_order().with_sources(head_dim, |sources| {
        sources.gather(outputs, ordered);
        block_params(block, params);
        offsets.fill(0.0);
        let mut sums = ValueSums {
            ordered,
            offsets,
            params,
            weights: RowWeights { weights, stride },
            rows,
        };
        accumulate_codes(kernel, block, &mut sums);
        sources.scatter(sums.ordered, sums.offsets, outputs);
    })
}

/// Output rows being accumulated: the code terms in the kernels' channel order, per row and
/// group the sum of the minimum terms, the block's group parameters as f32 ([`block_params`]),
/// and the weights.
struct ValueSums<'a> {
    ordered: &'a mut [f32],
    offsets: &'a mut [f32],
    params: &'a [f32],
    weights: RowWeights<'a>,
    rows: usize,
}

/// Row `r` weighs value `j` by `weights[r * stride + j]`.
struct RowWeights<'a> {
    weights: &'a [f32],
    stride: usize,
}

impl RowWeights<'_> {
    #[inline(always)]
    fn get(&self, r: usize, j: usize) -> f32 {
        self.weights[r * self.stride + j]
    }
}

impl ValueSums<'_> {
    /// Group `g` of output row `r`, in the kernels' order.
    #[inline(always)]
    fn group(&mut self, r: usize, g: usize, head_dim: usize) -> &mut [f32; G] {
        let at = r * head_dim + g * G;
        (&mut self.ordered[at..at + G])
            .try_into()
            .expect("whole groups")
    }
}

/// Adds every row of the block, weighted, to `sums`: the AVX2 kernel when the CPU has it.
fn accumulate_codes(kernel: Kernel, block: &QuantBlock<'_>, sums: &mut ValueSums<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel.is_simd() {
        // SAFETY: `is_simd` checked `avx2::is_supported()`, which detected AVX2, FMA and F16C,
        // the kernel's only requirements (every slice it reads or writes is bounds checked).
        return unsafe { avx2::values(block, sums) };
    }
    values_portable(block, sums);
}

fn values_portable(block: &QuantBlock<'_>, sums: &mut ValueSums<'_>) {
    let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
    let mut widened = [0f32; G];
    for j in 0..block.n_rows {
        for g in 0..groups {
            widen(bits, block.codes(j, g), &mut widened);
            let at = 2 * (j * groups + g);
            let (step, min) = (sums.params[at], sums.params[at + 1]);
            for r in 0..sums.rows {
                let p = sums.weights.get(r, j);
                if p == 0.0 {
                    continue;
                }
                sums.offsets[r * groups + g] += p * min;
                let scaled_step = p * step;
                for (o, &c) in sums.group(r, g, head_dim).iter_mut().zip(&widened) {
                    *o += scaled_step * c;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_quant::{Grouping, QuantizedRows};

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.61 + seed).sin() * 2.0) + (i % 5) as f32 * 0.1)
            .collect()
    }

    fn head_rows(store: &QuantizedRows) -> HeadRows<'_> {
        HeadRows {
            data: CacheData::Quantized(store.view()),
            start: 0,
            row_stride: store.row_len(),
        }
    }

    /// Scores and weighted sums from codes equal those over the dequantized rows, for any
    /// number of query rows (the kernels take them up to three or four at a time, keys four at a time
    /// and the rest one by one), with rows back to back or apart (a head's rows inside wider
    /// stored rows: group parameters read row by row).
    #[test]
    fn codes_give_the_dequantized_rows_results() {
        let head_dim = 64;
        // Rows of the head's width in channel order or balanced (stored permuted), and a head
        // inside wider rows.
        let layouts = [
            (64, Grouping::InOrder),
            (64, Grouping::Balanced),
            (128, Grouping::InOrder),
        ];
        for (bits, rows, (row_len, grouping)) in [QuantBits::Eight, QuantBits::Four]
            .into_iter()
            .flat_map(|bits| [1, 2, 3, 4, 6].map(|rows| (bits, rows)))
            .flat_map(|(bits, rows)| layouts.map(|layout| (bits, rows, layout)))
        {
            let mut store = QuantizedRows::with_grouping(bits, row_len, grouping).unwrap();
            store.push_rows(&data(40 * row_len, 0.3)).unwrap();
            if grouping == Grouping::Balanced {
                let order = store.order().expect("the first rows set the order");
                assert!(order.iter().enumerate().any(|(p, &c)| p != c as usize));
            }
            let mut dequantized = Vec::new();
            store.dequantize_rows(0, 40, &mut dequantized);
            let (first, n) = (5, 30);
            let block = QuantBlock::new(&head_rows(&store), first, n, head_dim).unwrap();
            let queries = data(rows * head_dim, 1.7);
            let stride = 33;
            let weights = data(rows * stride, 2.9);
            let mut want_outputs = data(rows * head_dim, 4.1);
            let results = [Kernel::Fastest, Kernel::Portable].map(|kernel| {
                let mut scores = vec![0f32; rows * stride];
                let out = ScoresOut {
                    scores: &mut scores,
                    stride,
                };
                block_scores_with(kernel, &queries, &block, 0.125, out, &mut Vec::new());
                let mut outputs = want_outputs.clone();
                let buffer = &mut Vec::new();
                block_values_with(kernel, &weights, stride, &block, &mut outputs, buffer);
                (kernel, scores, outputs)
            });
            for r in 0..rows {
                let q = &queries[r * head_dim..(r + 1) * head_dim];
                for j in 0..n {
                    let row = &dequantized[(first + j) * row_len..][..head_dim];
                    let want: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() * 0.125;
                    // The SIMD scores round the query to i16 per group: each channel moves by
                    // at most half of max |q| / 32767, times |k|.
                    let largest = q.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let rounding: f32 = row.iter().map(|k| k.abs()).sum::<f32>() * largest
                        / (2.0 * i16::MAX as f32)
                        * 0.125;
                    for (kernel, scores, _) in &results {
                        let got = scores[r * stride + j];
                        let tolerance = match kernel {
                            Kernel::Portable => 1e-4,
                            Kernel::Fastest => 1e-4 + rounding,
                        };
                        assert!(
                            (got - want).abs() < tolerance,
                            "{kernel:?} {bits:?} score {r},{j}: {got} {want}"
                        );
                    }
                    let w = weights[r * stride + j];
                    for (o, v) in want_outputs[r * head_dim..(r + 1) * head_dim]
                        .iter_mut()
                        .zip(row)
                    {
                        *o += w * v;
                    }
                }
            }
            for (kernel, _, outputs) in &results {
                for (got, want) in outputs.iter().zip(&want_outputs) {
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{kernel:?} {bits:?} output {got} {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn unaligned_layouts_take_the_dequantizing_path() {
        let store = QuantizedRows::new(QuantBits::Eight, 48).unwrap();
        assert!(QuantBlock::new(&head_rows(&store), 0, 0, 48).is_none());
    }
}
