//! The environment variables `kvpress` reads, checked at start: `RAYON_NUM_THREADS` (the
//! threads of every kernel) and the BLAS settings `KVPRESS_BLAS` and `KVPRESS_BLAS_LIB`
//! ([`kvpress::kernels::blas::check_env`]). A value that cannot be honoured is an error naming
//! the variable, its value and what is valid, before any work.

use anyhow::{bail, Result};

/// The most rayon threads per core `RAYON_NUM_THREADS` may ask for: more only adds switching
/// (and a huge count makes starting the pool hang).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// Checks every variable; the first problem is the error.
pub fn check_environment() -> Result<()> {
    check_rayon_threads(std::env::var_os("RAYON_NUM_THREADS").as_deref(), cores())?;
    kvpress::kernels::blas::check_env()?;
    Ok(())
}

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `RAYON_NUM_THREADS` (`value`) must be unset, empty, or a whole number from 1 to
/// [`MAX_THREADS_PER_CORE`] x `cores`.
pub fn check_rayon_threads(value: Option<&std::ffi::OsStr>, cores: usize) -> Result<()> {
    let Some(value) = value else {
        return Ok(());
    };
    let limit = MAX_THREADS_PER_CORE * cores;
    let text = value.to_string_lossy();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(());
    }
    let valid = format!(
        "valid is a whole number from 1 to {limit} ({MAX_THREADS_PER_CORE} x the {cores} cores \
         available), or unset for one thread per core"
    );
    if trimmed != text {
        bail!(
            "RAYON_NUM_THREADS={text:?} has spaces around the number, which rayon does not read \
             (it would use one thread per core): write the digits alone; {valid}"
        );
    }
    match trimmed.parse::<usize>() {
        Ok(0) => bail!("RAYON_NUM_THREADS=0 is not valid: {valid}"),
        Ok(n) if n > limit => bail!("RAYON_NUM_THREADS={n} is too large: {valid}"),
        Ok(_) => Ok(()),
        Err(_) => bail!("RAYON_NUM_THREADS={text:?} is not a number of threads: {valid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn rayon_threads_between_one_and_four_per_core() {
        for ok in [None, Some(""), Some("1"), Some("8")] {
            assert!(check_rayon_threads(ok.map(OsStr::new), 2).is_ok(), "{ok:?}");
        }
        for (bad, phrase) in [
            ("0", "RAYON_NUM_THREADS=0 is not valid"),
            ("9", "RAYON_NUM_THREADS=9 is too large"),
            (" 2 ", "has spaces around the number"),
            ("100000", "from 1 to 8"),
            ("four", "is not a number of threads"),
            ("-1", "is not a number of threads"),
        ] {
            let error = check_rayon_threads(Some(OsStr::new(bad)), 2)
                .unwrap_err()
                .to_string();
            assert!(error.contains(phrase), "{bad}: {error}");
        }
    }
}
