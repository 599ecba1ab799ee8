//! Users' own datasets: JSONL lines of `{"context", "question" | "questions", "answer" |
//! "answers", "answer_prefix"?}`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, IoAction, LineProblem, Result};
use crate::{Question, Sample};

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

fn parse_line(text: &str) -> std::result::Result<Sample, LineProblem> {
    let line: Line = serde_json::from_str(text).map_err(LineProblem::Json)?;
    if line.context.trim().is_empty() {
        return Err(LineProblem::EmptyContext);
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
            return Err(LineProblem::CountMismatch {
                questions: q.len(),
                answers: a.len(),
            })
        }
        _ => return Err(LineProblem::NoQuestion),
    };
    Ok(Sample {
        context: line.context,
        questions,
    })
}

/// Reads a JSONL dataset. A malformed line is an error naming its number
/// ([`Error::DatasetLine`]), unless `skip_bad`: then it is skipped and reported in the returned
/// warnings.
pub fn read_dataset(path: &Path, skip_bad: bool) -> Result<(Vec<Sample>, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(IoAction::Read, path, e))?;
    let mut samples = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(sample) => samples.push(sample),
            Err(problem) if skip_bad => {
                warnings.push(format!("skipped {}:{}: {problem}", path.display(), i + 1));
            }
            Err(problem) => {
                return Err(Error::DatasetLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    problem,
                })
            }
        }
    }
    if samples.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    Ok((samples, warnings))
}
