// Per-core int8 multiply-accumulate peaks of this x86 CPU, the yardsticks the README's GEMM shares use:
// one zmm `vpdpbusd` (AVX-512 VNNI) and AMX `tdpbusd`, each in a loop of 16 (4) independent accumulators held
// in registers (no memory traffic). Run one copy per core to check that the cores do not share the units.
//   gcc -O2 -mavx512f -mavx512vnni -mamx-tile -mamx-int8 bench/int8_peak.c -o /tmp/int8_peak && /tmp/int8_peak
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// The loop is written in assembly: from C, GCC kept the 24 accumulators of an array in memory and stored each
// one every iteration, which capped the loop at one `vpdpbusd` per cycle (the 209 GMAC/s per core that the
// README quoted before 2026-12-05 evening; this loop measures about twice that on the same VM).
static void vnni_peak(void) {
  long n = 20000000, left = n;
  double t0 = now();
  __asm__ volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n"
      "1:\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm8\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm9\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm10\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm11\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm12\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm13\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm14\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm15\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm16\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm17\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm18\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm19\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm20\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm21\n\t"
      "vpdpbusd %%zmm0, %%zmm1, %%zmm22\n\tvpdpbusd %%zmm0, %%zmm1, %%zmm23\n\t"
      "dec %0\n\tjnz 1b\n"
      : "+r"(left)
      :
      : "zmm0", "zmm1", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17",
        "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "cc");
  double s = now() - t0;
  printf("vpdpbusd zmm: %.1f GMAC/s per core\n", n * 16.0 * 64 / s / 1e9);
}

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((packed)) tile_config;

static void amx_peak(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
    printf("tdpbusd: the OS refused the AMX tile state\n");
    return;
  }
  tile_config c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 8; i++) c.rows[i] = 16, c.colsb[i] = 64;
  _tile_loadconfig(&c);
  static int8_t a[2][16 * 64];
  static uint8_t b[2][16 * 64];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, b[0], 64);
  _tile_loadd(5, b[1], 64);
  _tile_loadd(6, a[0], 64);
  _tile_loadd(7, a[1], 64);
  long n = 10000000;
  double t0 = now();
  for (long i = 0; i < n; i++) {
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  double s = now() - t0;
  _tile_release();
  printf("tdpbusd: %.1f GMAC/s per core\n", 4.0 * n * 16 * 16 * 64 / s / 1e9);
}

int main(void) {
  vnni_peak();
  if (__builtin_cpu_supports("amx-int8")) amx_peak();
  return 0;
}
