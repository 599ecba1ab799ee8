//! Leverage-family presses for kvpress-rs, ported from kvpress 0.5.5: `leverage_score`
//! (sketched leverage of the pre-RoPE keys), `non_causal_attn` (non-causal chunked attention),
//! `compactor` (their blend, Compactor) and `cur` (CurDKV). kvpress draws the Gaussian sketches
//! of `leverage_score`, `compactor` and `cur` from torch's CPU generator;
//! [`TorchGenerator`] reproduces those draws bit for bit.
#![warn(missing_docs)]

mod avx_mathfun;
mod compactor;
mod cur;
mod leverage;
mod linalg;
mod non_causal;
mod pre_rope;
pub mod torch_rng;
mod zscore;

pub use compactor::Compactor;
pub use cur::{cur_projection, Cur, LeverageType};
pub use leverage::{leverage_scores, leverage_sketch, LeverageScore};
pub use non_causal::NonCausalAttn;
pub use torch_rng::TorchGenerator;
