// Appending one decoded token per KV head into the flattened cache, in place.
//
// The cache is one buffer `kv` of shape (2, rows, head_dim): keys in kv[0], values in kv[1]; head
// h owns rows offsets[h] .. offsets[h] + capacities[h], of which the first lengths[h] hold
// tokens. Appending writes the new row at offsets[h] + lengths[h] (no other row moves); a head
// with no slack left is skipped, and `adakv_increment_lengths` then leaves its length unchanged,
// so the caller can see it (the Rust side makes room before it appends).
#include "common.cuh"

// grid (heads, 2), block >= head_dim threads: block (h, 0) writes the key row, (h, 1) the value.
template <typename T>
__device__ void append_impl(T *kv, const T *new_keys, const T *new_values,
                            const uint32_t *offsets, const uint32_t *lengths,
                            const uint32_t *capacities, uint32_t rows, uint32_t head_dim) {
  const uint32_t h = blockIdx.x;
  const uint32_t len = lengths[h];
  if (len >= capacities[h]) return;
  const T *src = (blockIdx.y == 0 ? new_keys : new_values) + (size_t)h * head_dim;
  T *dst = kv + (size_t)blockIdx.y * rows * head_dim + (size_t)(offsets[h] + len) * head_dim;
  for (uint32_t i = threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = src[i];
}

#define APPEND(T, SUFFIX)                                                                        \
  extern "C" __global__ void adakv_append_##SUFFIX(                                              \
      T *kv, const T *new_keys, const T *new_values, const uint32_t *offsets,                    \
      const uint32_t *lengths, const uint32_t *capacities, uint32_t rows, uint32_t head_dim) {   \
    append_impl<T>(kv, new_keys, new_values, offsets, lengths, capacities, rows, head_dim);      \
  }
ADAKV_FOR_EACH_DTYPE(APPEND)

// One thread per head: lengths[h] += 1 where the head had room (the append above wrote it).
extern "C" __global__ void adakv_increment_lengths(uint32_t *lengths, const uint32_t *capacities,
                                                   uint32_t heads) {
  const uint32_t h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h < heads && lengths[h] < capacities[h]) lengths[h] += 1;
}
