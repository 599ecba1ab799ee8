//! SimLayerKV ([arXiv:2410.13846](https://arxiv.org/abs/2410.13846)) as kvpress's
//! `SimLayerKVPress` computes it: a layer is *lazy* when its last `n_last` queries put more than
//! `lazy_threshold` of their attention on the first `n_initial` tokens and the `n_recent` tokens
//! before them; a lazy layer keeps only those, the others keep everything. Layers therefore end
//! with caches of different lengths, and the compression ratio is the press's outcome, not a
//! setting.

use kvpress_core::press::{
    Compression, LayerNote, NoteScope, Press, PressDescription, PressInput, RatioControl, Selection,
};
use kvpress_core::{Error, Result};
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// The SimLayerKV press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimLayerKv {
    /// A layer is lazy when its attention share on the initial and recent tokens is above this,
    /// in `[0, 1]`; 1 never compresses (kvpress's default). kvpress recommends 0.9 for Llama 3,
    /// 0.65 for Llama 2, 0.8 for Mistral, 0.85 for Qwen.
    pub lazy_threshold: f64,
    /// Last queries whose attention decides (at least 1).
    pub n_last: usize,
    /// Recent tokens a lazy layer keeps, counting the `n_last` queries' own (more than
    /// `n_last`): it keeps the last `n_recent - n_last`.
    pub n_recent: usize,
    /// Initial tokens (attention sinks) a lazy layer keeps.
    pub n_initial: usize,
}

impl Default for SimLayerKv {
    fn default() -> Self {
        Self {
            lazy_threshold: 1.0,
            n_last: 1,
            n_recent: 1024,
            n_initial: 4,
        }
    }
}

/// The note names of kvpress's reference fixtures.
const LAZY_LAYERS: &str = "lazy_layers";
const LAZY_SCORES: &str = "lazy_scores";

impl SimLayerKv {
    /// The attention share of the last `n_last` queries (mean over batch, query heads and those
    /// queries, their own columns dropped as in kvpress) on the first `n_initial` tokens plus the
    /// last `n_recent` of the others.
    pub fn lazy_score(&self, input: &PressInput<'_>) -> Result<f32> {
        let weights = ops::window_attention_mean(input, self.n_last)?;
        let (batch, n_heads, n) = weights.dims3()?;
        let rows = weights.reshape((batch * n_heads, n))?.to_vec2::<f32>()?;
        let mut mean = vec![0f32; n];
        for row in &rows {
            mean.iter_mut().zip(row).for_each(|(m, &w)| *m += w);
        }
        mean.iter_mut().for_each(|m| *m /= rows.len() as f32);
        let initial: f32 = mean[..self.n_initial.min(n)].iter().sum();
        let recent: f32 = mean[n.saturating_sub(self.n_recent)..].iter().sum();
        Ok(initial + recent)
    }

    /// What one layer keeps: everything, or for a lazy layer the initial tokens and the last
    /// `n_recent - n_last`; with the layer's notes (lazy or not, and its score when evaluated).
    fn decide(&self, input: &PressInput<'_>) -> Result<Compression> {
        let n_tokens = input.n_tokens()?;
        let (batch, n_kv_heads) = (input.batch()?, input.shape.n_kv_heads);
        let evaluated =
            self.lazy_threshold < 1.0 && n_tokens > self.n_initial + self.n_recent + self.n_last;
        let score = if evaluated {
            Some(self.lazy_score(input)?)
        } else {
            None
        };
        let lazy = score.is_some_and(|s| s as f64 > self.lazy_threshold);
        let selection = if lazy {
            let recent_start = n_tokens - (self.n_recent - self.n_last);
            let kept: Vec<u32> = (0..self.n_initial as u32)
                .chain(recent_start as u32..n_tokens as u32)
                .collect();
            Selection::new(vec![kept; batch * n_kv_heads], batch, n_kv_heads, n_tokens)?
        } else {
            Selection::all(batch, n_kv_heads, n_tokens)
        };
        Ok(Compression::select(selection, None)
            .with_note(LayerNote {
                name: LAZY_LAYERS,
                scope: NoteScope::EveryLayer,
                value: serde_json::Value::Bool(lazy),
            })
            .with_note(LayerNote {
                name: LAZY_SCORES,
                scope: NoteScope::EveryLayer,
                value: score.map_or(serde_json::Value::Null, |s| serde_json::json!(s)),
            }))
    }
}

#[typetag::serde(name = "simlayerkv")]
impl Press for SimLayerKv {
    /// The nominal ratio is 0: what SimLayerKV removes depends on which layers turn out lazy.
    fn compression_ratio(&self) -> f64 {
        0.0
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.lazy_threshold) {
            return Err(Error::InvalidArgument(format!(
                "simlayerkv: lazy_threshold {} is outside [0, 1] (1 never compresses)",
                self.lazy_threshold
            )));
        }
        if self.n_last == 0 {
            return Err(Error::InvalidArgument(
                "simlayerkv: n_last must be at least 1".to_string(),
            ));
        }
        if self.n_recent <= self.n_last {
            return Err(Error::InvalidArgument(format!(
                "simlayerkv: n_recent ({}) must be greater than n_last ({}): a lazy layer keeps \
                 the last n_recent - n_last tokens",
                self.n_recent, self.n_last
            )));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            ratio: RatioControl::OwnedByPress,
            compresses_prefill: self.lazy_threshold < 1.0,
            ..PressDescription::defaults_for(self)
        }
    }

    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        self.decide(input)
    }

    fn compress_at_ratio(&self, _input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Err(Error::Unsupported(
            "simlayerkv decides per layer how much to keep (lazy layers); it cannot run at a \
             given compression ratio"
                .to_string(),
        ))
    }
}

kvpress_core::register_press!(
    "simlayerkv",
    "lazy layers (attention concentrated on initial and recent tokens) keep only those (SimLayerKV)",
    || Box::new(SimLayerKv::default())
);
