//! KVzap for kvpress-rs (kvpress 0.5.5's `KVzapPress`): a small surrogate per layer predicts,
//! from each token's attention input (its normalised hidden state), the log of the KVzip+ score
//! KVzip would give it in each KV head, at the cost of one tiny matrix product instead of a
//! second prefill. kvpress downloads surrogates trained by NVIDIA for a few large models; here
//! `kvpress train-kvzap` fits them for the loaded model on local text ([`targets`], [`fit`]) and
//! writes both (linear and MLP) to one file ([`surrogate`]); the press reads it (`kvzap_file`)
//! and uses the one `model_type` names. As in kvpress it is meant to sit inside `dms` (a
//! threshold on the predicted log scores, in the prefill and while decoding), and as any scorer it
//! also runs at a ratio.
//!
//! ```no_run
//! use kvpress_core::press::press_from_toml;
//! use presses_kvzap as _;
//! let press = press_from_toml(
//!     "press = \"dms\"\nthreshold = -6.0\n[inner]\npress = \"kvzap\"\nkvzap_file = \"kvzap.safetensors\"\n",
//! )
//! .unwrap();
//! ```
#![warn(missing_docs)]

pub mod fit;
pub mod surrogate;
pub mod targets;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Tensor;
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub use surrogate::{SurrogateHeader, SurrogateKind, Surrogates};

fn default_kind() -> SurrogateKind {
    SurrogateKind::Mlp
}

/// KVzap: tokens scored by a surrogate of KVzip+ trained for the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kvzap {
    /// Fraction of tokens removed when run at a ratio (inside `dms` the threshold decides).
    #[serde(default)]
    pub compression_ratio: f64,
    /// Which surrogate scores: `mlp` (kvpress's default) or `linear`.
    #[serde(default = "default_kind")]
    pub model_type: SurrogateKind,
    /// The surrogate file (`kvpress train-kvzap --out`).
    pub kvzap_file: PathBuf,
    /// The file's surrogates, once read (not part of the config).
    #[serde(skip)]
    surrogates: OnceLock<Surrogates>,
}

impl Default for Kvzap {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            model_type: SurrogateKind::Mlp,
            kvzap_file: PathBuf::new(),
            surrogates: OnceLock::new(),
        }
    }
}

impl Kvzap {
    /// The surrogates of `kvzap_file`, read and checked on the first use by this press (a
    /// compression scores every layer, and while decoding every token, with them).
    fn surrogates(&self) -> Result<&Surrogates> {
        if let Some(surrogates) = self.surrogates.get() {
            return Ok(surrogates);
        }
        let read = Surrogates::read(&self.kvzap_file)?;
        Ok(self.surrogates.get_or_init(|| read))
    }

    fn check_parameters(&self) -> Result<()> {
        if self.kvzap_file.as_os_str().is_empty() {
            return Err(Error::InvalidArgument(
                "kvzap: kvzap_file is required (kvpress downloads surrogates for a few large \
                 models; make one for this model with `kvpress train-kvzap --text FILE... --out \
                 kvzap.safetensors`)"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

impl Scorer for Kvzap {
    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        let surrogates = self.surrogates()?;
        let header = &surrogates.header;
        let hidden = input.hidden_states.dim(2)?;
        if (header.n_layers, header.hidden_size, header.n_kv_heads)
            != (input.n_layers, hidden, input.shape.n_kv_heads)
        {
            return Err(Error::InvalidArgument(format!(
                "kvzap: {} was trained on {} ({} layers, hidden size {}, {} KV heads); this \
                 model has {} layers, hidden size {hidden}, {} KV heads: train one for it with \
                 `kvpress train-kvzap`",
                self.kvzap_file.display(),
                header.model_name,
                header.n_layers,
                header.hidden_size,
                header.n_kv_heads,
                input.n_layers,
                input.shape.n_kv_heads
            )));
        }
        // The surrogate scores the tokens it sees (the forward's); a cache holding more (a
        // prefill is the whole cache) needs no more.
        let n = input.n_tokens()?;
        let scores = surrogates.predict(self.model_type, input.layer_idx, input.hidden_states)?;
        if scores.dim(2)? != n {
            return Err(Error::Shape(format!(
                "kvzap scores the tokens whose hidden states it sees ({}), and the cache holds \
                 {n}: it scores a prefill, or new tokens inside dms",
                scores.dim(2)?
            )));
        }
        Ok(scores)
    }
}

kvpress_core::scorer_press!(Kvzap, "kvzap");

kvpress_core::register_press!(
    "kvzap",
    "tokens scored by a small surrogate of KVzip+ trained for the model (KVzap; kvzap_file from `kvpress train-kvzap`), usually inside dms",
    || Box::new(Kvzap::default())
);
