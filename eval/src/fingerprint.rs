//! What decides a result row, hashed: the model's files (SHA-256), how its weights and KV cache
//! are held, the press's resolved config at its ratio, the sample's text, the setting and the
//! answer length. Rows carry the hash ([`crate::ResultRow::fingerprint`]); an output folder's
//! settings file (`eval-run.json`) names the settings its rows were made with, so that a rerun
//! with other settings is refused naming what changed ([`crate::Error::SettingsChanged`]).

use std::collections::BTreeMap;
use std::path::Path;

use kvpress_models::{LoadedModel, WeightMode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoAction, Result, SettingChange};

/// The settings file of an output folder.
pub const SETTINGS_FILE: &str = "eval-run.json";

/// Version of the settings file and of the row fingerprints.
const FORMAT: u32 = 1;

pub use kvpress_models::model_sha256;

/// SHA-256 (hex) of `text`.
pub(crate) fn sha256(text: &str) -> String {
    kvpress_models::sha256_hex(text.as_bytes())
}

/// `value` as JSON with every object's keys sorted (whatever map order serde_json keeps).
pub(crate) fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), canonical_json(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// `value` without any ratio field the grid sets ([`crate::config::is_ratio_key`]:
/// `compression_ratio`, DuoAttention's `head_compression_ratio`), at any depth (a press config
/// as the grid names it, whatever ratio it was built at).
pub(crate) fn without_ratio(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !crate::config::is_ratio_key(map, k))
                .map(|(k, v)| (k.clone(), without_ratio(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_ratio).collect()),
        other => other.clone(),
    }
}

/// The run-level identity of a grid's rows: the model's content and how it is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSettings {
    /// SHA-256 of the model's files ([`model_sha256`]).
    pub sha256: String,
    /// How the weights are held (`--dtype`): `quantized`, `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// How the KV cache is stored (`--kv-dtype`): `f32`, `f16` or `bf16`.
    pub kv_dtype: String,
}

impl ModelSettings {
    /// The settings of `model`, whose files hash to `sha256`.
    pub fn of(model: &LoadedModel, sha256: String) -> Self {
        let dtype = match model.model.weight_mode() {
            WeightMode::Quantized => "quantized".to_string(),
            WeightMode::Dense(dtype) => dtype.as_str().to_string(),
        };
        Self {
            sha256,
            dtype,
            kv_dtype: model.model.kv_storage().name().to_string(),
        }
    }

    /// The hash every row fingerprint of this model starts from.
    pub(crate) fn hash(&self) -> String {
        sha256(&format!(
            "{FORMAT}\n{}\n{}\n{}",
            self.sha256, self.dtype, self.kv_dtype
        ))
    }
}

/// The settings file of an output folder: each setting's value by name (`--model`, `--dtype`,
/// `--kv-dtype`, `seed`, `max_new_tokens`, `press NAME`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// The file's format.
    pub format: u32,
    /// Values by setting name.
    pub settings: BTreeMap<String, String>,
}

impl RunSettings {
    /// Settings of a run with `model`; add the grid's with [`Self::set`].
    pub fn new(model: &ModelSettings) -> Self {
        let mut settings = Self {
            format: FORMAT,
            settings: BTreeMap::new(),
        };
        settings.set("--model", format!("sha256:{}", model.sha256));
        settings.set("--dtype", model.dtype.clone());
        settings.set("--kv-dtype", model.kv_dtype.clone());
        settings
    }

    /// Records `setting` = `value`.
    pub fn set(&mut self, setting: &str, value: String) {
        self.settings.insert(setting.to_string(), value);
    }

    /// The settings file of `out_dir`, if there is one.
    pub fn read(out_dir: &Path) -> Result<Option<Self>> {
        let path = out_dir.join(SETTINGS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(IoAction::Read, &path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| Error::SettingsFile { path, error })
    }

    /// The settings whose values differ between `self` (a folder's) and `now` (this run's);
    /// settings only one of them has are no change.
    pub fn changes(&self, now: &Self) -> Vec<SettingChange> {
        let mut changes: Vec<SettingChange> = self
            .settings
            .iter()
            .filter_map(|(setting, was)| {
                let now = now.settings.get(setting)?;
                (now != was).then(|| SettingChange {
                    setting: setting.clone(),
                    was: was.clone(),
                    now: now.clone(),
                })
            })
            .collect();
        if self.format != now.format {
            changes.push(SettingChange {
                setting: "settings format".to_string(),
                was: self.format.to_string(),
                now: now.format.to_string(),
            });
        }
        changes
    }

    /// `self` with `now`'s settings added (a grid extended by presses keeps the old ones).
    pub fn merged(&self, now: &Self) -> Self {
        let mut merged = self.clone();
        merged.format = now.format;
        for (setting, value) in &now.settings {
            merged.settings.insert(setting.clone(), value.clone());
        }
        merged
    }

    /// Writes the settings file of `out_dir` (through a file of this process renamed over it,
    /// so that workers writing the same settings at once leave a whole file).
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        let path = out_dir.join(SETTINGS_FILE);
        let staging = out_dir.join(format!("{SETTINGS_FILE}.{}.tmp", std::process::id()));
        let text = format!("{}\n", serde_json::to_string_pretty(self)?);
        std::fs::write(&staging, text).map_err(|e| Error::io(IoAction::Write, &staging, e))?;
        std::fs::rename(&staging, &path).map_err(|e| Error::io(IoAction::Write, &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Links the presses, so that ratio fields are found by press name.
    use kvpress as _;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let value: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":0,"y":0.5}],"c":"x"}}"#).unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"c":"x","d":[{"y":0.5,"z":0}]},"b":1}"#
        );
        let ratio: Value =
            serde_json::from_str(r#"{"press":"adakv","inner":{"compression_ratio":0.5}}"#).unwrap();
        assert_eq!(
            canonical_json(&without_ratio(&ratio)),
            r#"{"inner":{},"press":"adakv"}"#
        );
        let heads: Value =
            serde_json::from_str(r#"{"press":"duo_attention","head_compression_ratio":0.25}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&without_ratio(&heads)),
            r#"{"press":"duo_attention"}"#
        );
    }

    #[test]
    fn changes_name_what_differs_and_merging_keeps_old_presses() {
        let model = ModelSettings {
            sha256: "ab".into(),
            dtype: "quantized".into(),
            kv_dtype: "f32".into(),
        };
        let mut was = RunSettings::new(&model);
        was.set("press old", "{}".into());
        let now = RunSettings::new(&ModelSettings {
            kv_dtype: "f16".into(),
            ..model
        });
        let changes = was.changes(&now);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_string(), "--kv-dtype f32; this run uses f16");
        let merged = was.merged(&now);
        assert_eq!(merged.settings["--kv-dtype"], "f16");
        assert!(merged.settings.contains_key("press old"));
    }
}
