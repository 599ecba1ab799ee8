//! The results of a grid: one JSON line per answered question in `results.jsonl`, each row
//! identified by its [`RowKey`] (read once per key; a rerun skips the rows already there) and
//! signed with the fingerprint of what decided it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoAction, Result};
use crate::Setting;

/// The results file in an output folder.
pub const RESULTS_FILE: &str = "results.jsonl";

/// One answered question of the grid (a line of `results.jsonl`, its fields in this order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Task name (`dataset` for a user dataset).
    pub task: String,
    /// `question_agnostic` or `question_aware`.
    pub setting: Setting,
    /// Requested context length (0 for dataset lines).
    pub context_length: usize,
    /// Sample index (for dataset lines, the line's index in the file, from 0).
    pub sample: usize,
    /// Question index within the sample.
    pub question: usize,
    /// Press name (`full cache` for the uncompressed reference).
    pub press: String,
    /// Compression ratio (0 for the full cache).
    pub compression_ratio: f64,
    /// Fraction of the expected values in the answer.
    pub score: f64,
    /// The generated answer (generation stops once it holds every expected value, since
    /// further tokens cannot change the score).
    pub answer: String,
    /// Tokens of the compressed prompt part.
    pub context_tokens: usize,
    /// Hash of everything that decided this row (model files, weight and KV-cache dtypes, the
    /// press's resolved config and ratio, the sample's text, setting, question and answer
    /// length); `None` in rows written before rows had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl ResultRow {
    /// What identifies this row in its grid.
    pub fn key(&self) -> RowKey {
        RowKey {
            task: self.task.clone(),
            setting: self.setting,
            context_length: self.context_length,
            sample: self.sample,
            question: self.question,
            press: self.press.clone(),
            ratio: RatioKey::new(self.compression_ratio),
        }
    }
}

/// What identifies a row of a grid: rows with the same key answer the same question with the
/// same press configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Task name.
    pub task: String,
    /// Setting.
    pub setting: Setting,
    /// Requested context length.
    pub context_length: usize,
    /// Sample index.
    pub sample: usize,
    /// Question index within the sample.
    pub question: usize,
    /// Press name.
    pub press: String,
    /// Compression ratio, to the thousandth.
    pub ratio: RatioKey,
}

impl fmt::Display for RowKey {
    /// `task, setting, N tokens, sample S, question Q, press at R`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}, {} tokens, sample {}, question {}, {} at {}",
            self.task,
            self.setting,
            self.context_length,
            self.sample,
            self.question,
            self.press,
            self.ratio
        )
    }
}

/// A compression ratio as results compare, group and print it: rounded to the thousandth, as
/// `{:.3}` rounds (`0.500`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RatioKey {
    thousandths: i64,
}

impl RatioKey {
    /// `ratio` to the thousandth.
    pub fn new(ratio: f64) -> Self {
        // The digits `{:.3}` prints: its rounding (of the exact binary value, ties to even) is
        // what results files have always been matched by, and arithmetic rounding differs from
        // it (0.0625 prints as 0.062).
        let thousandths = format!("{ratio:.3}")
            .replace('.', "")
            .parse()
            .unwrap_or(if ratio < 0.0 { i64::MIN } else { i64::MAX });
        Self { thousandths }
    }

    /// The ratio in thousandths (500 for 0.5).
    pub fn thousandths(self) -> i64 {
        self.thousandths
    }

    /// The rounded ratio.
    pub fn value(self) -> f64 {
        self.thousandths as f64 / 1000.0
    }
}

impl fmt::Display for RatioKey {
    /// Three decimals, as `{:.3}` prints the ratio.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.thousandths < 0 { "-" } else { "" };
        let magnitude = self.thousandths.unsigned_abs();
        write!(f, "{sign}{}.{:03}", magnitude / 1000, magnitude % 1000)
    }
}

/// `read(path)`, or `None` when `path` does not exist.
fn read_if_present<T>(
    path: &Path,
    read: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<Option<T>> {
    match read(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(IoAction::Read, path, e)),
    }
}

