//! RULER's synthetic tasks, generated offline from a seed: needle-in-a-haystack (single,
//! multi-key, multi-value, multi-query), variable tracking, common-words and frequent-words
//! extraction, with RULER's prompt templates and answer prefixes.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::words::{COMMON_WORDS, NOUNS};

/// The noise haystack: one unit of RULER's repeated filler.
const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

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

impl NeedleValue {
    fn plural(self) -> &'static str {
        match self {
            Self::Numbers => "numbers",
            Self::Words => "words",
            Self::Uuids => "uuids",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Self::Numbers => "number",
            Self::Words => "word",
            Self::Uuids => "uuid",
        }
    }

    fn draw(self, rng: &mut StdRng) -> String {
        match self {
            Self::Numbers => rng.random_range(1_000_000..10_000_000u32).to_string(),
            Self::Words => NOUNS[rng.random_range(0..NOUNS.len())].to_string(),
            Self::Uuids => uuid(rng),
        }
    }
}

fn uuid(rng: &mut StdRng) -> String {
    let hex = |rng: &mut StdRng, n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
            .collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 12)
    )
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

/// A sample of `kind` whose context holds at most `n_tokens` tokens as `count_tokens` counts
/// them (as long as it can be while staying under), from `seed`; needles sit at `depth` (0 = the
/// start of the haystack, 1 = the end).
pub fn generate(
    kind: &TaskKind,
    n_tokens: usize,
    seed: u64,
    depth: f64,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Sample {
    let mut rng = StdRng::seed_from_u64(seed);
    let builder: Box<dyn Fn(usize) -> Sample> = match kind {
        TaskKind::Niah {
            haystack,
            value,
            n_keys,
            n_values,
            n_queries,
        } => niah(
            haystack, *value, *n_keys, *n_values, *n_queries, depth, &mut rng,
        ),
        TaskKind::VariableTracking { n_chains, n_hops } => {
            variable_tracking(*n_chains, *n_hops, depth, &mut rng)
        }
        TaskKind::CommonWords => common_words(&mut rng),
        TaskKind::FrequentWords => frequent_words(&mut rng),
    };
    // The largest filler size whose context fits.
    let (mut low, mut high) = (0usize, 1usize);
    while count_tokens(&builder(high).context) <= n_tokens && high < 1 << 20 {
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
    builder(low)
}

/// Haystack units (sentences or noise blocks), cycled to `n`.
fn haystack_units(haystack: &Haystack, n: usize) -> Vec<String> {
    match haystack {
        Haystack::Noise => vec![NOISE.to_string(); n],
        Haystack::Essay(text) => {
            let sentences: Vec<&str> = text
                .split_inclusive(['.', '!', '?'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if sentences.is_empty() {
                return vec![NOISE.to_string(); n];
            }
            sentences
                .iter()
                .cycle()
                .take(n)
                .map(|s| s.to_string())
                .collect()
        }
    }
}

/// Inserts `needles` into `units`: the first at `depth`, the others spread after it.
fn insert_needles(mut units: Vec<String>, needles: &[String], depth: f64) -> Vec<String> {
    let n = units.len();
    let first = ((depth.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    for (i, needle) in needles.iter().enumerate().rev() {
        let at = (first + i * n.saturating_sub(first) / needles.len().max(1)).min(units.len());
        units.insert(at, needle.clone());
    }
    units
}

fn niah(
    haystack: &Haystack,
    value: NeedleValue,
    n_keys: usize,
    n_values: usize,
    n_queries: usize,
    depth: f64,
    rng: &mut StdRng,
) -> Box<dyn Fn(usize) -> Sample> {
    let mut keys: Vec<&str> = NOUNS.to_vec();
    keys.shuffle(rng);
    let keys: Vec<String> = keys
        .iter()
        .take(n_keys.max(1))
        .map(|k| k.to_string())
        .collect();
    let values: Vec<Vec<String>> = keys
        .iter()
        .map(|_| (0..n_values.max(1)).map(|_| value.draw(rng)).collect())
        .collect();
    let mut needles: Vec<String> = keys
        .iter()
        .zip(&values)
        .flat_map(|(key, values)| {
            values.iter().map(move |v| {
                format!(
                    "One of the special magic {} for {key} is: {v}.",
                    value.plural()
                )
            })
        })
        .collect();
    needles.shuffle(rng);
    let queried: Vec<String> = keys
        .iter()
        .take(n_queries.clamp(1, n_keys.max(1)))
        .cloned()
        .collect();
    let expected: Vec<String> = queried
        .iter()
        .flat_map(|k| values[keys.iter().position(|x| x == k).unwrap_or(0)].clone())
        .collect();
    let query = queried.join(", ");
    let single = n_values.max(1) * queried.len() == 1;
    let (question, prefix) = if single {
        let noun = value.singular();
        (
            format!("What is the special magic {noun} for {query} mentioned in the provided text?"),
            format!("The special magic {noun} for {query} mentioned in the provided text is"),
        )
    } else {
        let noun = value.plural();
        (
            format!(
                "What are all the special magic {noun} for {query} mentioned in the provided text?"
            ),
            format!("The special magic {noun} for {query} mentioned in the provided text are"),
        )
    };
    let haystack = haystack.clone();
    let plural = value.plural();
    Box::new(move |n: usize| {
        let units = insert_needles(haystack_units(&haystack, n), &needles, depth);
        Sample {
            context: format!(
                "Some special magic {plural} are hidden within the following text. Make sure to \
                 memorize it. I will quiz you about the {plural} afterwards.\n{}",
                units.join(" ")
            ),
            questions: vec![Question {
                question: question.clone(),
                answer_prefix: prefix.clone(),
                answers: expected.clone(),
            }],
        }
    })
}

fn variable_name(rng: &mut StdRng) -> String {
    (0..5)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

fn variable_tracking(
    n_chains: usize,
    n_hops: usize,
    depth: f64,
    rng: &mut StdRng,
) -> Box<dyn Fn(usize) -> Sample> {
    let mut statements = Vec::new();
    let mut queried_names = Vec::new();
    let mut queried_value = String::new();
    for chain in 0..n_chains.max(1) {
        let value = rng.random_range(10_000..100_000u32).to_string();
        let names: Vec<String> = (0..=n_hops).map(|_| variable_name(rng)).collect();
        statements.push(format!("VAR {} = {value}.", names[0]));
        for hop in 1..names.len() {
            statements.push(format!("VAR {} = VAR {}.", names[hop], names[hop - 1]));
        }
        if chain == 0 {
            queried_names = names;
            queried_value = value;
        }
    }
    let question = format!(
        "Question: Find all variables that are assigned the value {queried_value} in the text \
         above."
    );
    let prefix = format!(
        "Answer: According to the chain(s) of variable assignment in the text above, {} \
         variables are assigned the value {queried_value}, they are:",
        queried_names.len()
    );
    Box::new(move |n: usize| {
        // Statements keep their order (a chain must be read forward), spread through the noise.
        let units = insert_needles(vec![NOISE.to_string(); n], &statements, depth * 0.5);
        Sample {
            context: format!(
                "Memorize and track the chain(s) of variable assignment hidden in the following \
                 text.\n\n{}",
                units.join(" ")
            ),
            questions: vec![Question {
                question: question.clone(),
                answer_prefix: prefix.clone(),
                answers: queried_names.clone(),
            }],
        }
    })
}

fn common_words(rng: &mut StdRng) -> Box<dyn Fn(usize) -> Sample> {
    let mut words: Vec<&str> = COMMON_WORDS.to_vec();
    words.shuffle(rng);
    let common: Vec<String> = words[..10].iter().map(|w| w.to_string()).collect();
    let uncommon: Vec<String> = words[10..].iter().map(|w| w.to_string()).collect();
    let seed = rng.random::<u64>();
    Box::new(move |n: usize| {
        // Uncommon words 3 times each, common ones more often: 30 times (RULER's frequency) in
        // long lists, fewer in short ones so that short contexts still fit.
        let common_count = (4 + n / 20).min(30);
        let mut list: Vec<String> = common
            .iter()
            .flat_map(|w| vec![w.clone(); common_count])
            .collect();
        let mut local = StdRng::seed_from_u64(seed);
        for i in 0..n {
            let word = format!("{}{}", uncommon[i % uncommon.len()], i / uncommon.len());
            list.extend(vec![word; 3]);
        }
        list.shuffle(&mut local);
        let numbered: Vec<String> = list
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{}. {w}", i + 1))
            .collect();
        Sample {
            context: format!(
                "Below is a numbered list of words. In these words, some appear more often than \
                 others. Memorize the ones that appear most often.\n{}",
                numbered.join(" ")
            ),
            questions: vec![Question {
                question: "Question: What are the 10 most common words in the above list?"
                    .to_string(),
                answer_prefix: "Answer: The top 10 words that appear most often in the list are:"
                    .to_string(),
                answers: common.clone(),
            }],
        }
    })
}

fn frequent_words(rng: &mut StdRng) -> Box<dyn Fn(usize) -> Sample> {
    let vocabulary: Vec<String> = (0..200)
        .map(|_| {
            (0..5)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect()
        })
        .collect();
    let seed = rng.random::<u64>();
    Box::new(move |n: usize| {
        // Zipf(2) draws over the vocabulary: the first words are by far the most frequent.
        let weights: Vec<f64> = (1..=vocabulary.len())
            .map(|r| 1.0 / (r * r) as f64)
            .collect();
        let total: f64 = weights.iter().sum();
        let mut local = StdRng::seed_from_u64(seed);
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        let mut words = Vec::with_capacity(n);
        for _ in 0..n {
            let mut x = local.random::<f64>() * total;
            let mut index = 0;
            while index + 1 < weights.len() && x >= weights[index] {
                x -= weights[index];
                index += 1;
            }
            *counts.entry(index).or_default() += 1;
            words.push(vocabulary[index].clone());
        }
        let mut ranked: Vec<(usize, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Sample {
            context: format!(
                "Read the following coded text and track the frequency of each coded word. Find \
                 the three most frequently appeared coded words. {} ....",
                words.join(" ")
            ),
            questions: vec![Question {
                question: "Question: Do not provide any explanation. Please ignore the dots \
                           '....'. What are the three most frequently appeared words in the \
                           above coded text?"
                    .to_string(),
                answer_prefix: "Answer: According to the coded text above, the three most \
                                frequently appeared words are:"
                    .to_string(),
                answers: ranked
                    .iter()
                    .take(3)
                    .map(|(i, _)| vocabulary[*i].clone())
                    .collect(),
            }],
        }
    })
}
