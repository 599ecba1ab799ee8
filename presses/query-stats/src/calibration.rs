//! Collecting query statistics from a model (`kvpress calibrate-queries`): a [`QueryCollector`]
//! is the [`AttentionHook`] of forwards over calibration sequences, each from an empty cache. In
//! every layer it takes the queries of the tokens after the first `n_sink` of the sequence and
//! adds, per query head and in f64, their sum and the sum of their outer products, once as
//! pre-RoPE queries (rotated back with the model's tables: what kvpress's
//! `patch_rotary_embedding` captures, the input of `apply_rotary_pos_emb`, after Qwen3's q-norm)
//! and once as the post-RoPE queries attention uses.
//!
//! [`QueryCollector::finish`] turns the sums into what kvpress's `collect_queries` computes over
//! the concatenated queries, the mean and the covariance normalised by `N - 1` (`(XᵀX - N μμᵀ) /
//! (N - 1)`), and into one Q-Filter per KV head ([`crate::principal`], the Q-Filters recipe of
//! the authors' `make_filters.py` on the post-RoPE queries).

use candle_core::DType;
use kvpress_core::{AttentionHook, Error, ForwardPhase, LayerContext, Result, RotaryEmbedding};
use rayon::prelude::*;

use crate::error::StatsFileError;
use crate::file::{
    CalibratedTensors, CalibrationText, ModelIdentity, ModelShape, QueryStatsFile, StatsHeader,
    FORMAT_VERSION,
};
use crate::principal::principal_direction;

/// Per row (a layer's query head), the sum of vectors and the sum of their outer products, f64.
#[derive(Debug, Clone)]
pub struct MomentSums {
    d: usize,
    /// `Σ q`, `(rows, d)`.
    pub sum: Vec<f64>,
    /// `Σ q qᵀ`, `(rows, d, d)`.
    pub outer: Vec<f64>,
}

impl MomentSums {
    /// Zero sums for `rows` rows of dimension `d`.
    pub fn new(rows: usize, d: usize) -> Self {
        Self {
            d,
            sum: vec![0.0; rows * d],
            outer: vec![0.0; rows * d * d],
        }
    }

    /// Adds `vectors` `(rows, n, d)` (row-major) to rows `first_row..first_row + rows`.
    pub fn add(&mut self, first_row: usize, vectors: &[f32], n: usize) {
        let d = self.d;
        if n == 0 {
            return;
        }
        let rows = vectors.len() / (n * d);
        let sums = &mut self.sum[first_row * d..(first_row + rows) * d];
        let outers = &mut self.outer[first_row * d * d..(first_row + rows) * d * d];
        sums.par_chunks_mut(d)
            .zip(outers.par_chunks_mut(d * d))
            .zip(vectors.par_chunks(n * d))
            .for_each(|((sum, outer), x)| {
                let mut q = vec![0f64; d];
                for row in x.chunks_exact(d) {
                    q.iter_mut().zip(row).for_each(|(q, &v)| *q = f64::from(v));
                    for (i, &qi) in q.iter().enumerate() {
                        sum[i] += qi;
                        for (o, &qj) in outer[i * d..(i + 1) * d].iter_mut().zip(&q) {
                            *o += qi * qj;
                        }
                    }
                }
            });
    }
}

/// The hook collecting query statistics (see the module docs).
#[derive(Debug, Clone)]
pub struct QueryCollector {
    shape: ModelShape,
    n_sink: usize,
    pre_rope: MomentSums,
    post_rope: MomentSums,
    /// Queries added per head, per layer (equal once every forward has run all layers).
    queries_per_layer: Vec<u64>,
    n_sequences: usize,
    rope_inv_freq: Option<Vec<f32>>,
}

/// What the file records about where the statistics came from, beside the sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationSource {
    /// The model.
    pub model: ModelIdentity,
    /// The longest sequence the texts were cut into.
    pub max_tokens: usize,
    /// The texts.
    pub texts: Vec<CalibrationText>,
}

/// A finished calibration: the file to write, and how dominant each head's Q-Filter direction
/// is.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The statistics.
    pub file: QueryStatsFile,
    /// Per layer and query head `(L, H)`: the share of the post-RoPE queries' energy along the
    /// head's principal direction ([`crate::principal::Principal::share`]).
    pub principal_share: Vec<f64>,
}

