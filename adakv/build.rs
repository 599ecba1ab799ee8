//! Build script of adakv.
//!
//! With the `cuda` feature, compiles the kernels in `cuda/*.cu` to PTX with nvcc (found through
//! `NVCC`, `CUDA_HOME`/`CUDA_PATH`, or `PATH`) for `sm_$CUDA_COMPUTE_CAP` (default 90), into
//! `OUT_DIR`, where `src/cuda/kernels.rs` includes them. Without the feature it does nothing, so
//! CPU builds need no CUDA toolkit.
//!
//! When `KVPRESS_CUDA_STUBS` names a folder of stub CUDA libraries (see `scripts/gpu-bundle.sh`),
//! test and example binaries link against them, so they can be built on a machine without a GPU
//! and run where the real libraries exist.
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: [&str; 4] = ["append", "compact", "decode_attention", "top_k"];
const STUB_LIBS: [&str; 6] = ["cuda", "nvrtc", "curand", "cublas", "cublasLt", "cudart"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KVPRESS_CUDA_STUBS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=cuda/common.cuh");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let arch = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let arch = arch.trim().replace('.', "");
    for kernel in KERNELS {
        let source = format!("cuda/{kernel}.cu");
        println!("cargo:rerun-if-changed={source}");
        let ptx = out.join(format!("{kernel}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{arch}")])
            .arg(&source)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("cannot run nvcc ({}): {e}", nvcc.display()));
        assert!(
            status.success(),
            "nvcc failed on {source} ({status}); see the messages above"
        );
    }
    if let Some(stubs) = std::env::var_os("KVPRESS_CUDA_STUBS") {
        link_stubs(Path::new(&stubs));
    }
}

/// nvcc from `NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, else `nvcc` on `PATH`.
fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return PathBuf::from(path);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let candidate = Path::new(&root).join("bin").join("nvcc");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}

/// Links test and example binaries against soname-correct stub libraries: the dynamic loader
/// resolves the real ones on the GPU machine.
fn link_stubs(stubs: &Path) {
    println!("cargo:rustc-link-search=native={}", stubs.display());
    for target in ["tests", "examples"] {
        println!("cargo:rustc-link-arg-{target}=-Wl,--unresolved-symbols=ignore-all");
        println!("cargo:rustc-link-arg-{target}=-Wl,--no-as-needed");
        for lib in STUB_LIBS {
            println!("cargo:rustc-link-arg-{target}=-l{lib}");
        }
    }
}
