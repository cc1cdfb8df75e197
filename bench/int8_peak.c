// Per-core int8 multiply-accumulate peaks of this x86 CPU, the yardsticks of the GEMM shares in the README and
// bench/RESULTS.md:
// one zmm `vpdpbusd` (AVX-512 VNNI, 16 accumulators), one ymm `vpdpbusd` (AVX-VNNI, 12) and AMX `tdpbusd`
// (4 tiles), each in a loop of independent accumulators held in registers (no memory traffic); the GEMMs'
// k step with its operands in L1; and the AVX2 steps, exact (two forms) and saturating, in registers. Run one
// copy per core to check that the cores do not share the units.
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
      "dec %0\n\tjnz 1b\n\tvzeroupper\n"
      : "+r"(left)
      :
      : "zmm0", "zmm1", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17",
        "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "cc");
  double s = now() - t0;
  printf("vpdpbusd zmm: %.1f GMAC/s per core\n", n * 16.0 * 64 / s / 1e9);
}

// The k step of the x86 schedules' 8 x 3 register tile (schedules/x86.py) as LLVM emits it: per step, 8 rows'
// words broadcast from memory, 3 weight vectors loaded, 24 `vpdpbusd`; its operands stay in L1 (64 steps over
// 8 rows of 1 KB and 3 blocks 16 KB apart, again and again): the best the GEMMs' k loop can do on this core.
static uint8_t step_a[8 * 1024] __attribute__((aligned(64)));
static uint8_t step_b[3 * 16 * 1024] __attribute__((aligned(64)));

static void gemm_step(void) {
  long reps = 100000;
  double t0 = now();
  for (long r = 0; r < reps; r++) {
    long k = 64;
    uint8_t *a = step_a, *b = step_b;
    __asm__ volatile(
        "1:\n\t"
        "vmovdqa64 (%2), %%zmm25\n\tvmovdqa64 0x4000(%2), %%zmm26\n\tvmovdqa64 0x8000(%2), %%zmm27\n\t"
#define ROW(off, acc0, acc1, acc2)                                                               \
  "vpbroadcastd " off "(%1), %%zmm24\n\t"                                                        \
  "vpdpbusd %%zmm25, %%zmm24, %%zmm" acc0 "\n\tvpdpbusd %%zmm26, %%zmm24, %%zmm" acc1 "\n\t" \
  "vpdpbusd %%zmm27, %%zmm24, %%zmm" acc2 "\n\t"
        ROW("0", "0", "1", "2") ROW("0x400", "3", "4", "5") ROW("0x800", "6", "7", "8")
        ROW("0xc00", "9", "10", "11") ROW("0x1000", "12", "13", "14") ROW("0x1400", "15", "16", "17")
        ROW("0x1800", "18", "19", "20") ROW("0x1c00", "21", "22", "23")
#undef ROW
        "add $4, %1\n\tadd $0x40, %2\n\tdec %0\n\tjnz 1b\n\tvzeroupper\n"
        : "+r"(k), "+r"(a), "+r"(b)
        :
        : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12",
          "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "zmm24",
          "zmm25", "zmm26", "zmm27", "cc", "memory");
  }
  double s = now() - t0;
  printf("GEMM k step (8 x 3 tile, L1): %.1f GMAC/s per core\n", reps * 64.0 * 24 * 64 / s / 1e9);
}

// The AVX2 steps (ymm, registers only), per 192 multiply-adds: the exact one of the x86 schedules without VNNI,
// 12 `vpmaddwd` of int16 pairs + 12 `vpaddd` + 3 `vpmovsxbw` of the int8 operand; and ONNX Runtime's
// saturating one, 6 x (`vpmaddubsw` u8 x s8 pairs into int16, `vpmaddwd` by ones, `vpaddd`).
// Both AVX2 loops: ymm0-3 zeroed as operands, then the loop; every ymm may be written.
#define AVX2_LOOP_HEAD                                                                      \
  "vpxor %%ymm0, %%ymm0, %%ymm0\n\tvpxor %%ymm1, %%ymm1, %%ymm1\n\t"                   \
  "vpxor %%ymm2, %%ymm2, %%ymm2\n\tvpxor %%ymm3, %%ymm3, %%ymm3\n"                       \
  "1:\n\t"
#define AVX2_CLOBBERS                                                                        \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", \
      "xmm13", "xmm14", "xmm15", "cc"
