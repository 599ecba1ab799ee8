//! Hugging Face model folders: `config.json`, one or many `*.safetensors`, tokenizer files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::Device;

use crate::linear::Weight;
use crate::param::Param;
use crate::weights::TensorSource;
use crate::{Error, Result};

/// The safetensors files of a folder, memory-mapped.
pub(crate) struct SafetensorsFiles {
    folder: PathBuf,
    tensors: MmapedSafetensors,
    device: Device,
    /// Names of the tensors loaded so far.
    used: HashSet<String>,
}

impl SafetensorsFiles {
    /// Maps every `*.safetensors` file in `folder`.
    pub fn open(folder: &Path, device: &Device) -> Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
            .map_err(|source| Error::Io {
                path: folder.to_path_buf(),
                source,
            })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::InvalidModelFile {
                path: folder.to_path_buf(),
                message: "no *.safetensors file in this folder".into(),
            });
        }
        // SAFETY: `MmapedSafetensors::multi` maps the files read-only, which is sound as long as
        // nothing modifies or truncates them while they are mapped (as long as this
        // `SafetensorsFiles` lives). Like every memory-mapped model loader, this assumes that
        // model files are not rewritten while a process uses them; the mapping is only read
        // through candle's bounds-checked safetensors views.
        let tensors =
            unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| Error::InvalidModelFile {
                path: folder.to_path_buf(),
                message: format!(
                    "cannot read safetensors: {}",
                    kvpress_core::error::without_backtrace(e)
                ),
            })?;
        Ok(Self {
            folder: folder.to_path_buf(),
            tensors,
            device: device.clone(),
            used: HashSet::new(),
        })
    }

    /// Refuses a folder holding tensors the model did not load: its `config.json` does not
    /// describe its weights (more layers than `num_hidden_layers`, another architecture's
    /// tensors), and a model built from it would silently leave weights out. Rotary frequency
    /// buffers and the output projection of a model with tied embeddings are not weights the
    /// model reads, and may be there.
    pub fn check_all_used(&self) -> Result<()> {
        let mut unused: Vec<String> = self
            .tensors
            .tensors()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !self.used.contains(name))
            .filter(|name| !name.ends_with("rotary_emb.inv_freq") && name != "lm_head.weight")
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let count = unused.len();
        unused.truncate(5);
        Err(Error::InvalidModelFile {
            path: self.folder.clone(),
            message: format!(
                "holds {count} tensors the model described by config.json does not use (e.g. \
                 {}): config.json does not match the weights (its layer count or architecture)",
                unused.join(", ")
            ),
        })
    }
}

impl TensorSource for SafetensorsFiles {
    fn source_name(&self) -> String {
        self.folder.display().to_string()
    }

    fn tensor_name(&self, param: Param) -> String {
        param.hf_name()
    }

    fn load(&mut self, param: Param) -> Result<Option<Weight>> {
        let name = param.hf_name();
        if self.tensors.get(&name).is_err() {
            return Ok(None);
        }
        let tensor =
            self.tensors
                .load(&name, &self.device)
                .map_err(|e| Error::InvalidModelFile {
                    path: self.folder.clone(),
                    message: format!(
                        "cannot read tensor `{name}`: {}",
                        kvpress_core::error::without_backtrace(e)
                    ),
                })?;
        self.used.insert(name);
        Ok(Some(Weight::Dense(tensor)))
    }
}
