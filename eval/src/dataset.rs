//! Users' own datasets: JSONL lines of `{"context", "question" | "questions", "answer" |
//! "answers", "answer_prefix"?}`.

use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, IoAction, LineProblem, Result};
use crate::{Question, Sample};

/// The keys a dataset line may have.
const KEYS: [&str; 6] = [
    "context",
    "question",
    "questions",
    "answer",
    "answers",
    "answer_prefix",
];

/// What kind of JSON value `value` is, for messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A line's field `key`, which must be a string.
fn string(
    line: &Map<String, Value>,
    key: &'static str,
) -> std::result::Result<Option<String>, LineProblem> {
    match line.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(LineProblem::WrongType {
            key,
            expected: "a string",
            found: kind_of(other),
        }),
    }
}

/// The expected answers of one question: a string, or a list of strings (any of which counts).
fn answers(value: &Value, key: &'static str) -> std::result::Result<Vec<String>, LineProblem> {
    let wrong = |found: &Value| LineProblem::WrongType {
        key,
        expected: "a string or a list of strings",
        found: kind_of(found),
    };
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(|| wrong(item)))
            .collect(),
        other => Err(wrong(other)),
    }
}

/// A line's list field `key` of items read by `item`.
fn list<T>(
    line: &Map<String, Value>,
    key: &'static str,
    item: impl Fn(&Value) -> std::result::Result<T, LineProblem>,
) -> std::result::Result<Option<Vec<T>>, LineProblem> {
    match line.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(item)
            .collect::<std::result::Result<_, _>>()
            .map(Some),
        Some(other) => Err(LineProblem::WrongType {
            key,
            expected: "a list",
            found: kind_of(other),
        }),
    }
}

fn parse_line(bytes: &[u8]) -> std::result::Result<Sample, LineProblem> {
    let text = std::str::from_utf8(bytes).map_err(|e| LineProblem::NotUtf8 {
        column: e.valid_up_to() + 1,
    })?;
    let value: Value = serde_json::from_str(text).map_err(LineProblem::Json)?;
    let Value::Object(line) = value else {
        return Err(LineProblem::NotAnObject {
            found: kind_of(&value),
        });
    };
    if let Some(key) = line.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(LineProblem::UnknownKey { key: key.clone() });
    }
    let context = string(&line, "context")?.ok_or(LineProblem::EmptyContext)?;
    if context.trim().is_empty() {
        return Err(LineProblem::EmptyContext);
    }
    let prefix = string(&line, "answer_prefix")?.unwrap_or_default();
    let question = string(&line, "question")?;
    let questions = list(&line, "questions", |q| {
        q.as_str()
            .map(str::to_string)
            .ok_or(LineProblem::WrongType {
                key: "questions",
                expected: "a list of strings",
                found: kind_of(q),
            })
    })?;
    let answer = line
        .get("answer")
        .map(|a| answers(a, "answer"))
        .transpose()?;
    let answer_lists = list(&line, "answers", |a| answers(a, "answers"))?;
    let pairs: Vec<(String, Vec<String>)> = match (question, questions, answer, answer_lists) {
        (Some(question), None, Some(answer), None) => vec![(question, answer)],
        (None, Some(questions), None, Some(answers)) if questions.len() == answers.len() => {
            questions.into_iter().zip(answers).collect()
        }
        (None, Some(q), None, Some(a)) => {
            return Err(LineProblem::CountMismatch {
                questions: q.len(),
                answers: a.len(),
            })
        }
        _ => return Err(LineProblem::NoQuestion),
    };
    if pairs.is_empty() {
        return Err(LineProblem::NoQuestion);
    }
    if let Some(question) = pairs
        .iter()
        .position(|(_, a)| a.is_empty() || a.iter().any(|a| a.trim().is_empty()))
    {
        return Err(LineProblem::EmptyAnswer { question });
    }
    Ok(Sample {
        context,
        questions: pairs
            .into_iter()
            .map(|(question, answers)| Question {
                question,
                answer_prefix: prefix.clone(),
                answers,
            })
            .collect(),
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
        // A byte-order mark that editors put at the start of a UTF-8 file is not part of the
        // first line.
        let line = match index {
            0 => line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line),
            _ => line,
        };
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
            skipped: dataset.skipped.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(dataset)
}
