//! Borrowing the f32 storage of a CPU tensor.

use candle_core::{DType, Storage, Tensor};

/// Whether `t` is an f32 tensor on the CPU.
pub fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Calls `f` with the tensor's whole f32 storage, its start offset and strides (in elements).
/// Returns `None` when the tensor is not an f32 CPU tensor.
pub fn f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32], usize, &[usize]) -> R) -> Option<R> {
    if !is_cpu_f32(t) {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>().ok()?;
            Some(f(data, layout.start_offset(), layout.stride()))
        }
        _ => None,
    }
}
