//! The results file of a run: the rows found in it when the run started, and the rows the run
//! appends.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoAction, Result};
use crate::results::{read_results, ResultRow, RowKey, RESULTS_FILE};

/// `results.jsonl` of an output folder, open for appending.
pub(super) struct ResultsLog {
    path: PathBuf,
    file: File,
    /// The rows found when the run started, then those appended.
    rows: Vec<ResultRow>,
    /// Keys of the rows found when the run started.
    done: HashSet<RowKey>,
}

impl ResultsLog {
    /// Creates `out_dir` if needed, reads the rows already there and opens the file to append.
    pub(super) fn open(out_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(IoAction::Create, out_dir, e))?;
        let path = out_dir.join(RESULTS_FILE);
        let rows = read_results(out_dir)?;
        let done = rows.iter().map(ResultRow::key).collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(IoAction::Open, &path, e))?;
        Ok(Self {
            path,
            file,
            rows,
            done,
        })
    }

    /// Whether the results file held the row of `key` when the run started.
    pub(super) fn is_done(&self, key: &RowKey) -> bool {
        self.done.contains(key)
    }

    /// Appends `row` to the file.
    pub(super) fn append(&mut self, row: ResultRow) -> Result<()> {
        // One write per row: shards running at once append whole lines.
        let line = format!("{}\n", serde_json::to_string(&row)?);
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(IoAction::Write, &self.path, e))?;
        self.rows.push(row);
        Ok(())
    }

    /// Every row: those found, then those appended.
    pub(super) fn into_rows(self) -> Vec<ResultRow> {
        self.rows
    }
}
