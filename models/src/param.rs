//! Names of the parameters a decoder needs, in both naming schemes (GGUF and Hugging Face).

/// A parameter of the decoder, independent of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Token embedding `(vocab, hidden)`.
    Embedding,
    /// Final RMSNorm weight.
    FinalNorm,
    /// Output projection `(vocab, hidden)`; absent when tied to the embedding.
    LmHead,
    /// A parameter of decoder layer `.0`.
    Layer(usize, LayerParam),
}

/// A parameter inside one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum LayerParam {
    AttentionNorm,
    MlpNorm,
    QueryWeight,
    KeyWeight,
    ValueWeight,
    OutputWeight,
    QueryBias,
    KeyBias,
    ValueBias,
    QueryNorm,
    KeyNorm,
    GateWeight,
    UpWeight,
    DownWeight,
}

impl Param {
    /// The tensor name in a GGUF file.
    pub fn gguf_name(self) -> String {
        use LayerParam::*;
        match self {
            Param::Embedding => "token_embd.weight".into(),
            Param::FinalNorm => "output_norm.weight".into(),
            Param::LmHead => "output.weight".into(),
            Param::Layer(i, p) => {
                let suffix = match p {
                    AttentionNorm => "attn_norm.weight",
                    MlpNorm => "ffn_norm.weight",
                    QueryWeight => "attn_q.weight",
                    KeyWeight => "attn_k.weight",
                    ValueWeight => "attn_v.weight",
                    OutputWeight => "attn_output.weight",
                    QueryBias => "attn_q.bias",
                    KeyBias => "attn_k.bias",
                    ValueBias => "attn_v.bias",
                    QueryNorm => "attn_q_norm.weight",
                    KeyNorm => "attn_k_norm.weight",
                    GateWeight => "ffn_gate.weight",
                    UpWeight => "ffn_up.weight",
                    DownWeight => "ffn_down.weight",
                };
                format!("blk.{i}.{suffix}")
            }
        }
    }

    /// The tensor name in a Hugging Face safetensors file.
    pub fn hf_name(self) -> String {
        use LayerParam::*;
        match self {
            Param::Embedding => "model.embed_tokens.weight".into(),
            Param::FinalNorm => "model.norm.weight".into(),
            Param::LmHead => "lm_head.weight".into(),
            Param::Layer(i, p) => {
                let suffix = match p {
                    AttentionNorm => "input_layernorm.weight",
                    MlpNorm => "post_attention_layernorm.weight",
                    QueryWeight => "self_attn.q_proj.weight",
                    KeyWeight => "self_attn.k_proj.weight",
                    ValueWeight => "self_attn.v_proj.weight",
                    OutputWeight => "self_attn.o_proj.weight",
                    QueryBias => "self_attn.q_proj.bias",
                    KeyBias => "self_attn.k_proj.bias",
                    ValueBias => "self_attn.v_proj.bias",
                    QueryNorm => "self_attn.q_norm.weight",
                    KeyNorm => "self_attn.k_norm.weight",
                    GateWeight => "mlp.gate_proj.weight",
                    UpWeight => "mlp.up_proj.weight",
                    DownWeight => "mlp.down_proj.weight",
                };
                format!("model.layers.{i}.{suffix}")
            }
        }
    }
}
