// The CUDA kernels of recap's fused ops (runtime/src/ops/cuda.rs launches them): RMSNorm, RoPE,
// SwiGLU, softmax with an optional additive mask and scale (the attention's), and log-softmax
// gathered at target tokens, each with its backward. Every kernel comes in an f32 and a bf16
// variant (suffix _f32 / _bf16, the names candle's `kernel_name` gives) and computes in f32
// whatever the storage type, so bf16 tensors lose precision only when stored.
//
// The kernels are meant to be obviously right rather than clever: a row-wise op runs one block
// per row, whose threads stride over the row and combine partial results with warp shuffles and
// one shared-memory step (`block_sum`, `block_max`); an element-wise op runs one thread per
// element (or per pair, for RoPE). Every tensor is contiguous and row-major (the Rust side makes
// it so), and every index is computed in 64 bits where a product of sizes can pass 2^31.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum of `v` over the block; every thread gets the result. blockDim.x must be a multiple of 32
// (at most 1024) and every thread of the block must call it. The first __syncthreads keeps a
// fast warp from overwriting `part` while a slow one still reads the previous call's values.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  return warp_sum(lane < n_warps ? part[lane] : 0.0f);
}

// Maximum of `v` over the block, with the same contract as block_sum.
__device__ float block_max(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  return warp_max(lane < n_warps ? part[lane] : -INFINITY);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x * r * w with r = 1 / sqrt(mean(x^2) + eps), over rows of length n.
// Grid: one block per row.

template <typename T>
__device__ float row_inv_rms(const T *x, int n, float eps) {
  float ss = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = to_f(x[j]);
    ss += v * v;
  }
  return rsqrtf(block_sum(ss) / (float)n + eps);
}

template <typename T>
__device__ void rms_norm_fwd(const T *x, const T *w, T *y, int n, float eps) {
  const size_t off = (size_t)blockIdx.x * n;
  const float r = row_inv_rms(x + off, n, eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    y[off + j] = from_f<T>(to_f(x[off + j]) * r * to_f(w[j]));
  }
}

// Backward, x part: dx = r * dy * w - c * x with c = r^3 / n * sum(dy * w * x). Also stores each
// row's r in `rs` for the weight gradient.
template <typename T>
__device__ void rms_norm_bwd(const T *x, const T *w, const T *dy, T *dx, float *rs, int n,
                             float eps) {
  const size_t off = (size_t)blockIdx.x * n;
  const float r = row_inv_rms(x + off, n, eps);
  float acc = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    acc += to_f(dy[off + j]) * to_f(w[j]) * to_f(x[off + j]);
  }
  const float c = r * r * r * block_sum(acc) / (float)n;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    dx[off + j] = from_f<T>(r * to_f(dy[off + j]) * to_f(w[j]) - c * to_f(x[off + j]));
  }
  if (threadIdx.x == 0) rs[blockIdx.x] = r;
}

// Backward, weight part: dw[j] += sum over rows i of dy[i, j] * x[i, j] * rs[i]. Grid: x over
// columns (one thread per column), y over chunks of `chunk` rows; each thread adds its chunk's
// partial sum to the f32 accumulator `dw` (zeroed by the caller) with one atomicAdd.
template <typename T>
__device__ void rms_norm_dw(const T *x, const T *dy, const float *rs, float *dw, int rows, int n,
                            int chunk) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int begin = blockIdx.y * chunk;
  const int end = min(rows, begin + chunk);
  float acc = 0.0f;
  for (int i = begin; i < end; i++) {
    const size_t k = (size_t)i * n + j;
    acc += to_f(dy[k]) * to_f(x[k]) * rs[i];
  }
  atomicAdd(dw + j, acc);
}

// Converts `len` f32 values to T (the weight gradient's accumulator to the weight's dtype).
template <typename T> __device__ void cast_from_f32(const float *src, T *dst, int len) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < len) dst[j] = from_f<T>(src[j]);
}

// ---------------------------------------------------------------------------------------------
// RoPE (HF "rotate_half" layout) of x (rows, d) where row i sits at position i % seq: the halves
// (a, b) of each row become (a cos - b sin, b cos + a sin), with cos and sin (>= seq, d / 2).
// `sign` = -1 rotates by the opposite angles, which is the backward. One thread per pair.