/// Every row in `out_dir/results.jsonl` (none when it does not exist), each key once: a row
/// repeated line for line is counted once, and two rows of one key that differ are an
/// [`Error::ConflictingRows`]. A last line cut short (a run killed while writing it) is
/// ignored; any other malformed line is an error ([`Error::ResultsLine`]).
pub fn read_results(out_dir: &Path) -> Result<Vec<ResultRow>> {
    let path = out_dir.join(RESULTS_FILE);
    // Bytes, line by line: a line that is not UTF-8 is that line's error.
    let Some(bytes) = read_if_present(&path, |p| std::fs::read(p))? else {
        return Ok(Vec::new());
    };
    let complete = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&[][..], |end| &bytes[..end]);
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut first_lines: HashMap<RowKey, (usize, usize)> = HashMap::new();
    for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: ResultRow = serde_json::from_slice(line).map_err(|error| Error::ResultsLine {
            path: path.clone(),
            line: i + 1,
            error,
        })?;
        match first_lines.entry(row.key()) {
            Entry::Vacant(entry) => {
                entry.insert((i + 1, rows.len()));
                rows.push(row);
            }
            Entry::Occupied(entry) => {
                let (first_line, index) = *entry.get();
                if rows[index] != row {
                    return Err(Error::ConflictingRows {
                        path,
                        line: i + 1,
                        first_line,
                        key: entry.key().to_string(),
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// The first row of each key of `rows`, in order.
pub fn unique_rows(rows: &[ResultRow]) -> Vec<&ResultRow> {
    let mut seen = HashSet::new();
    rows.iter().filter(|row| seen.insert(row.key())).collect()
}

/// Cuts a last line without its newline (a run killed while writing it) off
/// `out_dir/results.jsonl`, so that appended rows start on a line of their own; returns whether
/// it did. Call it before starting workers, never while one runs.
pub fn repair_results(out_dir: &Path) -> Result<bool> {
    let path = out_dir.join(RESULTS_FILE);
    let Some(text) = read_if_present(&path, |p| std::fs::read(p))? else {
        return Ok(false);
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(false);
    }
    let complete = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(complete as u64))
        .map_err(|e| Error::io(IoAction::Repair, &path, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_keys_round_as_three_decimals_print() {
        for ratio in [
            0.0, 0.25, 0.5, 0.0625, 0.1875, 0.1235, 0.9999, 0.0005, 1.5, -0.25,
        ] {
            let key = RatioKey::new(ratio);
            assert_eq!(key.to_string(), format!("{ratio:.3}"), "{ratio}");
            assert_eq!(key.value(), format!("{ratio:.3}").parse::<f64>().unwrap());
        }
        assert_eq!(RatioKey::new(0.0625).thousandths(), 62);
        assert_eq!(RatioKey::new(0.5), RatioKey::new(0.5004));
        assert!(RatioKey::new(0.25) < RatioKey::new(0.5));
    }

    #[test]
    fn rows_keep_their_json_line() {
        let line = r#"{"task":"niah_single","setting":"question_aware","context_length":512,"sample":3,"question":1,"press":"full cache","compression_ratio":0.0,"score":0.5,"answer":" 42","context_tokens":500}"#;
        let row: ResultRow = serde_json::from_str(line).unwrap();
        assert_eq!(row.setting, Setting::QuestionAware);
        assert_eq!(row.fingerprint, None);
        assert_eq!(serde_json::to_string(&row).unwrap(), line);
        let signed = ResultRow {
            fingerprint: Some("ab12".to_string()),
            ..row.clone()
        };
        let written = serde_json::to_string(&signed).unwrap();
        assert!(written.ends_with(r#","fingerprint":"ab12"}"#), "{written}");
        assert_eq!(serde_json::from_str::<ResultRow>(&written).unwrap(), signed);
        let key = row.key();
        assert_eq!(
            (key.sample, key.question, key.ratio.thousandths()),
            (3, 1, 0)
        );
    }
}
