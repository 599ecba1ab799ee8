//! Environment variables, checked at start: a value that cannot be honoured is an error naming
//! the variable, its value and what is valid, before any work.

use crate::files::text;
use crate::harness::{fails, succeeds, Case, File};

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        fails(&["presses"], &["RAYON_NUM_THREADS=0 is not valid", "from 1 to"]).env(&[("RAYON_NUM_THREADS", "0")]),
        fails(&["presses"], &["RAYON_NUM_THREADS=\"four\" is not a number of threads"]).env(&[("RAYON_NUM_THREADS", "four")]),
        fails(&["presses"], &["RAYON_NUM_THREADS=\"-1\" is not a number of threads"]).env(&[("RAYON_NUM_THREADS", "-1")]),
        fails(&["presses"], &["RAYON_NUM_THREADS=\" 5\" has spaces around the number", "write the digits alone"]).env(&[("RAYON_NUM_THREADS", " 5")]),
        fails(&["presses"], &["RAYON_NUM_THREADS=\"1.5\" is not a number of threads"]).env(&[("RAYON_NUM_THREADS", "1.5")]),
        fails(&["generate", "--prompt", "hi"], &["RAYON_NUM_THREADS=100000 is too large", "4 x the"]).env(&[("RAYON_NUM_THREADS", "100000")]),
        fails(&["presses"], &["KVPRESS_BLAS=\"yes\" is not valid", "auto", "off or 0"]).env(&[("KVPRESS_BLAS", "yes")]),
        fails(&["bench", "--context", "64"], &["KVPRESS_BLAS=\"openblas\" is not valid"]).env(&[("KVPRESS_BLAS", "openblas")]),
        fails(&["presses"], &["KVPRESS_BLAS_LIB=/nonexistent/libopenblas.so.0: no such file"]).env(&[("KVPRESS_BLAS_LIB", "/nonexistent/libopenblas.so.0")]),
        fails(&["presses"], &["KVPRESS_BLAS_LIB={dir}/libfake.so: cannot load it as a shared library"]).env(&[("KVPRESS_BLAS_LIB", "{dir}/libfake.so")]).files([text("libfake.so", "not a shared library")]),
        fails(&["presses"], &["KVPRESS_BLAS_LIB=/nonexistent/lib.so names a library, but KVPRESS_BLAS=off turns BLAS off", "unset one of them"]).env(&[("KVPRESS_BLAS", "off"), ("KVPRESS_BLAS_LIB", "/nonexistent/lib.so")]),
        fails(&["presses"], &["KVPRESS_BLAS_LIB=/lib/x86_64-linux-gnu/libc.so.6: the library loads but has no `cblas_sgemm`"]).env(&[("KVPRESS_BLAS_LIB", "/lib/x86_64-linux-gnu/libc.so.6")]),
        succeeds(&["presses"], &["knorm"]).env(&[("KVPRESS_BLAS", "off")]),
        succeeds(&["presses"], &["snapkv"]).env(&[("RAYON_NUM_THREADS", "1"), ("KVPRESS_BLAS", "auto")]),
        succeeds(&["presses"], &["snapkv"]).env(&[("RAYON_NUM_THREADS", "")]),
        // KVPRESS_HOME: where the default model is kept.
        fails(&["generate", "--prompt", "hi"], &["{dir}/home.txt is a file, not a folder", "set KVPRESS_HOME to a folder"]).env(&[("KVPRESS_HOME", "{dir}/home.txt")]).files([text("home.txt", "not a folder")]),
        fails(&["fetch-model"], &["KVPRESS_HOME {dir}/home.txt is a file, not a folder"]).env(&[("KVPRESS_HOME", "{dir}/home.txt")]).files([text("home.txt", "not a folder")]),
        fails(&["run", "--context", "{dir}/home.txt", "--question", "q"], &["the default model is not at {dir}/empty/models/", "fetch-model", "or pass --model PATH"]).env(&[("KVPRESS_HOME", "{dir}/empty")]).files([text("home.txt", "text"), ("empty".to_string(), File::Folder)]),
    ]
}
