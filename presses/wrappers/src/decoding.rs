//! Decode-time compression: [`Decoding`], [`CompressionRatioDecoding`] and [`PrefillDecoding`].

use kvpress_core::press::{
    Compression, DecodingSchedule, DecodingTarget, Press, PressDescription, PressInput,
    RatioControl,
};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

pub(crate) fn default_interval() -> usize {
    512
}

pub(crate) fn default_target_size() -> usize {
    2048
}

pub(crate) fn default_buffer_size() -> usize {
    256
}

/// Checks that `inner` can decide what a decode-time compression keeps: it runs at the ratio the
/// schedule sets, from the queries of recent tokens alone (no attention weights), keeps the
/// cached keys, and has no schedule of its own (kvpress: a `ScorerPress` or `AdaKVPress`).
pub(crate) fn check_inner(press: &str, inner: &dyn Press) -> Result<()> {
    inner.validate()?;
    let description = inner.describe();
    let why = if description.compresses_while_decoding {
        Some("it compresses while decoding itself (one schedule at a time)")
    } else if description.ratio != RatioControl::Settable {
        Some("it cannot run at the ratio the schedule sets (it sets its own, or keeps everything)")
    } else if description.needs_attention_weights {
        Some("it needs attention weights, which decoding steps do not compute")
    } else if description.rerotates_keys {
        Some("it re-rotates keys, which would move the positions of the tokens being generated")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidArgument(format!(
            "{press}: the inner press `{}` cannot compress while decoding: {why}; use a scoring \
             press such as knorm, snapkv or expected_attention (or adakv around one)",
            kvpress_core::press::press_name(inner)
        ))),
        None => Ok(()),
    }
}

pub(crate) fn check_schedule(press: &str, interval: usize, buffer: usize) -> Result<()> {
    if interval == 0 || buffer == 0 {
        return Err(Error::InvalidArgument(format!(
            "{press}: compression_interval and hidden_states_buffer_size must be at least 1"
        )));
    }
    Ok(())
}

/// Compresses while generating (kvpress's `DecodingPress`): every `compression_interval`
/// forwards (the question's, then one per generated token), each layer's cache goes back to
/// `target_size` tokens with `inner` (any press: uniform or head-wise), which scores with the
/// last `hidden_states_buffer_size` forwards' tokens.
/// The context's prefill is not compressed. Positions keep counting tokens seen.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoding {
    /// The press that chooses what to keep; its own ratio is replaced by the one reaching the
    /// target.
    pub inner: Box<dyn Press>,
    /// Forwards between compressions (the question's forward, then one per generated token).
    #[serde(default = "default_interval")]
    pub compression_interval: usize,
    /// Tokens each head keeps after a compression.
    #[serde(default = "default_target_size")]
    pub target_size: usize,
    /// Recent forwards whose tokens' queries and hidden states the scorer sees.
    #[serde(default = "default_buffer_size")]
    pub hidden_states_buffer_size: usize,
}

#[typetag::serde(name = "decoding")]
impl Press for Decoding {
    fn compression_ratio(&self) -> f64 {
        0.0
    }