impl QueryCollector {
    /// A collector for a model of `shape`, leaving out the first `n_sink` tokens of each
    /// sequence.
    pub fn new(shape: ModelShape, n_sink: usize) -> Self {
        let rows = shape.n_layers * shape.n_heads;
        Self {
            shape,
            n_sink,
            pre_rope: MomentSums::new(rows, shape.head_dim),
            post_rope: MomentSums::new(rows, shape.head_dim),
            queries_per_layer: vec![0; shape.n_layers],
            n_sequences: 0,
            rope_inv_freq: None,
        }
    }

    /// Queries collected per head so far (in the first layer).
    pub fn n_queries(&self) -> u64 {
        self.queries_per_layer.first().copied().unwrap_or(0)
    }

    /// Sequences seen so far.
    pub fn n_sequences(&self) -> usize {
        self.n_sequences
    }

    /// The sums of the pre-RoPE queries.
    pub fn pre_rope(&self) -> &MomentSums {
        &self.pre_rope
    }

    /// The sums of the post-RoPE queries.
    pub fn post_rope(&self) -> &MomentSums {
        &self.post_rope
    }

    fn check_context(&self, context: &LayerContext<'_>) -> Result<()> {
        if context.phase != ForwardPhase::Prefill || context.position_offset != 0 {
            return Err(Error::InvalidArgument(format!(
                "query calibration runs each sequence from an empty cache; layer {} got a \
                 forward at position {} (its first {} tokens would not be the sequence's sinks)",
                context.layer_idx, context.position_offset, self.n_sink
            )));
        }
        let s = self.shape;
        let found = (
            context.n_layers,
            context.shape.n_heads,
            context.shape.n_kv_heads,
            context.shape.head_dim,
        );
        if found != (s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim)
            || context.layer_idx >= s.n_layers
        {
            return Err(Error::Shape(format!(
                "query calibration set up for {s}, layer {} of a model with {} layers, {} query \
                 heads, {} KV heads, head dim {}",
                context.layer_idx, found.0, found.1, found.2, found.3
            )));
        }
        if context.rotary.head_dim() != s.head_dim {
            return Err(Error::Unsupported(format!(
                "query calibration: the rotary tables rotate {} dimensions but heads have {} \
                 (partial rotary embeddings are not supported)",
                context.rotary.head_dim(),
                s.head_dim
            )));
        }
        Ok(())
    }

    /// Turns the sums into the statistics file (`path` for messages) and the principal shares.
    pub fn finish(
        self,
        path: &std::path::Path,
        source: CalibrationSource,
    ) -> std::result::Result<Calibration, StatsFileError> {
        let n = self.n_queries();
        if self.queries_per_layer.iter().any(|&q| q != n) {
            return Err(StatsFileError::Calibration(format!(
                "layers collected different numbers of queries ({:?}): a forward stopped midway",
                self.queries_per_layer
            )));
        }
        if n < 2 {
            return Err(StatsFileError::Calibration(format!(
                "{n} queries per head were collected; a covariance needs at least 2: give more \
                 text, or sequences longer than n_sink = {} tokens",
                self.n_sink
            )));
        }
        let rope_inv_freq = self.rope_inv_freq.clone().unwrap_or_default();
        let s = self.shape;
        let d = s.head_dim;
        for (name, sums) in [("pre-RoPE", &self.pre_rope), ("post-RoPE", &self.post_rope)] {
            if let Some(i) = sums
                .sum
                .iter()
                .chain(&sums.outer)
                .position(|x| !x.is_finite())
            {
                let row = if i < sums.sum.len() {
                    i / d
                } else {
                    (i - sums.sum.len()) / (d * d)
                };
                return Err(StatsFileError::Calibration(format!(
                    "the model produced non-finite {name} queries (layer {}, head {})",
                    row / s.n_heads,
                    row % s.n_heads
                )));
            }
        }
        let count = n as f64;
        let mean: Vec<f64> = self.pre_rope.sum.iter().map(|x| x / count).collect();
        let mut covariance = vec![0f32; self.pre_rope.outer.len()];
        for ((cov, outer), mu) in covariance
            .chunks_exact_mut(d * d)
            .zip(self.pre_rope.outer.chunks_exact(d * d))
            .zip(mean.chunks_exact(d))
        {
            for i in 0..d {
                for j in 0..d {
                    let centred = outer[i * d + j] - count * mu[i] * mu[j];
                    cov[i * d + j] = (centred / (count - 1.0)) as f32;
                }
            }
        }
        let (filters, principal_share) = q_filters(&self.post_rope, s);
        let header = StatsHeader {
            format_version: FORMAT_VERSION,
            model: source.model,
            shape: s,
            n_sink: self.n_sink,
            max_tokens: source.max_tokens,
            n_sequences: self.n_sequences,
            n_queries: n,
            texts: source.texts,
            tensor_sha256: Default::default(),
        };
        let file = QueryStatsFile::calibrated(
            path,
            header,
            CalibratedTensors {
                query_mean: mean.iter().map(|&x| x as f32).collect(),
                query_cov: covariance,
                q_filters: filters,
                rope_inv_freq,
            },
        )?;
        Ok(Calibration {
            file,
            principal_share,
        })
    }
}

