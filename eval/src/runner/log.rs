//! The results file of a run: the rows found in it when the run started (checked against this
//! run's settings and fingerprints), and the rows the run appends.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoAction, Result};
use crate::fingerprint::RunSettings;
use crate::results::{read_results, ResultRow, RowKey, RESULTS_FILE};

/// `results.jsonl` of an output folder, open for appending.
pub(super) struct ResultsLog {
    path: PathBuf,
    file: File,
    /// The rows found when the run started, then those appended.
    rows: Vec<ResultRow>,
    /// Keys of the rows found when the run started.
    done: HashSet<RowKey>,
    /// This run's fingerprint of every row of its grid.
    fingerprints: HashMap<RowKey, String>,
}

/// What a run checks an output folder against.
pub(super) struct FolderCheck<'a> {
    /// This run's settings.
    pub(super) settings: &'a RunSettings,
    /// This run's fingerprint of every row of its grid.
    pub(super) fingerprints: HashMap<RowKey, String>,
    /// Whether rows without a fingerprint count as made by this run's settings.
    pub(super) trust_unfingerprinted: bool,
}

impl ResultsLog {
    /// Creates `out_dir` if needed, reads the rows already there, refuses them unless they were
    /// made with this run's settings and inputs ([`check_rows`]), records the settings in the
    /// folder's settings file and opens the results file to append.
    pub(super) fn open(out_dir: &Path, check: FolderCheck<'_>) -> Result<Self> {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(IoAction::Create, out_dir, e))?;
        let path = out_dir.join(RESULTS_FILE);
        let rows = read_results(out_dir)?;
        let settings = check_rows(out_dir, &rows, &check)?;
        settings.write(out_dir)?;
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
            fingerprints: check.fingerprints,
        })
    }

    /// Whether the results file held the row of `key` when the run started.
    pub(super) fn is_done(&self, key: &RowKey) -> bool {
        self.done.contains(key)
    }

    /// Appends `row`, with this run's fingerprint of its key, to the file.
    pub(super) fn append(&mut self, mut row: ResultRow) -> Result<()> {
        row.fingerprint = self.fingerprints.get(&row.key()).cloned();
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

/// Checks the `rows` found in `out_dir` against a run: the folder's settings file must name no
/// other value of a setting this run has ([`Error::SettingsChanged`]), rows without a
/// fingerprint are refused unless trusted ([`Error::UnfingerprintedRows`]), and every row of
/// this run's grid must have this run's fingerprint ([`Error::RowsChanged`]). Returns the
/// settings to record: the folder's with this run's added (only this run's when the folder
/// holds no row).
fn check_rows(out_dir: &Path, rows: &[ResultRow], check: &FolderCheck<'_>) -> Result<RunSettings> {
    let previous = RunSettings::read(out_dir)?;
    if rows.is_empty() {
        return Ok(check.settings.clone());
    }
    let results = out_dir.join(RESULTS_FILE);
    match &previous {
        Some(previous) => {
            let changes = previous.changes(check.settings);
            if !changes.is_empty() {
                return Err(Error::SettingsChanged {
                    out: out_dir.to_path_buf(),
                    changes,
                });
            }
        }
        None if rows.iter().any(|row| row.fingerprint.is_some()) => {
            return Err(Error::SettingsFileMissing {
                settings: out_dir.join(crate::fingerprint::SETTINGS_FILE),
                results,
            });
        }
        None => {}
    }
    let unsigned = rows.iter().filter(|row| row.fingerprint.is_none()).count();
    if unsigned > 0 && !check.trust_unfingerprinted {
        return Err(Error::UnfingerprintedRows {
            path: results,
            count: unsigned,
        });
    }
    let changed: Vec<&ResultRow> = rows
        .iter()
        .filter(|row| {
            let expected = check.fingerprints.get(&row.key());
            matches!((&row.fingerprint, expected), (Some(have), Some(want)) if have != want)
        })
        .collect();
    if let Some(first) = changed.first() {
        return Err(Error::RowsChanged {
            path: results,
            count: changed.len(),
            first: first.key().to_string(),
        });
    }
    Ok(previous.map_or_else(|| check.settings.clone(), |p| p.merged(check.settings)))
}
