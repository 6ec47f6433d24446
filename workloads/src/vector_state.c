/* vector_state: keeps values in AVX (ymm) and AVX-512 (zmm16, k1) registers across long spin
 * loops and checks they come back intact. A process frozen in the middle of such a loop and
 * moved must find its whole vector state again, not only the SSE halves.
 * Prints one line per kind of register the CPU has: rounds run and rounds that lost a value.
 * Usage: vector_state [rounds] [spins]
 */
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int has_avx(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX)) return 0;
    return (xgetbv0() & 6) == 6;
}

static int has_avx512(void) {
    unsigned a, b, c, d;
    if (!has_avx() || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_AVX512F)) return 0;
    return (xgetbv0() & 0xe6) == 0xe6;
}

static void fill(uint64_t *words, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) words[i] = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i * 77;
}

__attribute__((target("avx"))) static int avx_round(uint64_t seed, long spins) {
    uint64_t in[4], out[4];
    fill(in, 4, seed);
    __asm__ volatile("vmovdqu (%[in]), %%ymm7\n"
                     "1: dec %[n]\n\tjnz 1b\n"
                     "vmovdqu %%ymm7, (%[out])\n\tvzeroupper\n"
                     : [n] "+r"(spins) : [in] "r"(in), [out] "r"(out) : "memory", "xmm7");
    return memcmp(in, out, sizeof in) != 0;
}

__attribute__((target("avx512f"))) static int avx512_round(uint64_t seed, long spins) {
    uint64_t in[8], out[8];
    uint32_t mask_in = (uint32_t)(seed * 2654435761u) & 0xffff, mask_out = 0;
    fill(in, 8, seed);
    __asm__ volatile("vmovdqu64 (%[in]), %%zmm16\n\tkmovw %k[mi], %%k1\n"
                     "1: dec %[n]\n\tjnz 1b\n"
                     "vmovdqu64 %%zmm16, (%[out])\n\tkmovw %%k1, %k[mo]\n\tvzeroupper\n"
                     : [n] "+r"(spins), [mo] "=r"(mask_out)
                     : [in] "r"(in), [out] "r"(out), [mi] "r"(mask_in)
                     : "memory", "xmm16", "k1");
    return memcmp(in, out, sizeof in) != 0 || mask_in != mask_out;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 100;
    long spins = argc > 2 ? atol(argv[2]) : 2000000;
    if (has_avx()) {
        int lost = 0;
        for (int r = 0; r < rounds; r++) lost += avx_round((uint64_t)r + 1, spins);
        printf("avx: %d rounds, %d lost\n", rounds, lost);
    } else {
        printf("avx: absent\n");
    }
    if (has_avx512()) {
        int lost = 0;
        for (int r = 0; r < rounds; r++) lost += avx512_round((uint64_t)r + 7, spins);
        printf("avx512: %d rounds, %d lost\n", rounds, lost);
    } else {
        printf("avx512: absent\n");
    }
    return 0;
}
