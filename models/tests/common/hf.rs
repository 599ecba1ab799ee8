//! Tiny models written as Hugging Face folders (config.json, tokenizer.json, safetensors).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use tempfile::TempDir;

use super::{write_tokenizer_json, TinyModel, BOS_ID, EOS_ID};

impl TinyModel {
    /// The weights under their Hugging Face names.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        self.weights
            .iter()
            .map(|(p, t)| (p.hf_name(), t.clone()))
            .collect()
    }

    /// `config.json` of this model.
    pub fn hf_config(&self) -> serde_json::Value {
        let s = &self.spec;
        serde_json::json!({
            "architectures": ["TinyForCausalLM"],
            "model_type": s.arch.name(),
            "vocab_size": s.vocab,
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.n_layers,
            "num_attention_heads": s.n_heads,
            "num_key_value_heads": s.n_kv_heads,
            "head_dim": s.head_dim,
            "rms_norm_eps": s.rms_norm_eps,
            "rope_theta": s.rope_theta,
            "max_position_embeddings": s.context_length,
            "tie_word_embeddings": s.tie_word_embeddings,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "torch_dtype": "float32",
        })
    }

    /// A Hugging Face folder: config.json, tokenizer.json, and the weights in `n_files`
    /// safetensors files (layers spread across files).
    pub fn hf_folder(&self, n_files: usize) -> TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        self.write_hf_folder(dir.path(), n_files);
        dir
    }

    /// Writes the Hugging Face files into an existing folder.
    pub fn write_hf_folder(&self, dir: &Path, n_files: usize) {
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.hf_config()).unwrap(),
        )
        .unwrap();
        write_tokenizer_json(&dir.join("tokenizer.json"));
        let tensors = self.hf_tensors();
        let n_files = n_files.max(1);
        let mut files: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); n_files];
        for (i, (name, tensor)) in tensors.into_iter().enumerate() {
            files[i * n_files / self.weights.len()].insert(name, tensor);
        }
        for (i, file) in files.iter().enumerate() {
            let name = if n_files == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n_files)
            };
            candle_core::safetensors::save(file, dir.join(name)).unwrap();
        }
    }
}
