//! RULER's synthetic tasks, generated offline from a seed: needle-in-a-haystack (single,
//! multi-key, multi-value, multi-query), variable tracking, common-words and frequent-words
//! extraction, with RULER's prompt templates and answer prefixes.

mod aggregation;
mod haystack;
mod niah;
mod variable_tracking;

use std::str::FromStr;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What fills the context around the needles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Haystack {
    /// RULER's repeated noise sentences.
    Noise,
    /// Sentences of a text (an essay), cycled as needed.
    Essay(String),
}

/// The kind of value a needle hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NeedleValue {
    /// 7-digit numbers.
    Numbers,
    /// Words.
    Words,
    /// UUIDs.
    Uuids,
}

/// A RULER task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Needles in a haystack: `n_keys` keys (one queried), `n_values` values per key, `n_queries`
    /// keys asked about at once.
    Niah {
        /// What fills the context.
        haystack: Haystack,
        /// The kind of hidden values.
        value: NeedleValue,
        /// Needles with different keys (distractors besides the queried ones).
        n_keys: usize,
        /// Values hidden for each key.
        n_values: usize,
        /// Keys asked about in the one question.
        n_queries: usize,
    },
    /// Chains of variable assignments in noise; find every variable holding a value.
    VariableTracking {
        /// Chains (one queried).
        n_chains: usize,
        /// Assignments per chain after the first.
        n_hops: usize,
    },
    /// A numbered list of words; name the 10 most common.
    CommonWords,
    /// Coded words drawn from a Zipf distribution; name the 3 most frequent.
    FrequentWords,
}

impl TaskKind {
    /// Answer tokens to generate for this task, like RULER's per-task `tokens_to_generate` but
    /// sized to what this model's answers need (a numbered list of 4 seven-digit numbers takes
    /// about 45 tokens, 10 common words about 50), so that a complete answer always fits.
    pub fn answer_tokens(&self) -> usize {
        match self {
            Self::Niah {
                value,
                n_values,
                n_queries,
                ..
            } => {
                let per_value = match value {
                    NeedleValue::Numbers | NeedleValue::Words => 12,
                    NeedleValue::Uuids => 28,
                };
                16 + per_value * n_values.max(&1) * n_queries.max(&1)
            }
            Self::VariableTracking { .. } => 32,
            Self::CommonWords => 64,
            Self::FrequentWords => 32,
        }
    }

    /// RULER's `niah_single_1`: one 7-digit number in the noise haystack.
    pub fn niah_single() -> Self {
        Self::Niah {
            haystack: Haystack::Noise,
            value: NeedleValue::Numbers,
            n_keys: 1,
            n_values: 1,
            n_queries: 1,
        }
    }

    /// RULER's `niah_multikey_1`: four keys, one queried.
    pub fn niah_multikey() -> Self {
        Self::Niah {
            haystack: Haystack::Noise,
            value: NeedleValue::Numbers,
            n_keys: 4,
            n_values: 1,
            n_queries: 1,
        }
    }

    /// RULER's `niah_multivalue`: four values for the queried key.
    pub fn niah_multivalue() -> Self {
        Self::Niah {
            haystack: Haystack::Noise,
            value: NeedleValue::Numbers,
            n_keys: 1,
            n_values: 4,
            n_queries: 1,
        }
    }

    /// RULER's `niah_multiquery`: four keys, all asked about.
    pub fn niah_multiquery() -> Self {
        Self::Niah {
            haystack: Haystack::Noise,
            value: NeedleValue::Numbers,
            n_keys: 4,
            n_values: 1,
            n_queries: 4,
        }
    }

    /// RULER's `vt`: one chain of four hops among noise (and one distractor chain).
    pub fn variable_tracking() -> Self {
        Self::VariableTracking {
            n_chains: 2,
            n_hops: 4,
        }
    }
}

impl TaskKind {
    /// The names of the generated tasks an eval config can list.
    pub const NAMES: &'static [&'static str] = &[
        "niah_single",
        "niah_single_words",
        "niah_single_uuids",
        "niah_multikey",
        "niah_multivalue",
        "niah_multiquery",
        "variable_tracking",
        "common_words",
        "frequent_words",
    ];

    /// The task a name of [`Self::NAMES`] stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        let single = |value| Self::Niah {
            haystack: Haystack::Noise,
            value,
            n_keys: 1,
            n_values: 1,
            n_queries: 1,
        };
        Some(match name {
            "niah_single" => Self::niah_single(),
            "niah_single_words" => single(NeedleValue::Words),
            "niah_single_uuids" => single(NeedleValue::Uuids),
            "niah_multikey" => Self::niah_multikey(),
            "niah_multivalue" => Self::niah_multivalue(),
            "niah_multiquery" => Self::niah_multiquery(),
            "variable_tracking" => Self::variable_tracking(),
            "common_words" => Self::CommonWords,
            "frequent_words" => Self::FrequentWords,
            _ => return None,
        })
    }
}

