//! The RoPE entries of a Hugging Face `config.json`, in both layouts:
//!
//! * transformers 4: `rope_theta` at the top level and `rope_scaling` (`null`, or an object
//!   with `type`/`rope_type` and the scaling parameters);
//! * transformers 5: everything in `rope_parameters` (`rope_theta`, `rope_type`, ...).
//!
//! The resolution follows transformers 5 (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`
//! and `standardize_rope_params`): a non-empty `rope_scaling` stands for `rope_parameters`;
//! `rope_parameters.rope_theta` comes first, then the top-level `rope_theta`, then 10000;
//! `rope_type` defaults to `type`, then to `default`. Where transformers would silently pick
//! one of two different values, this crate refuses ([`Error::ConflictingConfig`]). Only plain
//! RoPE (`default`) over the whole head is implemented: any other `rope_type` (`linear`,
//! `dynamic`, `yarn`, `llama3`, `longrope`, ...) and a `partial_rotary_factor` other than 1 are
//! refused with [`Error::UnsupportedConfig`], since ignoring them would give wrong results.

use serde_json::{Map, Value};

use crate::hf_config::HfConfig;
use crate::{Error, Result};

/// `RotaryEmbeddingConfigMixin.default_theta`.
const DEFAULT_THETA: f64 = 10_000.0;

const SUPPORTED_TYPES: &str = "`default` (plain RoPE; scaled RoPE such as linear, dynamic, yarn, \
                               llama3 or longrope is not implemented)";

/// The RoPE base of `hf`, after checking that plain RoPE is what it asks for.
pub(crate) fn rope_theta(hf: &HfConfig) -> Result<f32> {
    check_partial_rotary_factor("partial_rotary_factor", hf.partial_rotary_factor.as_ref())?;
    let params = rope_params(hf)?;
    if let Some((name, map)) = params {
        check_flat(name, map)?;
        check_rope_type(name, map)?;
        let key = format!("{name}.partial_rotary_factor");
        check_partial_rotary_factor(&key, map.get("partial_rotary_factor"))?;
    }
    let top = hf.rope_theta.as_ref();
    let theta = match params.and_then(|(name, map)| Some((name, map.get("rope_theta")?))) {
        Some((name, value)) => {
            let key = format!("{name}.rope_theta");
            let theta = positive_number(&key, value)?;
            // A top-level `null` next to a nested value says nothing; a number must agree.
            if let Some(top) = top.filter(|t| !t.is_null()) {
                let top_theta = positive_number("rope_theta", top)?;
                if top_theta != theta {
                    return Err(Error::ConflictingConfig {
                        first: "rope_theta".into(),
                        second: key.clone(),
                        message: format!(
                            "{top} vs {value}; transformers 5 would use `{key}`: remove the \
                             other one or make them equal"
                        ),
                    });
                }
            }
            theta
        }
        None => match top {
            Some(value) => positive_number("rope_theta", value)?,
            None => DEFAULT_THETA,
        },
    };
    let theta = theta as f32;
    if !theta.is_finite() {
        return Err(Error::config("rope_theta", "does not fit in an f32"));
    }
    Ok(theta)
}

/// The RoPE parameter object and its name: `rope_scaling` when it is a non-empty object
/// (transformers 5 takes `rope_scaling or rope_parameters`), else `rope_parameters`.
fn rope_params(hf: &HfConfig) -> Result<Option<(&'static str, &Map<String, Value>)>> {
    let scaling = object_or_null("rope_scaling", hf.rope_scaling.as_ref())?;
    let parameters = object_or_null("rope_parameters", hf.rope_parameters.as_ref())?;
    Ok(match (scaling, parameters) {
        (Some(s), Some(p)) if s != p => {
            return Err(Error::ConflictingConfig {
                first: "rope_scaling".into(),
                second: "rope_parameters".into(),
                message: format!(
                    "{} vs {}; transformers 5 would use `rope_scaling`: keep only one of them",
                    Value::Object(s.clone()),
                    Value::Object(p.clone())
                ),
            })
        }
        (Some(s), _) => Some(("rope_scaling", s)),
        (None, Some(p)) => Some(("rope_parameters", p)),
        (None, None) => None,
    })
}

/// `Some` for a non-empty object, `None` for `null`, an absent entry or `{}`.
fn object_or_null<'a>(
    key: &str,
    value: Option<&'a Value>,
) -> Result<Option<&'a Map<String, Value>>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map).filter(|m| !m.is_empty())),
        Some(other) => Err(Error::config(
            key,
            format!("must be an object or null, not {other}"),
        )),
    }
}

/// Refuses per-layer-type RoPE parameters (`{"full_attention": {...}, ...}`), which the
/// Llama-family configs never write.
fn check_flat(name: &str, map: &Map<String, Value>) -> Result<()> {
    match map.iter().find(|(_, v)| v.is_object()) {
        Some((key, _)) => Err(Error::unsupported(
            format!("{name}.{key}"),
            "an object (RoPE parameters per layer type)",
            "one set of RoPE parameters for all layers",
        )),
        None => Ok(()),
    }
}

fn check_rope_type(name: &str, map: &Map<String, Value>) -> Result<()> {
    let Some((key, value)) = ["rope_type", "type"]
        .into_iter()
        .find_map(|key| Some((key, map.get(key)?)))
    else {
        return Ok(());
    };
    match value.as_str() {
        Some("default") => Ok(()),
        Some(kind) => Err(Error::unsupported(
            format!("{name}.{key}"),
            format!("`{kind}`"),
            SUPPORTED_TYPES,
        )),
        None => Err(Error::config(
            &format!("{name}.{key}"),
            format!("must be a string such as \"default\", not {value}"),
        )),
    }
}

fn check_partial_rotary_factor(key: &str, value: Option<&Value>) -> Result<()> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_f64() == Some(1.0) => Ok(()),
        Some(v) => Err(Error::unsupported(
            key,
            v,
            "1.0 (RoPE over the whole head dimension)",
        )),
    }
}

fn positive_number(key: &str, value: &Value) -> Result<f64> {
    match value.as_f64() {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(Error::config(
            key,
            format!("must be a positive number, not {value}"),
        )),
    }
}