/// One Q-Filter per KV head `(L, H_kv, d)` from the post-RoPE sums, and each query head's
/// principal share `(L, H)`. As the Q-Filters authors' `make_filters.py` does: per query head,
/// the first right singular vector `u` of its stacked queries, oriented towards the queries
/// (here by their mean; the script by the majority of their projections' signs), stored negated
/// (`-u`, so that kvpress's score `-(filter · k)` is `⟨u, k⟩`), and averaged over the query
/// heads of each KV head's group (the filter scores that group's shared keys).
fn q_filters(post_rope: &MomentSums, s: ModelShape) -> (Vec<f32>, Vec<f64>) {
    let d = s.head_dim;
    let principals: Vec<_> = (0..s.n_layers * s.n_heads)
        .into_par_iter()
        .map(|row| {
            principal_direction(
                &post_rope.outer[row * d * d..(row + 1) * d * d],
                &post_rope.sum[row * d..(row + 1) * d],
            )
        })
        .collect();
    let group = s.n_heads / s.n_kv_heads.max(1);
    let mut filters = vec![0f32; s.n_layers * s.n_kv_heads * d];
    for (kv_row, filter) in filters.chunks_exact_mut(d).enumerate() {
        let (layer, kv_head) = (kv_row / s.n_kv_heads, kv_row % s.n_kv_heads);
        for (i, f) in filter.iter_mut().enumerate() {
            let total: f64 = (0..group)
                .map(|g| -principals[layer * s.n_heads + kv_head * group + g].direction[i])
                .sum();
            *f = (total / group as f64) as f32;
        }
    }
    (filters, principals.iter().map(|p| p.share).collect())
}

impl AttentionHook for QueryCollector {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> Result<()> {
        self.check_context(context)?;
        let (batch, n_heads, n_new, d) = context.queries.dims4()?;
        match &self.rope_inv_freq {
            None => self.rope_inv_freq = Some(context.rotary.inv_freq().to_vec()),
            Some(known) if known.as_slice() != context.rotary.inv_freq() => {
                return Err(Error::InvalidArgument(format!(
                    "query calibration: layer {} has other RoPE frequencies than layer 0",
                    context.layer_idx
                )))
            }
            Some(_) => {}
        }
        if context.layer_idx == 0 {
            self.n_sequences += batch;
        }
        if n_new <= self.n_sink {
            return Ok(());
        }
        let n = n_new - self.n_sink;
        let post = context
            .queries
            .narrow(2, self.n_sink, n)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        // The inverse rotation: q cos + rotate_half(q) (-sin).
        let (cos, sin) = context.rotary.tables_for_range(
            context.position_offset + self.n_sink,
            n,
            DType::F32,
        )?;
        let pre = RotaryEmbedding::apply(&post, &cos, &sin.neg()?)?;
        let post = post.flatten_all()?.to_vec1::<f32>()?;
        let pre = pre.flatten_all()?.to_vec1::<f32>()?;
        let first_row = context.layer_idx * n_heads;
        let per_sequence = n_heads * n * d;
        for b in 0..batch {
            let range = b * per_sequence..(b + 1) * per_sequence;
            self.pre_rope.add(first_row, &pre[range.clone()], n);
            self.post_rope.add(first_row, &post[range], n);
        }
        self.queries_per_layer[context.layer_idx] += (batch * n) as u64;
        Ok(())
    }
}
