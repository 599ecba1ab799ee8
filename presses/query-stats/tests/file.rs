//! The statistics file: it round-trips, and every kind of damage or misuse is an error naming
//! the file and the problem (never a panic, never a file read as something else).

mod common;

use std::path::Path;

use presses_query_stats::file::{HEADER_KEY, QUERY_COV, QUERY_MEAN, Q_FILTERS};
use presses_query_stats::{cache, QueryStatsFile, StatsFileError};

fn bytes_of(dir: &Path, seed: u64) -> Vec<u8> {
    std::fs::read(common::write_small(dir, "stats.safetensors", seed)).unwrap()
}

fn read_error(bytes: &[u8]) -> StatsFileError {
    QueryStatsFile::from_bytes(bytes, Path::new("x.safetensors")).unwrap_err()
}

#[test]
fn a_calibrated_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = common::random_tensors(common::SMALL, 1);
    let path = common::write(dir.path(), "a.safetensors", common::SMALL, tensors.clone());
    let file = QueryStatsFile::read(&path).unwrap();
    let header = file.header.as_ref().unwrap();
    assert_eq!(header.shape, common::SMALL);
    assert_eq!(header.tensor_sha256.len(), 4);
    assert_eq!(file.tensor(QUERY_MEAN).unwrap().data, tensors.query_mean);
    assert_eq!(file.tensor(QUERY_COV).unwrap().data, tensors.query_cov);
    assert_eq!(file.tensor(Q_FILTERS).unwrap().data, tensors.q_filters);
    assert_eq!(file.tensor(Q_FILTERS).unwrap().shape, [4, 2, 8]);
    assert_eq!(file.to_bytes().unwrap(), std::fs::read(&path).unwrap());
}

/// `bytes` with the JSON header's length and text (first 8 bytes, then the header) replaced
/// through `edit` of its `HEADER_KEY` value.
fn with_header(bytes: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut outer: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let text = outer["__metadata__"][HEADER_KEY]
        .as_str()
        .unwrap()
        .to_string();
    let mut header: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut header);
    outer["__metadata__"][HEADER_KEY] = serde_json::Value::String(header.to_string());
    let mut json = outer.to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + n..]);
    out
}

#[test]
fn damaged_or_foreign_bytes_are_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = bytes_of(dir.path(), 2);

    let error = read_error(b"not a safetensors file at all").to_string();
    assert!(error.contains("not a safetensors file"), "{error}");
    assert!(error.contains("x.safetensors"), "{error}");

    // A flipped bit in the last tensor's data.
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    let error = read_error(&flipped);
    assert!(
        matches!(error, StatsFileError::ChecksumMismatch { .. }),
        "{error}"
    );

    let newer = with_header(&good, |h| h["format_version"] = 2.into());
    let error = read_error(&newer).to_string();
    assert!(error.contains("format version is 2"), "{error}");
    assert!(error.contains("reads version 1"), "{error}");

    let extra = with_header(&good, |h| h["colour"] = "blue".into());
    let error = read_error(&extra).to_string();
    assert!(error.contains("unknown field `colour`"), "{error}");

    // A header whose shape does not fit the tensors.
    let layers = with_header(&good, |h| h["shape"]["n_layers"] = 5.into());
    let error = read_error(&layers);
    assert!(matches!(error, StatsFileError::Shape { .. }), "{error}");
    assert!(error.to_string().contains("[5, 2, 8]"), "{error}");

    // A header listing a tensor the file does not hold.
    let listed = with_header(&good, |h| {
        h["tensor_sha256"]["query_extra"] = "00".into();
    });
    let error = read_error(&listed).to_string();
    assert!(error.contains("does not hold"), "{error}");
}

#[test]
fn non_finite_values_and_negative_variances_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = common::random_tensors(common::SMALL, 3);
    // Layer 2, head 1, dimension 0 of the mean.
    tensors.query_mean[2 * 32 + 8] = f32::NAN;
    let path = dir.path().join("nan.safetensors");
    let error = QueryStatsFile::calibrated(&path, common::header(common::SMALL), tensors)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("query_mean") && error.contains("NaN"),
        "{error}"
    );
    assert!(error.contains("layer 2"), "{error}");

    let mut tensors = common::random_tensors(common::SMALL, 3);
    tensors.query_cov[(4 + 3) * 64 + 2 * 8 + 2] = -0.5;
    let error = QueryStatsFile::calibrated(&path, common::header(common::SMALL), tensors)
        .unwrap_err()
        .to_string();
    assert!(error.contains("negative variance"), "{error}");
    assert!(error.contains("layer 1, head 3, dimension 2"), "{error}");
}

#[test]
fn unknown_tensors_and_empty_files_are_refused() {
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    let bytes = safetensors::serialize([("weights", view)], None).unwrap();
    let error = read_error(&bytes).to_string();
    assert!(error.contains("a tensor `weights`"), "{error}");
    assert!(
        error.contains("query_mean, query_cov, q_filters"),
        "{error}"
    );
    let empty = safetensors::serialize(
        Vec::<(&str, safetensors::tensor::TensorView<'_>)>::new(),
        None,
    )
    .unwrap();
    assert!(read_error(&empty).to_string().contains("holds no tensor"));
    let ints = vec![0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2], &ints).unwrap();
    let bytes = safetensors::serialize([(Q_FILTERS, view)], None).unwrap();
    let error = read_error(&bytes).to_string();
    assert!(error.contains("valid are F32, F16, BF16, F64"), "{error}");
}

#[test]
fn the_cache_reads_a_file_again_once_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_small(dir.path(), "stats.safetensors", 4);
    let first = cache::load(&path).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &cache::load(&path).unwrap()));
    // Written again (another size: a different n_queries in the header), atomically as
    // calibrate-queries does.
    let tensors = common::random_tensors(common::SMALL, 5);
    let mut header = common::header(common::SMALL);
    header.n_queries = 123_456_789;
    let other = dir.path().join("other.safetensors");
    let file = QueryStatsFile::calibrated(&other, header, tensors.clone()).unwrap();
    std::fs::write(&other, file.to_bytes().unwrap()).unwrap();
    std::fs::rename(&other, &path).unwrap();
    let second = cache::load(&path).unwrap();
    assert_eq!(second.tensor(Q_FILTERS).unwrap().data, tensors.q_filters);
    std::fs::remove_file(&path).unwrap();
    let error = cache::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("cannot read the query statistics file"),
        "{error}"
    );
    let error = cache::load(dir.path()).unwrap_err().to_string();
    assert!(error.contains("not a file"), "{error}");
}

#[test]
fn a_wrong_path_is_refused_from_the_header_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Model weights given by mistake: refused by their tensor names.
    let data = vec![0u8; 1 << 20];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![512, 512], &data)
        .unwrap();
    let weights = dir.path().join("model.safetensors");
    std::fs::write(
        &weights,
        safetensors::serialize([("model.embed_tokens.weight", view)], None).unwrap(),
    )
    .unwrap();
    let error = QueryStatsFile::read(&weights).unwrap_err().to_string();
    assert!(error.contains("model.safetensors"), "{error}");
    assert!(
        error.contains("a tensor `model.embed_tokens.weight`"),
        "{error}"
    );
    // A text file, and one shorter than a safetensors length prefix.
    for (name, bytes) in [
        ("notes.txt", b"some notes, not tensors at all".as_slice()),
        ("short.bin", b"abc".as_slice()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let error = QueryStatsFile::read(&path).unwrap_err().to_string();
        assert!(error.contains(name), "{error}");
        assert!(error.contains("not a safetensors file"), "{error}");
    }
}
