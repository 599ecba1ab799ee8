//! Needle-in-a-haystack tasks: key-value needles hidden in a haystack, one question about some
//! of the keys.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::haystack::{haystack_units, insert_needles};
use super::{Haystack, NeedleValue, Question, Sample};
use crate::words::NOUNS;

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

/// RULER's question about the `queried` keys and its answer prefix, for `n_expected` values in
/// all.
fn question_and_prefix(
    value: NeedleValue,
    queried: &[String],
    n_expected: usize,
) -> (String, String) {
    let query = queried.join(", ");
    if n_expected == 1 {
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
    }
}

/// A needle-in-a-haystack sample builder (filler size to sample): `n_keys` keys with `n_values`
/// values each hidden at `depth`, the first `n_queries` keys asked about.
pub(super) fn niah(
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
    let (question, prefix) = question_and_prefix(value, &queried, n_values.max(1) * queried.len());
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
