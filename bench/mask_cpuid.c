/* Run a program as if the CPU lacked its wider int8 instructions: an LD_PRELOAD shim that hides CPUID bits.
 *
 *     cc -O2 -shared -fPIC -o mask_cpuid.so bench/mask_cpuid.c
 *     IBERT_MASK_CPUID=avx2 LD_PRELOAD=./mask_cpuid.so python ...
 *
 * Why: the peers (ONNX Runtime's MLAS, PyTorch's fbgemm and oneDNN) pick their int8 kernels from CPUID at run
 * time, so on an AMX / AVX-512 VNNI host they never run the kernels an AVX2-only or a VNNI-without-AMX host
 * would. Linux's CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`, the `cpuid_fault` flag of /proc/cpuinfo)
 * turns every CPUID instruction of this process and the threads it starts into a SIGSEGV; the handler runs the
 * real instruction, clears the hidden feature bits and steps over it. The process then runs natively with the
 * kernels it chose, on this host's cores and memory. Levels (IBERT_MASK_CPUID):
 *   avx2        no AVX-512, no AVX-VNNI, no AMX (Haswell, Zen 1-3)
 *   avxvnni     avx2 plus AVX-VNNI (Alder Lake)
 *   avx512vnni  AVX-512 with VNNI, no AMX, no AVX-VNNI (Cascade Lake, Zen4)
 * glibc's own string-function dispatch reads CPUID before this shim loads and is left as it chose.
 * A SIGSEGV handler that the program installs later is chained behind this one (sigaction is wrapped).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* Leaf 7 subleaf 0. */
static const unsigned AVX512_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
static const unsigned AVX512_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);  /* VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
static const unsigned AVX512_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(23);              /* 4VNNIW, 4FMAPS, VP2INTERSECT, FP16 */
static const unsigned AMX_EDX = BIT(22) | BIT(24) | BIT(25);                         /* AMX-BF16, AMX-TILE, AMX-INT8 */
/* Leaf 7 subleaf 1. */
static const unsigned AVXVNNI_EAX = BIT(4);                                          /* AVX-VNNI */
static const unsigned AVX512_1_EAX = BIT(5);                                         /* AVX512-BF16 */
static const unsigned AMX_1_EAX = BIT(21);                                           /* AMX-FP16 */
static const unsigned NEWER_1_EDX = BIT(4) | BIT(5) | BIT(8) | BIT(10) | BIT(19);  /* VNNI-INT8, NE-CONVERT, AMX-COMPLEX, VNNI-INT16, AVX10 */

static int active, keep_avx512, keep_avxvnni;
static struct sigaction chained;  /* the program's own SIGSEGV action, run for faults that are not CPUID */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void mask(unsigned leaf, unsigned sub, unsigned r[4]) {
  if (leaf == 7 && sub == 0) {
    if (!keep_avx512) { r[1] &= ~AVX512_EBX; r[2] &= ~AVX512_ECX; r[3] &= ~AVX512_EDX; }
    r[3] &= ~AMX_EDX;
  } else if (leaf == 7 && sub == 1) {
    if (!keep_avxvnni) r[0] &= ~AVXVNNI_EAX;
    if (!keep_avx512) r[0] &= ~AVX512_1_EAX;
    r[0] &= ~AMX_1_EAX;
    r[3] &= ~NEWER_1_EDX;
  } else if (leaf == 0x1e || leaf == 0x1d || leaf == 0x24) {
    r[0] = r[1] = r[2] = r[3] = 0;  /* the AMX tile and AVX10 leaves */
  }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  ucontext_t *uc = context;
  greg_t *g = uc->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)g[REG_RIP];
  if (ip[0] == 0x0f && ip[1] == 0xa2) {
    unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], r[4];
    set_cpuid(1);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    set_cpuid(0);
    mask(leaf, sub, r);
    g[REG_RAX] = r[0]; g[REG_RBX] = r[1]; g[REG_RCX] = r[2]; g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
    return;
  }
  if (chained.sa_flags & SA_SIGINFO && chained.sa_sigaction) { chained.sa_sigaction(sig, info, context); return; }
  if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN && chained.sa_handler) { chained.sa_handler(sig); return; }
  struct sigaction dfl = {.sa_handler = SIG_DFL};
  real_sigaction(SIGSEGV, &dfl, NULL);  /* returning re-runs the faulting instruction, now fatal */
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV || !active) return real_sigaction(sig, act, old);
  if (old) *old = chained;
  if (act) chained = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction act = {.sa_handler = handler}, old;
  sigemptyset(&act.sa_mask);
  return sigaction(sig, &act, &old) ? SIG_ERR : old.sa_handler;
}

__attribute__((constructor)) static void install(void) {
  const char *level = getenv("IBERT_MASK_CPUID");
  real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  if (!level) return;
  if (!strcmp(level, "avx512vnni")) keep_avx512 = 1;
  else if (!strcmp(level, "avxvnni")) keep_avxvnni = 1;
  else if (strcmp(level, "avx2")) { fprintf(stderr, "mask_cpuid: unknown level %s (avx2, avxvnni, avx512vnni)\n", level); exit(2); }
  struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
  sigemptyset(&sa.sa_mask);
  real_sigaction(SIGSEGV, &sa, NULL);
  active = 1;
  if (set_cpuid(0) != 0) { perror("mask_cpuid: arch_prctl(ARCH_SET_CPUID) (does /proc/cpuinfo list cpuid_fault?)"); exit(2); }
}