static void avx2_steps(void) {
  long left = 20000000, n = left;
  double t0 = now();
  __asm__ volatile(
      AVX2_LOOP_HEAD
      "vpmovsxbw %%xmm0, %%ymm13\n\tvpmovsxbw %%xmm1, %%ymm14\n\tvpmovsxbw %%xmm2, %%ymm15\n\t"
#define ROW(bcast, t, a0, a1, a2)                                                                      \
  "vpmaddwd %%ymm13, %%ymm" bcast ", %%ymm" t "\n\tvpaddd %%ymm" t ", %%ymm" a0 ", %%ymm" a0 "\n\t" \
  "vpmaddwd %%ymm14, %%ymm" bcast ", %%ymm" t "\n\tvpaddd %%ymm" t ", %%ymm" a1 ", %%ymm" a1 "\n\t" \
  "vpmaddwd %%ymm15, %%ymm" bcast ", %%ymm" t "\n\tvpaddd %%ymm" t ", %%ymm" a2 ", %%ymm" a2 "\n\t"
      ROW("3", "12", "4", "5", "6") ROW("2", "11", "7", "8", "9") ROW("1", "12", "10", "4", "5")
      ROW("0", "11", "6", "7", "8")
#undef ROW
      "dec %0\n\tjnz 1b\n\tvzeroupper\n"
      : "+r"(left)
      :
      : AVX2_CLOBBERS);
  printf("AVX2 exact step (vpmaddwd): %.1f GMAC/s per core\n", n * 192.0 / (now() - t0) / 1e9);
  left = n;
  t0 = now();
  __asm__ volatile(
      AVX2_LOOP_HEAD
#define STEP(a, b, t, acc)                                                                            \
  "vpmaddubsw %%ymm" a ", %%ymm" b ", %%ymm" t "\n\tvpmaddwd %%ymm" t ", %%ymm3, %%ymm" t "\n\t" \
  "vpaddd %%ymm" t ", %%ymm" acc ", %%ymm" acc "\n\t"
      STEP("0", "1", "12", "4") STEP("0", "2", "13", "5") STEP("1", "2", "14", "6")
      STEP("1", "0", "15", "7") STEP("2", "0", "11", "8") STEP("2", "1", "10", "9")
#undef STEP
      "dec %0\n\tjnz 1b\n\tvzeroupper\n"
      : "+r"(left)
      :
      : AVX2_CLOBBERS);
  printf("AVX2 saturating step (vpmaddubsw, ONNX Runtime's): %.1f GMAC/s per core\n",
         n * 192.0 / (now() - t0) / 1e9);
  // The sign trick, exact where no weight is -128 (I-BERT's symmetric weights lie in [-127, 127]): `vpmaddubsw`
  // of |a| (`vpabsb`, u8 <= 128) and w sign(a) (`vpsignb`, s8 in [-127, 127]), whose pair sums stay within
  // 2 x 128 x 127 < 2^15; then `vpmaddwd` by ones and `vpaddd`. A 4 x 2 tile: per step 4 broadcast rows (one
  // `vpabsb` each) x 2 weight vectors, 256 multiply-adds in 4 + 8 x 4 instructions.
  left = n;
  t0 = now();
  __asm__ volatile(
      AVX2_LOOP_HEAD
#define SIGN_ROW(t0, t1, a0, a1)                                                                         \
  "vpabsb %%ymm2, %%ymm12\n\t"                                                                          \
  "vpsignb %%ymm2, %%ymm0, %%ymm" t0 "\n\tvpmaddubsw %%ymm" t0 ", %%ymm12, %%ymm" t0 "\n\t"              \
  "vpmaddwd %%ymm3, %%ymm" t0 ", %%ymm" t0 "\n\tvpaddd %%ymm" t0 ", %%ymm" a0 ", %%ymm" a0 "\n\t"      \
  "vpsignb %%ymm2, %%ymm1, %%ymm" t1 "\n\tvpmaddubsw %%ymm" t1 ", %%ymm12, %%ymm" t1 "\n\t"              \
  "vpmaddwd %%ymm3, %%ymm" t1 ", %%ymm" t1 "\n\tvpaddd %%ymm" t1 ", %%ymm" a1 ", %%ymm" a1 "\n\t"
      SIGN_ROW("13", "14", "4", "5") SIGN_ROW("15", "13", "6", "7") SIGN_ROW("14", "15", "8", "9")
      SIGN_ROW("13", "14", "10", "11")
#undef SIGN_ROW
      "dec %0\n\tjnz 1b\n\tvzeroupper\n"
      : "+r"(left)
      :
      : AVX2_CLOBBERS);
  printf("AVX2 exact sign-trick step (vpsignb + vpmaddubsw): %.1f GMAC/s per core\n",
         n * 256.0 / (now() - t0) / 1e9);
}

// One ymm `vpdpbusd` (AVX-VNNI, VEX-encoded) in a loop of 12 independent accumulators: the peak of an
// AVX-VNNI-only CPU's kernels, and on an AVX-512 core the half-width form's share of the zmm peak.
static void avxvnni_peak(void) {
  long left = 20000000, n = left;
  double t0 = now();
  __asm__ volatile(
      AVX2_LOOP_HEAD
#define DP(acc) "%{vex%} vpdpbusd %%ymm0, %%ymm1, %%ymm" acc "\n\t"
      DP("4") DP("5") DP("6") DP("7") DP("8") DP("9") DP("10") DP("11") DP("12") DP("13") DP("14") DP("15")
#undef DP
      "dec %0\n\tjnz 1b\n\tvzeroupper\n"
      : "+r"(left)
      :
      : AVX2_CLOBBERS);
  printf("vpdpbusd ymm (AVX-VNNI): %.1f GMAC/s per core\n", n * 12.0 * 32 / (now() - t0) / 1e9);
}
#undef AVX2_LOOP_HEAD
#undef AVX2_CLOBBERS

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
  if (__builtin_cpu_supports("avx512vnni")) {
    vnni_peak();
    gemm_step();
  }
  if (__builtin_cpu_supports("amx-int8")) amx_peak();
  if (__builtin_cpu_supports("avx2")) avx2_steps();
  if (__builtin_cpu_supports("avxvnni")) avxvnni_peak();
  return 0;
}
