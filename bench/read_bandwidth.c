// Streaming read bandwidth of this machine, the yardstick for the weight-bound shapes (one sequence of 32
// tokens: every int8 weight byte is read from memory once per run and serves only 32 rows). Reads a buffer
// of the given size (MiB) with 1 and with 2 threads (AVX2 loads, four independent accumulators), best of
// the given number of passes, after one pass that touches every page.
//   gcc -O2 -mavx2 -fopenmp bench/read_bandwidth.c -o /tmp/read_bw && /tmp/read_bw 256 5 && /tmp/read_bw 2 200
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static long long read_all(const char *buf, size_t bytes, int threads) {
  long long sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                      _mm256_setzero_si256()};
#pragma omp for schedule(static)
    for (size_t i = 0; i < bytes; i += 128)
      for (int j = 0; j < 4; j++)
        acc[j] = _mm256_add_epi32(acc[j], _mm256_load_si256((const __m256i *)(buf + i + 32 * j)));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(acc[0], acc[1]), _mm256_add_epi32(acc[2], acc[3]));
    sink += _mm256_extract_epi32(s, 0) + _mm256_extract_epi32(s, 7);
  }
  return sink;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MIB PASSES\n", argv[0]);
    return 2;
  }
  size_t bytes = (size_t)atol(argv[1]) << 20;
  int passes = atoi(argv[2]);
  char *buf = aligned_alloc(64, bytes);
  for (size_t i = 0; i < bytes; i++) buf[i] = (char)i;
  for (int threads = 1; threads <= 2; threads++) {
    double best = 1e30;
    long long sink = read_all(buf, bytes, threads);
    for (int p = 0; p < passes; p++) {
      double t0 = now();
      sink += read_all(buf, bytes, threads);
      double s = now() - t0;
      if (s < best) best = s;
    }
    printf("%zu MiB, %d thread%s: %.1f GB/s (checksum %lld)\n", bytes >> 20, threads, threads > 1 ? "s" : "",
           bytes / best / 1e9, sink & 0xff);
  }
  free(buf);
  return 0;
}
