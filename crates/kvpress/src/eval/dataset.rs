//! Users' own datasets: JSONL lines of `{"context", "question" | "questions", "answer" |
//! "answers", "answer_prefix"?}`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{Question, Sample};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    context: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    questions: Option<Vec<String>>,
    #[serde(default)]
    answer: Option<OneOrMany>,
    #[serde(default)]
    answers: Option<Vec<OneOrMany>>,
    #[serde(default)]
    answer_prefix: Option<String>,
}

fn parse_line(text: &str) -> Result<Sample> {
    let line: Line = serde_json::from_str(text)?;
    if line.context.trim().is_empty() {
        bail!("`context` is empty");
    }
    let prefix = line.answer_prefix.unwrap_or_default();
    let questions = match (line.question, line.questions, line.answer, line.answers) {
        (Some(question), None, Some(answer), None) => vec![Question {
            question,
            answer_prefix: prefix,
            answers: answer.into_vec(),
        }],
        (None, Some(questions), None, Some(answers)) if questions.len() == answers.len() => {
            questions
                .into_iter()
                .zip(answers)
                .map(|(question, answers)| Question {
                    question,
                    answer_prefix: prefix.clone(),
                    answers: answers.into_vec(),
                })
                .collect()
        }
        (None, Some(q), None, Some(a)) => {
            bail!("{} questions but {} answers", q.len(), a.len())
        }
        _ => bail!(
            "give `question` with `answer`, or `questions` with `answers` (one list per question)"
        ),
    };
    Ok(Sample {
        context: line.context,
        questions,
    })
}

/// Reads a JSONL dataset. A malformed line is an error naming its number, unless `skip_bad`:
/// then it is skipped and reported in the returned warnings.
pub fn read_dataset(path: &Path, skip_bad: bool) -> Result<(Vec<Sample>, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut samples = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(sample) => samples.push(sample),
            Err(error) => {
                let message = format!("{}:{}: {error:#}", path.display(), i + 1);
                if !skip_bad {
                    bail!("{message} (pass --skip-bad to skip malformed lines)");
                }
                warnings.push(format!("skipped {message}"));
            }
        }
    }
    if samples.is_empty() {
        bail!("{} holds no usable line", path.display());
    }
    Ok((samples, warnings))
}
