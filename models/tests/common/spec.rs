//! Tiny model hyper-parameters ([`Spec`]) and their seeded random weights ([`TinyModel`]).

use candle_core::{Device, Tensor};
use kvpress_models::param::{LayerParam, Param};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::TOKENS;

/// The architectures the crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

    /// `general.architecture` / `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Hyper-parameters of a tiny model.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub arch: Arch,
    pub tie_word_embeddings: bool,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub seed: u64,
}

impl Spec {
    /// 2 layers, hidden 64, 4 query heads, 2 KV heads, MLP 128, vocab 40, 64 positions. Qwen3
    /// gets head_dim 32 (≠ 64 / 4) to exercise `attention.key_length` / `head_dim`.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            tie_word_embeddings: false,
            n_layers: 2,
            hidden: 64,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
            intermediate: 128,
            vocab: TOKENS.len(),
            context_length: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            seed: 42,
        }
    }

    pub fn tied(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Every parameter the architecture needs, with its shape and whether it is a norm weight.
    pub fn params(&self) -> Vec<(Param, Vec<usize>, bool)> {
        use LayerParam::*;
        let (h, q, kv, m) = (self.hidden, self.q_dim(), self.kv_dim(), self.intermediate);
        let mut out = vec![(Param::Embedding, vec![self.vocab, h], false)];
        for i in 0..self.n_layers {
            let l = |p| Param::Layer(i, p);
            out.push((l(AttentionNorm), vec![h], true));
            out.push((l(QueryWeight), vec![q, h], false));
            out.push((l(KeyWeight), vec![kv, h], false));
            out.push((l(ValueWeight), vec![kv, h], false));
            if self.arch == Arch::Qwen2 {
                out.push((l(QueryBias), vec![q], false));
                out.push((l(KeyBias), vec![kv], false));
                out.push((l(ValueBias), vec![kv], false));
            }
            if self.arch == Arch::Qwen3 {
                out.push((l(QueryNorm), vec![self.head_dim], true));
                out.push((l(KeyNorm), vec![self.head_dim], true));
            }
            out.push((l(OutputWeight), vec![h, q], false));
            out.push((l(MlpNorm), vec![h], true));
            out.push((l(GateWeight), vec![m, h], false));
            out.push((l(UpWeight), vec![m, h], false));
            out.push((l(DownWeight), vec![h, m], false));
        }
        out.push((Param::FinalNorm, vec![h], true));
        if !self.tie_word_embeddings {
            out.push((Param::LmHead, vec![self.vocab, h], false));
        }
        out
    }

    /// Seeded random weights in the Hugging Face layout.
    pub fn build(self) -> TinyModel {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let weights = self
            .params()
            .into_iter()
            .map(|(param, shape, is_norm)| {
                let n: usize = shape.iter().product();
                let data: Vec<f32> = (0..n)
                    .map(|_| {
                        let g = 0.1 * gaussian(&mut rng);
                        if is_norm {
                            1.0 + g
                        } else {
                            g
                        }
                    })
                    .collect();
                let tensor = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
                (param, tensor)
            })
            .collect();
        TinyModel {
            spec: self,
            weights,
        }
    }
}

/// Standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// A tiny model's hyper-parameters and weights (Hugging Face layout, f32).
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub spec: Spec,
    pub weights: Vec<(Param, Tensor)>,
}

impl TinyModel {
    /// A weight by parameter.
    pub fn weight(&self, param: Param) -> &Tensor {
        &self
            .weights
            .iter()
            .find(|(p, _)| *p == param)
            .unwrap_or_else(|| panic!("no {param:?}"))
            .1
    }
}
