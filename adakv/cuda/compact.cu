// Compaction of a per-head selection: gathers the kept rows of every head of a flattened cache
// into a new buffer, head h's kept rows back to back from dst_offsets[h]. The same kernel lays
// a cache out again with more slack (keep everything, spaced destinations).
//
// kept[kept_starts[h] .. kept_starts[h + 1]] are head h's kept token indices; each is either
// local to the head (index_stride 0) or global in a (heads, index_stride) grid, as a top-k over
// a layer's flattened scores returns them (token = kept[i] - h * index_stride). Indices not below
// lengths[h] are skipped (the Rust side validates selections before launching).
#include "common.cuh"

// grid (blocks_per_head, heads, 2), block head_dim-ish threads; one row per block iteration.
template <typename T>
__device__ void compact_impl(const T *src, T *dst, const uint32_t *src_offsets,
                             const uint32_t *lengths, const uint32_t *kept,
                             const uint32_t *kept_starts, const uint32_t *dst_offsets,
                             uint32_t src_rows, uint32_t dst_rows, uint32_t head_dim,
                             uint32_t index_stride) {
  const uint32_t h = blockIdx.y;
  const uint32_t first = kept_starts[h], count = kept_starts[h + 1] - first;
  const T *src_kv = src + (size_t)blockIdx.z * src_rows * head_dim;
  T *dst_kv = dst + (size_t)blockIdx.z * dst_rows * head_dim;
  for (uint32_t j = blockIdx.x; j < count; j += gridDim.x) {
    const uint32_t token = kept[first + j] - h * index_stride;
    if (token >= lengths[h]) continue;
    const T *from = src_kv + (size_t)(src_offsets[h] + token) * head_dim;
    T *to = dst_kv + (size_t)(dst_offsets[h] + j) * head_dim;
    for (uint32_t i = threadIdx.x; i < head_dim; i += blockDim.x) to[i] = from[i];
  }
}

#define COMPACT(T, SUFFIX)                                                                       \
  extern "C" __global__ void adakv_compact_##SUFFIX(                                             \
      const T *src, T *dst, const uint32_t *src_offsets, const uint32_t *lengths,                \
      const uint32_t *kept, const uint32_t *kept_starts, const uint32_t *dst_offsets,            \
      uint32_t src_rows, uint32_t dst_rows, uint32_t head_dim, uint32_t index_stride) {          \
    compact_impl<T>(src, dst, src_offsets, lengths, kept, kept_starts, dst_offsets, src_rows,    \
                    dst_rows, head_dim, index_stride);                                           \
  }
ADAKV_FOR_EACH_DTYPE(COMPACT)

// starts[h] = first position of `sorted` (ascending global indices, length n) whose value is at
// least h * index_stride, for h = 0 ..= heads: the per-head segments of a layer-wide top-k.
extern "C" __global__ void adakv_segment_starts(const uint32_t *sorted, uint32_t n,
                                                uint32_t index_stride, uint32_t heads,
                                                uint32_t *starts) {
  const uint32_t h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h > heads) return;
  const uint64_t bound = (uint64_t)h * index_stride;
  uint32_t lo = 0, hi = n;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if ((uint64_t)sorted[mid] < bound) lo = mid + 1; else hi = mid;
  }
  starts[h] = lo;
}
