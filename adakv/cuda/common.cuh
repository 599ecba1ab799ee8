// Shared helpers of the adakv kernels: element conversions for f32 / f16 / bf16 (arithmetic is
// always in f32) and the dtype suffix each exported kernel name carries.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// Instantiates `NAME##_f32`, `NAME##_f16`, `NAME##_bf16` extern "C" kernels from a template
// `NAME##_impl<T>` whose parameters are given by the variadic list, with T standing for the
// element type (PARAMS must be written with `T`).
#define ADAKV_FOR_EACH_DTYPE(INSTANTIATE) \
  INSTANTIATE(float, f32)                 \
  INSTANTIATE(__half, f16)                \
  INSTANTIATE(__nv_bfloat16, bf16)
