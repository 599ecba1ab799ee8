//! A damaged context file never loads: a flipped byte anywhere (every byte of the header region
//! with two masks; in the tensor payload, every 251st byte plus the first and last byte of every
//! tensor, with a one-bit mask: about 4,100 positions of the ~1 MB payload, since every 7th byte
//! took over 4 minutes on 2 cores) and a file cut at any safetensors section boundary give a
//! context-file error every time, never a load and never a panic.

mod context_file_support;

use std::collections::BTreeMap;
use std::time::Instant;

use context_file_support::{compress, model, press};
use kvpress::hooks::context_file::{load_bytes, save, ContextFileError, FilePart};
use kvpress::hooks::Error;
use safetensors::tensor::SafeTensors;

/// Stride of the flipped payload bytes (a prime, so that the flipped bytes fall at every
/// offset within the 2- and 4-byte values).
const PAYLOAD_STRIDE: usize = 251;

/// A saved tiny context (dense, f32) and its bytes.
fn saved_file(dir: &tempfile::TempDir) -> (std::path::PathBuf, Vec<u8>) {
    let model = model();
    let press = press("press = \"knorm\"\ncompression_ratio = 0.5\n");
    let (session, ids) = compress(model, context_file_support::TINY_CONTEXT, press.as_ref());
    assert!(
        ids.len() <= 40,
        "a tiny context (the chat template included): {} tokens",
        ids.len()
    );
    let path = dir.path().join("tiny.kvp");
    save(&path, model, &session, &ids, press.as_ref()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    load_bytes(&path, &bytes, model).expect("the intact file loads");
    (path, bytes)
}

/// Length of the header region (the 8-byte length prefix and the JSON).
fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Every tensor's byte range in the file, by its start.
fn tensor_ranges(bytes: &[u8]) -> BTreeMap<usize, (usize, String)> {
    let start = header_end(bytes);
    let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
    metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            (start + s, (start + e, name))
        })
        .collect()
}

/// The error of loading `bytes`, which must be a context-file error.
fn load_error(path: &std::path::Path, bytes: &[u8], what: &str) -> ContextFileError {
    match load_bytes(path, bytes, model()) {
        Err(Error::ContextFile(error)) => *error,
        Err(other) => panic!("{what}: not a context-file error: {other}"),
        Ok(_) => panic!("{what}: the damaged file loaded"),
    }
}

#[test]
fn every_flipped_byte_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut bytes) = saved_file(&dir);
    let header_end = header_end(&bytes);
    let start = Instant::now();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut header_flips = 0;
    for i in 0..header_end {
        for mask in [1u8 << (i % 8), 0xff] {
            bytes[i] ^= mask;
            let error = load_error(&path, &bytes, &format!("header byte {i} ^ {mask:#x}"));
            bytes[i] ^= mask;
            let kind = format!("{error:?}");
            *kinds
                .entry(kind.split([' ', '{', '(']).next().unwrap().to_string())
                .or_default() += 1;
            header_flips += 1;
        }
    }
    let header_seconds = start.elapsed().as_secs_f64();

    // Payload: the tensor holding the flipped byte is named as damaged.
    let ranges = tensor_ranges(&bytes);
    let mut positions: Vec<usize> = (header_end..bytes.len()).step_by(PAYLOAD_STRIDE).collect();
    positions.extend(ranges.iter().flat_map(|(&s, (e, _))| [s, e - 1]));
    positions.sort_unstable();
    positions.dedup();
    let start = Instant::now();
    for &i in &positions {
        let (_, (end, name)) = ranges.range(..=i).next_back().unwrap();
        assert!(i < *end);
        let mask = 1u8 << (i % 8);
        bytes[i] ^= mask;
        let error = load_error(&path, &bytes, &format!("payload byte {i} ^ {mask:#x}"));
        bytes[i] ^= mask;
        match error {
            ContextFileError::ChecksumMismatch {
                part: FilePart::Tensor(damaged),
                ..
            } => assert_eq!(&damaged, name, "byte {i}"),
            other => panic!("payload byte {i}: {other}"),
        }
    }
    let payload_seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "file of {} bytes: header region {header_end} bytes, {header_flips} flips (every byte, \
         masks 1<<(i%8) and 0xff) in {header_seconds:.1} s, errors {kinds:?}; payload {} bytes, \
         {} flips (one byte in every {PAYLOAD_STRIDE} and each tensor's first and last) in \
         {payload_seconds:.1} s, all checksum mismatches naming the tensor",
        bytes.len(),
        bytes.len() - header_end,
        positions.len()
    );
    assert!(positions.len() >= 2000);
}

#[test]
fn a_file_cut_at_any_section_boundary_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = saved_file(&dir);
    let header_end = header_end(&bytes);
    let mut cuts = vec![0, 1, 4, 7, 8, 9, header_end / 2, header_end - 1, header_end];
    for (&start, (end, _)) in &tensor_ranges(&bytes) {
        cuts.extend([start, start + 1, end - 1, *end]);
    }
    cuts.retain(|&cut| cut < bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    for &cut in &cuts {
        let error = load_error(&path, &bytes[..cut], &format!("cut at {cut}"));
        assert!(
            matches!(
                error,
                ContextFileError::NotAContextFile { .. } | ContextFileError::Damaged { .. }
            ),
            "cut at {cut}: {error}"
        );
    }
    eprintln!(
        "{} truncation points (length prefix, header, every tensor's start and end) of a {} \
         byte file: all refused",
        cuts.len(),
        bytes.len()
    );
}
