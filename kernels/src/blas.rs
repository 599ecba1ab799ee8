//! Run-time lookup of a CBLAS library, as `KVPRESS_BLAS` and `KVPRESS_BLAS_LIB` ask
//! ([`check_env`] reports a request that cannot be honoured).

use std::ffi::c_int;
use std::sync::OnceLock;

/// `cblas_sgemm` (row- or column-major single-precision matrix product).
///
/// Calling it is unsafe: every pointer must be valid for the elements the dimensions and
/// leading dimensions address (A and B read, C read and written), and C must not overlap A or
/// B.
pub(super) type CblasSgemm = unsafe extern "C" fn(
    layout: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

/// CBLAS constants.
pub(super) const ROW_MAJOR: c_int = 101;
pub(super) const NO_TRANS: c_int = 111;
pub(super) const TRANS: c_int = 112;

pub(super) struct Blas {
    pub name: String,
    pub sgemm: CblasSgemm,
    // Keeps the library loaded for as long as `sgemm` may be called.
    _library: libloading::Library,
}

static BLAS: OnceLock<std::result::Result<Option<Blas>, BlasEnvError>> = OnceLock::new();

const CANDIDATES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
];

/// The values `KVPRESS_BLAS` takes, for messages.
pub const KVPRESS_BLAS_VALUES: &str = "auto (the default: OpenBLAS when found, else the pure-Rust \
     gemm), on or 1 (OpenBLAS must be found), off or 0 (the pure-Rust gemm)";

/// What the environment asks for: `KVPRESS_BLAS` and `KVPRESS_BLAS_LIB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlasRequest {
    /// `KVPRESS_BLAS=off` (or `0`): the pure-Rust `gemm`, whatever `KVPRESS_BLAS_LIB` says.
    Off,
    /// `KVPRESS_BLAS` unset, empty or `auto`: the first usual OpenBLAS name that loads, else
    /// `gemm`.
    Auto,
    /// `KVPRESS_BLAS=on` (or `1`): one of the usual OpenBLAS names must load.
    Required,
    /// `KVPRESS_BLAS_LIB=PATH` (unless `KVPRESS_BLAS=off`): that library must load and export
    /// `cblas_sgemm`.
    Library(String),
}

/// A BLAS setting of the environment that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlasEnvError {
    /// `KVPRESS_BLAS` has a value other than those in [`KVPRESS_BLAS_VALUES`].
    InvalidMode {
        /// The value found.
        value: String,
    },
    /// `KVPRESS_BLAS_LIB` is not valid Unicode.
    InvalidLibrary {
        /// The value found (lossily decoded).
        value: String,
    },
    /// `KVPRESS_BLAS_LIB` names a path that does not exist.
    LibraryMissing {
        /// The path.
        path: String,
    },
    /// `KVPRESS_BLAS_LIB` names a file that does not load as a shared library.
    LibraryNotLoadable {
        /// The path.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// `KVPRESS_BLAS_LIB` names a library without `cblas_sgemm`.
    NoCblasSgemm {
        /// The path.
        path: String,
    },
    /// `KVPRESS_BLAS=off` and `KVPRESS_BLAS_LIB` names a library: one of them would be ignored.
    LibraryButOff {
        /// The library named.
        path: String,
    },
    /// `KVPRESS_BLAS=on` but none of the usual OpenBLAS names loads.
    NoneFound {
        /// The names tried.
        tried: Vec<String>,
    },
}

impl std::fmt::Display for BlasEnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidMode { value } => write!(
                f,
                "KVPRESS_BLAS={value:?} is not valid: valid values are {KVPRESS_BLAS_VALUES}"
            ),
            Self::InvalidLibrary { value } => write!(
                f,
                "KVPRESS_BLAS_LIB={value:?} is not valid Unicode: give the path of a CBLAS library"
            ),
            Self::LibraryMissing { path } => write!(
                f,
                "KVPRESS_BLAS_LIB={path}: no such file; give the path of a CBLAS library (e.g. \
                 libopenblas.so.0) or unset it"
            ),
            Self::LibraryNotLoadable { path, reason } => write!(
                f,
                "KVPRESS_BLAS_LIB={path}: cannot load it as a shared library: {reason}"
            ),
            Self::NoCblasSgemm { path } => write!(
                f,
                "KVPRESS_BLAS_LIB={path}: the library loads but has no `cblas_sgemm`; give a \
                 CBLAS library such as OpenBLAS"
            ),
            Self::LibraryButOff { path } => write!(
                f,
                "KVPRESS_BLAS_LIB={path} names a library, but KVPRESS_BLAS=off turns BLAS off: \
                 unset one of them (KVPRESS_BLAS=off uses the pure-Rust gemm; KVPRESS_BLAS_LIB \
                 alone uses that library)"
            ),
            Self::NoneFound { tried } => write!(
                f,
                "KVPRESS_BLAS=on but no BLAS library loads (tried {}); install OpenBLAS, name \
                 one with KVPRESS_BLAS_LIB, or use KVPRESS_BLAS=auto",
                tried.join(", ")
            ),
        }
    }
}

