//! [`Block`]: block-wise iterative top-k (KeyDiff's block processing).

use candle_core::{DType, Tensor};
use kvpress_core::press::{
    n_kept, score_rows, Compression, LayerNote, NoteScope, Press, PressInput, Scorer, Selection,
};
use kvpress_core::{Error, Result};
use presses_ops::torch_top_k;
use serde::{Deserialize, Serialize};

use crate::scoring::{check_scoring_inner, scorer_of};

/// kvpress's `BlockPress` (the block processing of KeyDiff,
/// [arXiv:2504.15364](https://arxiv.org/abs/2504.15364)): each head starts with the first
/// `n_kept = max(1, floor(T (1 - ratio)))` tokens; then, block after block of `block_size` tokens,
/// the scoring press `inner` scores the tokens kept so far plus the block, and the best `n_kept`
/// stay. Like kvpress, this simulates chunked prefill on one prefill's keys and values.
///
/// What the scorer sees of an iteration: the candidates' keys and values (kept tokens in the
/// order of the previous top-k, then the block), and as queries and hidden states those of the
/// block's tokens, the last of the candidates, at their positions. kvpress instead hands the
/// scorer the candidates' hidden states gathered head by head from a `(tokens, kv_heads,
/// hidden / kv_heads)` view, which mixes hidden-state channels of different tokens; the two agree
/// for scorers that read only keys and values (KeyDiff, the paper's setting; Knorm; LagKV).
/// Window scorers (SnapKV) need blocks at least as long as their window.
///
/// The per-token scores of one decision do not exist: the compression reports no `scores` and
/// instead a note `scores` (the recorded layers) listing every iteration's candidates and scores,
/// as kvpress's reference fixtures record them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// The scoring press run on every block.
    pub inner: Box<dyn Press>,
    /// Tokens added per iteration.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
}

fn default_block_size() -> usize {
    128
}

/// One iteration of [`Block`], for batch element 0: per KV head, the candidate token indices (in
/// the order the scorer saw them) and their scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockIteration {
    /// `[kv_head][i]`: the tokens scored.
    pub candidates: Vec<Vec<u32>>,
    /// `[kv_head][i]`: their scores.
    pub scores: Vec<Vec<f32>>,
}

/// The `k` best of `scores`, best first, as positions in `scores`: the set `torch.topk` keeps
/// (its choice among tied scores), ordered by decreasing score (ties, and NaN, which PyTorch
/// puts first, by position).
fn top_k_by_score(scores: &[f32], k: usize) -> Vec<usize> {
    let key = |v: f32| if v.is_nan() { f32::INFINITY } else { v };
    let mut best: Vec<usize> = torch_top_k(scores, k)
        .into_iter()
        .map(|i| i as usize)
        .collect();
    best.sort_by(|&a, &b| key(scores[b]).total_cmp(&key(scores[a])).then(a.cmp(&b)));
    best
}

/// Rows `candidates[head]` of every head of `data` `(heads, n_tokens, dim)`, as a tensor
/// `(batch, n_kv_heads, n_candidates, dim)`.
fn gather_rows(
    data: &[f32],
    candidates: &[Vec<u32>],
    (batch, n_kv_heads, n_tokens, dim): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let n = candidates.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(candidates.len() * n * dim);
    for (head, rows) in candidates.iter().enumerate() {
        let base = head * n_tokens * dim;
        for &row in rows {
            let start = base + row as usize * dim;
            out.extend_from_slice(&data[start..start + dim]);
        }
    }
    Ok(Tensor::from_vec(
        out,
        (batch, n_kv_heads, n, dim),
        &candle_core::Device::Cpu,
    )?)
}

/// Every element of `tensor` as f32, in row-major order, on the host.
fn host_f32(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl Block {
    /// The blocks' iterations at `ratio`: the final kept tokens per head and every iteration.
    fn iterate(
        &self,
        input: &PressInput<'_>,
        ratio: f64,
    ) -> Result<(Vec<Vec<u32>>, Vec<BlockIteration>)> {
        let scorer = scorer_of("block", self.inner.as_ref())?;
        let dims = input.keys.dims4()?;
        let (batch, n_kv_heads, n_tokens, _) = dims;
        if input.front_padding.is_some() || input.n_queries()? != n_tokens {
            return Err(Error::Unsupported(
                "block: needs a prefill (the queries of every cached token, no padding)"
                    .to_string(),
            ));
        }
        let block = self.block_size.min(n_tokens).max(1);
        let keep = n_kept(n_tokens, ratio);
        let device = input.keys.device();
        let (keys, values) = (host_f32(input.keys)?, host_f32(input.values)?);
        let mut kept: Vec<Vec<u32>> = vec![(0..keep as u32).collect(); batch * n_kv_heads];
        let mut iterations = Vec::new();
        for start in (keep..n_tokens).step_by(block) {
            let end = (start + block).min(n_tokens);
            let candidates: Vec<Vec<u32>> = kept
                .iter()
                .map(|k| k.iter().copied().chain(start as u32..end as u32).collect())
                .collect();
            let cand_keys = gather_rows(&keys, &candidates, dims)?.to_device(device)?;
            let cand_values = gather_rows(&values, &candidates, dims)?.to_device(device)?;
            let hidden_states = input.hidden_states.narrow(1, start, end - start)?;
            let queries = input.queries.narrow(2, start, end - start)?;
            let scored = PressInput {
                keys: &cand_keys,
                values: &cand_values,
                hidden_states: &hidden_states,
                queries: &queries,
                query_position: input.query_position + start,
                attention_weights: None,
                front_padding: None,
                question_tokens: 0,
                attention_history: None,
                ..*input
            };
            let (rows, _, _) = score_rows(&scorer.score(&scored, ratio)?)?;
            if rows.len() != candidates.len() || rows.iter().any(|r| r.len() != candidates[0].len())
            {
                return Err(Error::Shape(
                    "block: the inner scorer returned scores of another shape than its keys"
                        .to_string(),
                ));
            }
            kept = candidates
                .iter()
                .zip(&rows)
                .map(|(c, s)| top_k_by_score(s, keep).into_iter().map(|i| c[i]).collect())
                .collect();
            iterations.push(BlockIteration {
                candidates: candidates[..n_kv_heads].to_vec(),
                scores: rows[..n_kv_heads].to_vec(),
            });
        }
        Ok((kept, iterations))
    }
}

#[typetag::serde(name = "block")]
impl Press for Block {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        check_scoring_inner("block", self.inner.as_ref())?;
        if self.block_size == 0 {
            return Err(Error::InvalidArgument(
                "block: block_size must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        self.inner.scorer()
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        if ratio == 0.0 {
            return Compression::keep_all(input);
        }
        let (kept, iterations) = self.iterate(input, ratio)?;
        let selection = Selection::new(
            kept,
            input.batch()?,
            input.shape.n_kv_heads,
            input.n_tokens()?,
        )?;
        let note = LayerNote {
            name: "scores",
            scope: NoteScope::RecordedLayers,
            value: serde_json::to_value(&iterations)
                .map_err(|e| Error::InvalidArgument(format!("block: {e}")))?,
        };
        Ok(Compression::select(selection, None).with_note(note))
    }
}

kvpress_core::register_press!(
    "block",
    "keeps the best tokens of each block together with those kept so far, block after block (KeyDiff's block processing)",
    || Box::new(Block {
        inner: Box::new(kvpress_core::NoPress::default()),
        block_size: default_block_size(),
    })
);
