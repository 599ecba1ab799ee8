//! Users' own datasets: JSONL lines of `{"context", "question" | "questions", "answer" |
//! "answers", "answer_prefix"?}`.

use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};

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

fn parse_line(bytes: &[u8]) -> std::result::Result<Sample, LineProblem> {
    let text = std::str::from_utf8(bytes).map_err(|e| LineProblem::NotUtf8 {
        column: e.valid_up_to() + 1,
    })?;
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
    if questions.is_empty() {
        return Err(LineProblem::NoQuestion);
    }
    if let Some(question) = questions
        .iter()
        .position(|q| q.answers.is_empty() || q.answers.iter().any(|a| a.trim().is_empty()))
    {
        return Err(LineProblem::EmptyAnswer { question });
    }
    Ok(Sample {
        context: line.context,
        questions,
    })
}

/// A dataset line skipped with `--skip-bad`, and why.
#[derive(Debug)]
pub struct SkippedLine {
    /// The dataset file.
    pub path: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong with the line.
    pub problem: LineProblem,
}

impl fmt::Display for SkippedLine {
    /// `skipped FILE:LINE: PROBLEM`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "skipped {}:{}: {}",
            self.path.display(),
            self.line,
            self.problem
        )
    }
}

/// The usable lines of a dataset and the skipped ones.
#[derive(Debug, Default)]
pub struct Dataset {
    /// Each usable line's index in the file (from 0: its rows' `sample`) and its sample.
    pub samples: Vec<(usize, Sample)>,
    /// Lines skipped with `--skip-bad`, in file order.
    pub skipped: Vec<SkippedLine>,
}

impl Dataset {
    /// Handles a `problem` of line `index` (from 0): with `skip_bad` it is recorded as skipped,
    /// else it is an [`Error::DatasetLine`].
    pub(crate) fn refuse(
        &mut self,
        path: &Path,
        index: usize,
        problem: LineProblem,
        skip_bad: bool,
    ) -> Result<()> {
        if !skip_bad {
            return Err(Error::DatasetLine {
                path: path.to_path_buf(),
                line: index + 1,
                problem,
            });
        }
        self.skipped.push(SkippedLine {
            path: path.to_path_buf(),
            line: index + 1,
            problem,
        });
        Ok(())
    }
}

/// Reads a JSONL dataset, line by line as bytes (a line that is not UTF-8 is a bad line, not an
/// unreadable file). A malformed line is an error naming its number ([`Error::DatasetLine`]),
/// unless `skip_bad`: then it is skipped and listed in [`Dataset::skipped`]. Blank lines are
/// ignored; a file with no usable line is an [`Error::EmptyDataset`].
pub fn read_dataset(path: &Path, skip_bad: bool) -> Result<Dataset> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(IoAction::Read, path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut dataset = Dataset::default();
    let mut bytes = Vec::new();
    for index in 0.. {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .map_err(|e| Error::io(IoAction::Read, path, e))?;
        if read == 0 {
            break;
        }
        let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line) {
            Ok(sample) => dataset.samples.push((index, sample)),
            Err(problem) => dataset.refuse(path, index, problem, skip_bad)?,
        }
    }
    if dataset.samples.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    Ok(dataset)
}