impl TaskKind {
    /// The name of this task: its name in [`Self::NAMES`], or its parameters for a task built
    /// by hand.
    pub fn name(&self) -> String {
        Self::NAMES
            .iter()
            .find(|name| Self::from_name(name).as_ref() == Some(self))
            .map_or_else(|| format!("{self:?}"), |name| name.to_string())
    }
}

impl FromStr for TaskKind {
    type Err = Error;

    /// [`TaskKind::from_name`], or an [`Error::UnknownTask`] naming the valid names.
    fn from_str(name: &str) -> Result<Self, Error> {
        Self::from_name(name).ok_or_else(|| Error::UnknownTask {
            name: name.to_string(),
            valid: Self::NAMES,
        })
    }
}

/// One question about a context, with RULER's answer prefix and the expected values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// The question (asked after the context).
    pub question: String,
    /// Text the answer starts with (RULER puts it after the assistant header).
    pub answer_prefix: String,
    /// Values a correct answer contains.
    pub answers: Vec<String>,
}

/// A context and its questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The text to compress.
    pub context: String,
    /// Questions about it.
    pub questions: Vec<Question>,
}

/// Largest filler size [`generate`] tries (haystack units, list words).
const MAX_FILLER: usize = 1 << 20;

/// A sample of `kind` whose context holds at most `n_tokens` tokens as `count_tokens` counts
/// them (as long as it can be while staying under), from `seed`; needles sit at `depth` (0 = the
/// start of the haystack, 1 = the end). An [`Error::ContextTooShort`] naming the fewest tokens
/// this sample needs when even its smallest context (no filler, or for frequent words the
/// fewest words that rank three) has more than `n_tokens`.
pub fn generate(
    kind: &TaskKind,
    n_tokens: usize,
    seed: u64,
    depth: f64,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Result<Sample, Error> {
    let mut rng = StdRng::seed_from_u64(seed);
    let builder: Box<dyn Fn(usize) -> Sample> = match kind {
        TaskKind::Niah {
            haystack,
            value,
            n_keys,
            n_values,
            n_queries,
        } => niah::niah(
            haystack, *value, *n_keys, *n_values, *n_queries, depth, &mut rng,
        ),
        TaskKind::VariableTracking { n_chains, n_hops } => {
            variable_tracking::variable_tracking(*n_chains, *n_hops, depth, &mut rng)
        }
        TaskKind::CommonWords => aggregation::common_words(&mut rng),
        TaskKind::FrequentWords => aggregation::frequent_words(&mut rng),
    };
    // The smallest filler that holds the task, then the largest whose context fits.
    let smallest = (0..MAX_FILLER)
        .find(|&n| holds_task(kind, &builder(n)))
        .unwrap_or(MAX_FILLER);
    let minimum = count_tokens(&builder(smallest).context);
    if minimum > n_tokens {
        return Err(Error::ContextTooShort {
            task: kind.name(),
            context_length: n_tokens,
            minimum,
        });
    }
    let (mut low, mut high) = (smallest, (2 * smallest).max(1));
    while count_tokens(&builder(high).context) <= n_tokens && high < MAX_FILLER {
        low = high;
        high *= 2;
    }
    while high - low > 1 {
        let mid = (low + high) / 2;
        if count_tokens(&builder(mid).context) <= n_tokens {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(builder(low))
}

/// Whether `sample` holds a task of `kind`: every question expects as many non-empty values as
/// it asks for (frequent words need three words drawn before they rank three).
fn holds_task(kind: &TaskKind, sample: &Sample) -> bool {
    let expected = match kind {
        TaskKind::Niah {
            n_keys,
            n_values,
            n_queries,
            ..
        } => n_values.max(&1) * n_queries.clamp(&1, n_keys.max(&1)),
        TaskKind::VariableTracking { n_hops, .. } => n_hops + 1,
        TaskKind::CommonWords => 10,
        TaskKind::FrequentWords => 3,
    };
    !sample.questions.is_empty()
        && sample
            .questions
            .iter()
            .all(|q| q.answers.len() == expected && q.answers.iter().all(|a| !a.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_others_are_refused() {
        for name in TaskKind::NAMES {
            assert!(TaskKind::from_name(name).is_some(), "{name}");
        }
        assert_eq!(
            "common_words".parse::<TaskKind>().unwrap(),
            TaskKind::CommonWords
        );
        let error = "niah".parse::<TaskKind>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown task `niah`: valid are niah_single, niah_single_words, niah_single_uuids, \
             niah_multikey, niah_multivalue, niah_multiquery, variable_tracking, common_words, \
             frequent_words"
        );
    }
}