impl std::error::Error for BlasEnvError {}

/// The request that `KVPRESS_BLAS` (`blas`) and `KVPRESS_BLAS_LIB` (`library`) make.
pub fn parse_env(
    blas: Option<&str>,
    library: Option<&str>,
) -> std::result::Result<BlasRequest, BlasEnvError> {
    let mode = blas.map(str::trim).unwrap_or_default().to_ascii_lowercase();
    let library = library.map(str::trim).filter(|l| !l.is_empty());
    match (mode.as_str(), library) {
        ("off" | "0", None) => Ok(BlasRequest::Off),
        ("off" | "0", Some(path)) => Err(BlasEnvError::LibraryButOff {
            path: path.to_string(),
        }),
        ("" | "auto" | "on" | "1", Some(path)) => Ok(BlasRequest::Library(path.to_string())),
        ("" | "auto", None) => Ok(BlasRequest::Auto),
        ("on" | "1", None) => Ok(BlasRequest::Required),
        _ => Err(BlasEnvError::InvalidMode {
            value: blas.unwrap_or_default().to_string(),
        }),
    }
}

/// [`parse_env`] of this process's environment.
pub fn request_from_env() -> std::result::Result<BlasRequest, BlasEnvError> {
    let read = |name: &str| std::env::var_os(name).map(|v| v.into_string());
    let blas = match read("KVPRESS_BLAS") {
        Some(Err(value)) => {
            return Err(BlasEnvError::InvalidMode {
                value: value.to_string_lossy().into_owned(),
            })
        }
        Some(Ok(value)) => Some(value),
        None => None,
    };
    let library = match read("KVPRESS_BLAS_LIB") {
        Some(Err(value)) => {
            return Err(BlasEnvError::InvalidLibrary {
                value: value.to_string_lossy().into_owned(),
            })
        }
        Some(Ok(value)) => Some(value),
        None => None,
    };
    parse_env(blas.as_deref(), library.as_deref())
}

