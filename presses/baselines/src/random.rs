//! Random scores: the baseline every method should beat. With a seed the scores are the same on
//! every call (every layer draws the same scores, as kvpress re-seeds its generator each call);
//! without one they change from call to call.

use candle_core::{Device, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The random press.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomPress {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Seed of the generator (`null`: a fresh random draw on each call). The draws are not
    /// PyTorch's, so a seed reproduces this crate's choices, not kvpress's.
    pub seed: Option<u64>,
}

impl RandomPress {
    fn check_parameters(&self) -> Result<()> {
        Ok(())
    }
}

/// Uniform scores in `[0, 1)` of shape `(batch, n_kv_heads, n_tokens)`, drawn in row-major order
/// from `StdRng` seeded with `seed`, or from the thread generator when `seed` is `None`.
pub fn random_scores(
    batch: usize,
    n_kv_heads: usize,
    n_tokens: usize,
    seed: Option<u64>,
    device: &Device,
) -> Result<Tensor> {
    let n = batch * n_kv_heads * n_tokens;
    let values: Vec<f32> = match seed {
        Some(seed) => {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..n).map(|_| rng.random::<f32>()).collect()
        }
        None => {
            let mut rng = rand::rng();
            (0..n).map(|_| rng.random::<f32>()).collect()
        }
    };
    Ok(Tensor::from_vec(
        values,
        (batch, n_kv_heads, n_tokens),
        device,
    )?)
}

impl Scorer for RandomPress {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        random_scores(
            input.batch()?,
            input.shape.n_kv_heads,
            input.n_tokens()?,
            self.seed,
            input.keys.device(),
        )
    }
}

kvpress_core::scorer_press!(RandomPress, "random");
kvpress_core::register_press!("random", "keeps random tokens (seedable baseline)", || {
    Box::new(RandomPress::default())
});
