//! Presses: the traits every compression method implements, and what they share.
//!
//! - [`Scorer`] scores tokens per KV head; [`BudgetAllocator`] turns scores into a [`Selection`]
//!   (the kept indices of each head); [`Press`] is what runs at the hook point — usually a scorer
//!   plus an allocator ([`score_and_allocate`], [`crate::scorer_press!`]), or a wrapper around
//!   other presses.
//! - [`registry`]: presses register themselves by name ([`crate::register_press!`]);
//!   [`config`] builds them from JSON or TOML.
//!
//! The tensor operations several methods share are in the `presses-ops` crate (they run on the
//! kernels, which this crate does not depend on).

mod allocator;
mod calibration;
mod compression;
pub mod config;
mod input;
mod key_channels;
mod nesting;
mod no_press;
mod pyramid;
mod reconstruction;
pub mod registry;
mod scorer;
mod selection;

pub use allocator::{
    check_compression_ratio, keep_top_per_head, n_kept, score_rows, top_k_indices, BudgetAllocator,
    LayerPosition, UniformAllocator,
};
pub use calibration::{CalibrationSample, ModelCalibration};
pub use compression::{
    below_threshold, CacheLayout, Compression, DecodingEviction, DecodingSchedule, DecodingTarget,
    LayerNote, NoteScope, Press, PressDescription, RatioControl,
};
pub use config::{
    press_clone, press_from_file, press_from_json, press_from_toml, press_from_value, press_name,
    press_to_json,
};
pub use input::{AttentionHistory, CachedKeysValues, InputChunk, PressInput};
pub use key_channels::KeyChannels;
pub use nesting::{check_nesting, holds_presses};
pub use no_press::NoPress;
pub use pyramid::{layer_budget, PyramidAllocator};
pub use reconstruction::{ReconstructionScoring, SecondPass};
pub use registry::{
    default_parameters, find_press, registered_names, registered_presses, PressRegistration,
};
pub use scorer::{
    allocate_scores, check_window, inner_scorer, score_and_allocate, score_and_allocate_at_ratios,
    scores_at_ratios, Scorer,
};
pub use selection::Selection;
