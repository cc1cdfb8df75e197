// Per-core int8 multiply-accumulate peaks of this x86 CPU, the yardsticks the README's GEMM shares use:
// one zmm `vpdpbusd` (AVX-512 VNNI) and AMX `tdpbusd`, each in a loop of independent accumulators held in
// registers (no memory traffic). Run one copy per core to check that the cores do not share the units.
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

static void vnni_peak(void) {
  __m512i acc[24];
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_epi32(i);
  __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
  long n = 200000000 / 24;
  double t0 = now();
  for (long it = 0; it < n; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __asm__ volatile("" : "+v"(a));
  }
  double s = now() - t0;
  int x = 0;
  for (int i = 0; i < 24; i++) x += _mm512_reduce_add_epi32(acc[i]);
  printf("vpdpbusd zmm: %.1f GMAC/s per core (%d)\n", n * 24.0 * 64 / s / 1e9, x & 1);
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
