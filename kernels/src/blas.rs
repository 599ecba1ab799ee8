//! Run-time lookup of a CBLAS library.

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

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

const CANDIDATES: &[&str] = &[
    "libopenblas.so.0",
    "libopenblas.so",
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
];

fn load() -> Option<Blas> {
    if std::env::var("KVPRESS_BLAS").is_ok_and(|v| v == "off" || v == "0") {
        return None;
    }
    let explicit = std::env::var("KVPRESS_BLAS_LIB").ok();
    let candidates: Vec<String> = match explicit {
        Some(path) => vec![path],
        None => CANDIDATES.iter().map(|s| s.to_string()).collect(),
    };
    for name in candidates {
        // SAFETY: loading a shared library runs its initialisers. The candidates are OpenBLAS
        // builds, whose initialisers only detect the CPU and set up OpenBLAS's thread pool, with
        // no requirement on the caller; a path in `KVPRESS_BLAS_LIB` is the user's choice of
        // such a BLAS library.
        let Ok(library) = (unsafe { libloading::Library::new(&name) }) else {
            continue;
        };
        // SAFETY: `cblas_sgemm` is the standard CBLAS routine, whose C signature is the one
        // declared in `CblasSgemm`; the copied function pointer stays valid because the
        // `Library` is kept in `Blas`, which is never dropped (`BLAS` is a static).
        let sgemm = unsafe { library.get::<CblasSgemm>(b"cblas_sgemm\0") }.map(|s| *s);
        if let Ok(sgemm) = sgemm {
            // One BLAS thread per call: kvpress-rs splits large products across rayon's threads
            // itself, so that BLAS threads do not spin against rayon's on the same cores.
            if let Ok(set_threads) =
                // SAFETY: OpenBLAS exports `void openblas_set_num_threads(int)`, the signature
                // requested; the symbol is only used while `library` is alive.
                unsafe {
                    library.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")
                }
            {
                // SAFETY: `set_threads` is OpenBLAS's `openblas_set_num_threads(int)` (above),
                // which takes any positive thread count; the library is still loaded.
                unsafe { set_threads(1) };
            }
            return Some(Blas {
                name,
                sgemm,
                _library: library,
            });
        }
    }
    None
}

pub(super) fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(load).as_ref()
}

/// The library used for large f32 products: the BLAS found at run time, or `gemm` (pure Rust).
pub fn blas_backend() -> String {
    match blas() {
        Some(b) => format!("cblas ({})", b.name),
        None => "gemm (pure Rust)".to_string(),
    }
}