template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, size_t pairs, int seq, int half,
                     float sign) {
  const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const size_t row = p / half;
  const int i = (int)(p % half);
  const int pos = (int)(row % seq);
  const size_t ia = row * 2 * half + i, ib = ia + half;
  const float a = to_f(x[ia]), b = to_f(x[ib]);
  const float c = to_f(cos[(size_t)pos * half + i]);
  const float s = sign * to_f(sin[(size_t)pos * half + i]);
  y[ia] = from_f<T>(a * c - b * s);
  y[ib] = from_f<T>(b * c + a * s);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: act = silu(g) * u, element by element; backward writes dg into d[0..len) and du into
// d[len..2 len), with d silu(g) / dg = sig * (1 + g * (1 - sig)).

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T> __device__ void swiglu_fwd(const T *g, const T *u, T *y, size_t len) {
  const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= len) return;
  const float gv = to_f(g[k]);
  y[k] = from_f<T>(gv * sigmoid(gv) * to_f(u[k]));
}

template <typename T>
__device__ void swiglu_bwd(const T *g, const T *u, const T *dy, T *d, size_t len) {
  const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= len) return;
  const float gv = to_f(g[k]), uv = to_f(u[k]), dv = to_f(dy[k]);
  const float sg = sigmoid(gv), silu = gv * sg;
  d[k] = from_f<T>(dv * uv * (sg + silu * (1.0f - sg)));
  d[len + k] = from_f<T>(dv * silu);
}

// ---------------------------------------------------------------------------------------------
// Softmax over rows of length n of z = scale * x + mask. The mask is read through strides, so a
// mask broadcast over heads or query rows is never copied (a plain softmax passes one zero with
// all strides 0): row r of x is
// (b, h, i) with r = (b * heads + h) * rows_per_head + i, and its mask element j sits at
// b * mb + h * mh + i * mi + j * mj. A row whose z is all -inf gives zeros, not NaN.
// Grid: one block per row.

template <typename T>
__device__ __forceinline__ float masked(const T *x, const T *mask, size_t moff, long long mj,
                                        float scale, size_t off, int j) {
  return scale * to_f(x[off + j]) + to_f(mask[moff + (size_t)((long long)j * mj)]);
}

template <typename T>
__device__ void softmax_fwd(const T *x, const T *mask, T *y, int n, float scale, int heads,
                            int rows_per_head, long long mb, long long mh, long long mi,
                            long long mj) {
  const size_t r = blockIdx.x;
  const size_t off = r * n;
  const long long i = r % rows_per_head, bh = r / rows_per_head;
  const long long h = bh % heads, b = bh / heads;
  const size_t moff = (size_t)(b * mb + h * mh + i * mi);
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, masked(x, mask, moff, mj, scale, off, j));
  m = block_max(m);
  if (m == -INFINITY) {
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[off + j] = from_f<T>(0.0f);
    return;
  }
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(masked(x, mask, moff, mj, scale, off, j) - m);
  const float inv = 1.0f / block_sum(s);
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    y[off + j] = from_f<T>(expf(masked(x, mask, moff, mj, scale, off, j) - m) * inv);
  }
}

// Backward given the output y: dx = scale * y * (dy - sum(dy * y)). The mask gets no gradient.
template <typename T> __device__ void softmax_bwd(const T *y, const T *dy, T *dx, int n, float scale) {
  const size_t off = (size_t)blockIdx.x * n;
  float acc = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) acc += to_f(dy[off + j]) * to_f(y[off + j]);
  const float dot = block_sum(acc);
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float yv = to_f(y[off + j]);
    dx[off + j] = from_f<T>(scale * yv * (to_f(dy[off + j]) - dot));
  }
}

// ---------------------------------------------------------------------------------------------
// Log-softmax gathered at one target per row: out[r] = x[r, t] - logsumexp(x[r, :]) over rows of
// length n (the vocabulary), written in f32 whatever the logits' dtype (bf16 log-probabilities
// would be too coarse for the importance ratios built from them). The block strides over the
// row twice (maximum, then the sum of exponentials) reading the logits in their own dtype, so
// nothing of the size of the logits is written. A target outside the vocabulary gives NaN (the host cannot check device targets
// without a copy). Grid: one block per row.

template <typename T> __device__ float row_log_sum_exp(const T *x, int n) {
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, to_f(x[j]));
  m = block_max(m);
  if (m == -INFINITY) return -INFINITY;
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(to_f(x[j]) - m);
  return m + logf(block_sum(s));
}