/// Checks `KVPRESS_BLAS` and `KVPRESS_BLAS_LIB` by loading the library they ask for, as the
/// kernels do on their first large product (the result is kept for them). An error names the
/// variable, its value and what is valid; without one, the kernels use what was asked for.
pub fn check_env() -> std::result::Result<(), BlasEnvError> {
    BLAS.get_or_init(load_from_env)
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

fn load_from_env() -> std::result::Result<Option<Blas>, BlasEnvError> {
    load(&request_from_env()?)
}

/// Loads the library `request` asks for: `None` for `gemm`.
pub(super) fn load(request: &BlasRequest) -> std::result::Result<Option<Blas>, BlasEnvError> {
    match request {
        BlasRequest::Off => Ok(None),
        BlasRequest::Library(path) => {
            if path.contains('/') && !std::path::Path::new(path).exists() {
                return Err(BlasEnvError::LibraryMissing { path: path.clone() });
            }
            match open(path) {
                Ok(Some(blas)) => Ok(Some(blas)),
                Ok(None) => Err(BlasEnvError::NoCblasSgemm { path: path.clone() }),
                Err(reason) => Err(BlasEnvError::LibraryNotLoadable {
                    path: path.clone(),
                    reason,
                }),
            }
        }
        BlasRequest::Auto | BlasRequest::Required => {
            let found = CANDIDATES.iter().find_map(|name| open(name).ok().flatten());
            if found.is_none() && *request == BlasRequest::Required {
                return Err(BlasEnvError::NoneFound {
                    tried: CANDIDATES.iter().map(|s| s.to_string()).collect(),
                });
            }
            Ok(found)
        }
    }
}

/// The library `name` with its `cblas_sgemm`: `Err` (the loader's message) when it does not
/// load, `Ok(None)` when it has no `cblas_sgemm`.
fn open(name: &str) -> std::result::Result<Option<Blas>, String> {
    // SAFETY: loading a shared library runs its initialisers. The candidates are OpenBLAS
    // builds, whose initialisers only detect the CPU and set up OpenBLAS's thread pool, with
    // no requirement on the caller; a path in `KVPRESS_BLAS_LIB` is the user's choice of
    // such a BLAS library.
    let library = unsafe { libloading::Library::new(name) }.map_err(|e| e.to_string())?;
    // SAFETY: `cblas_sgemm` is the standard CBLAS routine, whose C signature is the one
    // declared in `CblasSgemm`; the copied function pointer stays valid because the
    // `Library` is kept in `Blas`, which is never dropped (`BLAS` is a static).
    let Ok(sgemm) = (unsafe { library.get::<CblasSgemm>(b"cblas_sgemm\0") }).map(|s| *s) else {
        return Ok(None);
    };
    // One BLAS thread per call: kvpress-rs splits large products across rayon's threads
    // itself, so that BLAS threads do not spin against rayon's on the same cores.
    if let Ok(set_threads) =
        // SAFETY: OpenBLAS exports `void openblas_set_num_threads(int)`, the signature
        // requested; the symbol is only used while `library` is alive.
        unsafe { library.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") }
    {
        // SAFETY: `set_threads` is OpenBLAS's `openblas_set_num_threads(int)` (above),
        // which takes any positive thread count; the library is still loaded.
        unsafe { set_threads(1) };
    }
    Ok(Some(Blas {
        name: name.to_string(),
        sgemm,
        _library: library,
    }))
}

/// The BLAS the kernels use; `None` for `gemm` (also when the environment's request failed:
/// [`check_env`] reports that).
pub(super) fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(load_from_env).as_ref().ok()?.as_ref()
}

/// The library used for large f32 products: the BLAS found at run time, or `gemm` (pure Rust;
/// with the reason when the environment asked for a library that did not load).
pub fn blas_backend() -> String {
    match BLAS.get_or_init(load_from_env) {
        Ok(Some(b)) => format!("cblas ({})", b.name),
        Ok(None) => "gemm (pure Rust)".to_string(),
        Err(error) => format!("gemm (pure Rust), because {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvpress_blas_takes_auto_on_off_and_refuses_the_rest() {
        for (value, request) in [
            (None, BlasRequest::Auto),
            (Some(""), BlasRequest::Auto),
            (Some("auto"), BlasRequest::Auto),
            (Some("on"), BlasRequest::Required),
            (Some("1"), BlasRequest::Required),
            (Some("OFF"), BlasRequest::Off),
            (Some("0"), BlasRequest::Off),
        ] {
            assert_eq!(parse_env(value, None), Ok(request), "{value:?}");
        }
        for value in ["yes", "openblas", "2", "of"] {
            let error = parse_env(Some(value), None).unwrap_err();
            assert_eq!(
                error,
                BlasEnvError::InvalidMode {
                    value: value.to_string()
                }
            );
            let message = error.to_string();
            assert!(
                message.contains(value) && message.contains("auto"),
                "{message}"
            );
            assert!(message.contains("off or 0"), "{message}");
        }
    }

    #[test]
    fn kvpress_blas_lib_is_used_unless_blas_is_off() {
        let lib = Some("/opt/lib/libcblas.so");
        let named = BlasRequest::Library("/opt/lib/libcblas.so".to_string());
        assert_eq!(parse_env(None, lib), Ok(named.clone()));
        assert_eq!(parse_env(Some("on"), lib), Ok(named));
        assert!(matches!(
            parse_env(Some("off"), lib),
            Err(BlasEnvError::LibraryButOff { .. })
        ));
        assert_eq!(parse_env(None, Some("  ")), Ok(BlasRequest::Auto));
        assert!(parse_env(Some("bogus"), lib).is_err());
    }

    #[test]
    fn a_named_library_that_does_not_load_is_an_error_naming_it() {
        let missing = "/nonexistent/libopenblas.so.0";
        let error = load(&BlasRequest::Library(missing.to_string()))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            error,
            BlasEnvError::LibraryMissing {
                path: missing.to_string()
            }
        );
        assert!(error.to_string().contains(missing), "{error}");
        let not_a_library = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let error = load(&BlasRequest::Library(not_a_library.to_string()))
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&error, BlasEnvError::LibraryNotLoadable { path, .. } if path == not_a_library),
            "{error:?}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_library_without_cblas_sgemm_is_an_error() {
        let error = load(&BlasRequest::Library("libm.so.6".to_string()))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            error,
            BlasEnvError::NoCblasSgemm {
                path: "libm.so.6".to_string()
            }
        );
        assert!(error.to_string().contains("cblas_sgemm"), "{error}");
    }

    #[test]
    fn off_loads_nothing() {
        assert!(load(&BlasRequest::Off).unwrap().is_none());
    }
}