    fn validate(&self) -> Result<()> {
        check_inner("decoding", self.inner.as_ref())?;
        check_schedule(
            "decoding",
            self.compression_interval,
            self.hidden_states_buffer_size,
        )?;
        if self.target_size == 0 {
            return Err(Error::InvalidArgument(
                "decoding: target_size must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    fn decoding(&self) -> Option<DecodingSchedule<'_>> {
        Some(DecodingSchedule {
            press: self.inner.as_ref(),
            compression_interval: self.compression_interval,
            target: DecodingTarget::Tokens(self.target_size),
            buffer_size: self.hidden_states_buffer_size,
            tracks_attention: false,
        })
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.inner.new_layer_cache()
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Compression::keep_all(input)
    }
}

fn default_target_ratio() -> f64 {
    0.5
}

/// Like [`Decoding`], with a target that follows the tokens seen: each compression keeps
/// `floor(seen * (1 - target_compression_ratio))` tokens (kvpress's
/// `CompressionRatioDecodingPress`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionRatioDecoding {
    /// The press that chooses what to keep.
    pub inner: Box<dyn Press>,
    /// Fraction of the tokens seen that is removed, in `[0, 1)`.
    #[serde(default = "default_target_ratio")]
    pub target_compression_ratio: f64,
    /// Forwards between compressions (the question's forward, then one per generated token).
    #[serde(default = "default_interval")]
    pub compression_interval: usize,
    /// Recent forwards whose tokens' queries and hidden states the scorer sees.
    #[serde(default = "default_buffer_size")]
    pub hidden_states_buffer_size: usize,
}

#[typetag::serde(name = "compression_ratio_decoding")]
impl Press for CompressionRatioDecoding {
    fn compression_ratio(&self) -> f64 {
        0.0
    }

    fn validate(&self) -> Result<()> {
        check_inner("compression_ratio_decoding", self.inner.as_ref())?;
        kvpress_core::press::check_compression_ratio(
            "compression_ratio_decoding (target_compression_ratio)",
            self.target_compression_ratio,
        )?;
        check_schedule(
            "compression_ratio_decoding",
            self.compression_interval,
            self.hidden_states_buffer_size,
        )
    }

    fn decoding(&self) -> Option<DecodingSchedule<'_>> {
        Some(DecodingSchedule {
            press: self.inner.as_ref(),
            compression_interval: self.compression_interval,
            target: DecodingTarget::CompressionRatio(self.target_compression_ratio),
            buffer_size: self.hidden_states_buffer_size,
            tracks_attention: false,
        })
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.inner.new_layer_cache()
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Compression::keep_all(input)
    }
}

/// One press for the context's prefill and another while generating (kvpress's
/// `PrefillDecodingPress`); either may be absent.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefillDecoding {
    /// Compresses the context after its prefill.
    #[serde(default)]
    pub prefilling: Option<Box<dyn Press>>,
    /// A decode-time press (`decoding` or `compression_ratio_decoding`).
    #[serde(default)]
    pub decoding: Option<Box<dyn Press>>,
}

#[typetag::serde(name = "prefill_decoding")]
impl Press for PrefillDecoding {
    fn compression_ratio(&self) -> f64 {
        self.prefilling
            .as_ref()
            .map_or(0.0, |p| p.compression_ratio())
    }

    fn validate(&self) -> Result<()> {
        if let Some(press) = &self.prefilling {
            press.validate()?;
            if press.describe().compresses_while_decoding {
                return Err(Error::InvalidArgument(format!(
                    "prefill_decoding: `prefilling` must compress the prefill only; `{}` \
                     compresses while decoding (put it under `decoding`)",
                    kvpress_core::press::press_name(press.as_ref())
                )));
            }
        }
        if let Some(press) = &self.decoding {
            press.validate()?;
            if press.decoding().is_none() {
                return Err(Error::InvalidArgument(
                    "prefill_decoding: `decoding` must be a decode-time press (decoding or \
                     compression_ratio_decoding)"
                        .to_string(),
                ));
            }
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: self
                .prefilling
                .as_ref()
                .is_some_and(|p| p.describe().needs_attention_weights),
            ..PressDescription::defaults_for(self)
        }
    }

    fn decoding(&self) -> Option<DecodingSchedule<'_>> {
        self.decoding.as_ref().and_then(|p| p.decoding())
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.prefilling
            .as_ref()
            .and_then(|p| p.new_layer_cache())
            .or_else(|| self.decoding.as_ref().and_then(|p| p.new_layer_cache()))
    }

    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        match &self.prefilling {
            Some(press) => press.compress(input),
            None => Compression::keep_all(input),
        }
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        match &self.prefilling {
            Some(press) => press.compress_at_ratio(input, ratio),
            None => Compression::keep_all(input),
        }
    }
}

kvpress_core::register_press!(
    "decoding",
    "compresses each layer back to target_size tokens every compression_interval generated tokens",
    || Box::new(Decoding {
        inner: Box::new(kvpress_core::NoPress::default()),
        compression_interval: default_interval(),
        target_size: default_target_size(),
        hidden_states_buffer_size: default_buffer_size(),
    })
);
kvpress_core::register_press!(
    "compression_ratio_decoding",
    "decode-time compression to a fraction of the tokens seen",
    || Box::new(CompressionRatioDecoding {
        inner: Box::new(kvpress_core::NoPress::default()),
        target_compression_ratio: default_target_ratio(),
        compression_interval: default_interval(),
        hidden_states_buffer_size: default_buffer_size(),
    })
);
kvpress_core::register_press!(
    "prefill_decoding",
    "one press for the context's prefill, another while generating",
    || Box::new(PrefillDecoding::default())
);