template <typename T>
__device__ void log_softmax_gather_fwd(const T *x, const uint32_t *targets, float *out, int n) {
  const size_t off = (size_t)blockIdx.x * n;
  const float lse = row_log_sum_exp(x + off, n);
  if (threadIdx.x == 0) {
    const uint32_t t = targets[blockIdx.x];
    out[blockIdx.x] = t < (uint32_t)n ? to_f(x[off + t]) - lse : NAN;
  }
}

// Backward: dx[r, j] = g[r] * (onehot(t)[j] - softmax(x[r, :])[j]), written in the logits' dtype.
template <typename T>
__device__ void log_softmax_gather_bwd(const T *x, const uint32_t *targets, const float *g, T *dx,
                                       int n) {
  const size_t off = (size_t)blockIdx.x * n;
  const float lse = row_log_sum_exp(x + off, n);
  const uint32_t t = targets[blockIdx.x];
  const float gv = g[blockIdx.x];
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float p = expf(to_f(x[off + j]) - lse);
    dx[off + j] = from_f<T>(gv * (((uint32_t)j == t ? 1.0f : 0.0f) - p));
  }
}

// ---------------------------------------------------------------------------------------------
// The exported entry points, one per kernel and dtype.

#define RECAP_KERNELS(T, S)                                                                      \
  extern "C" __global__ void rms_norm_fwd_##S(const T *x, const T *w, T *y, int n, float eps) { \
    rms_norm_fwd<T>(x, w, y, n, eps);                                                            \
  }                                                                                              \
  extern "C" __global__ void rms_norm_bwd_##S(const T *x, const T *w, const T *dy, T *dx,        \
                                              float *rs, int n, float eps) {                     \
    rms_norm_bwd<T>(x, w, dy, dx, rs, n, eps);                                                   \
  }                                                                                              \
  extern "C" __global__ void rms_norm_dw_##S(const T *x, const T *dy, const float *rs, float *dw, \
                                             int rows, int n, int chunk) {                       \
    rms_norm_dw<T>(x, dy, rs, dw, rows, n, chunk);                                               \
  }                                                                                              \
  extern "C" __global__ void cast_from_f32_##S(const float *src, T *dst, int len) {             \
    cast_from_f32<T>(src, dst, len);                                                             \
  }                                                                                              \
  extern "C" __global__ void rope_##S(const T *x, const T *cos, const T *sin, T *y, size_t pairs, \
                                      int seq, int half, float sign) {                           \
    rope<T>(x, cos, sin, y, pairs, seq, half, sign);                                             \
  }                                                                                              \
  extern "C" __global__ void swiglu_fwd_##S(const T *g, const T *u, T *y, size_t len) {         \
    swiglu_fwd<T>(g, u, y, len);                                                                 \
  }                                                                                              \
  extern "C" __global__ void swiglu_bwd_##S(const T *g, const T *u, const T *dy, T *d,           \
                                            size_t len) {                                        \
    swiglu_bwd<T>(g, u, dy, d, len);                                                             \
  }                                                                                              \
  extern "C" __global__ void softmax_fwd_##S(const T *x, const T *mask, T *y, int n, float scale, \
                                             int heads, int rows_per_head, long long mb,         \
                                             long long mh, long long mi, long long mj) {         \
    softmax_fwd<T>(x, mask, y, n, scale, heads, rows_per_head, mb, mh, mi, mj);                  \
  }                                                                                              \
  extern "C" __global__ void softmax_bwd_##S(const T *y, const T *dy, T *dx, int n, float scale) { \
    softmax_bwd<T>(y, dy, dx, n, scale);                                                         \
  }                                                                                              \
  extern "C" __global__ void log_softmax_gather_fwd_##S(const T *x, const uint32_t *targets,     \
                                                        float *out, int n) {                     \
    log_softmax_gather_fwd<T>(x, targets, out, n);                                               \
  }                                                                                              \
  extern "C" __global__ void log_softmax_gather_bwd_##S(const T *x, const uint32_t *targets,     \
                                                        const float *g, T *dx, int n) {          \
    log_softmax_gather_bwd<T>(x, targets, g, dx, n);                                             \
  }

RECAP_KERNELS(float, f32)
RECAP_KERNELS(bf16, bf16)
