// Stand-in for the CUDA toolkit's <cuda_bf16.h> when kernels/recap.cu is compiled for the CPU
// by kernels/emu/emu.cpp (the emulated-kernel tests): the bf16 type as its 16 bits and the two
// conversions recap.cu uses, with the GPU's rounding (to nearest, ties to even; every NaN
// becomes the canonical 0x7fff, as `cvt.rn.bf16.f32` gives), so an emulated bf16 kernel stores
// the same bits a GPU stores.
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fffu};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}
