// Golden-vector generator for cargo-edgeai's GGUF quantizers.
//
// Links only llama.cpp's ggml-base (libggml-base.a: ggml.c + ggml-quants.c) and calls the public API
// that llama-quantize itself uses:
//   ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)   quantize
//   ggml_get_type_traits(type)->to_float                                   dequantize
//   ggml_get_type_traits(type)->from_float_ref                             the *_ref quantizer (cross-check)
//   ggml_fp32_to_fp16_row / ggml_fp32_to_bf16_row(_ref)                    F16 / BF16 conversion
//
// Writes one file per type and imatrix variant, format "EAGV" version 1 (see README.md next to this
// file), and prints a manifest (what each type did with and without an imatrix) on stdout.
//
// Usage: golden OUT_DIR
// Build: scripts/gen-golden.sh (cc -O2 -ffp-contract=off golden.c libggml-base.a -lstdc++ -lm -lpthread)
#include "ggml.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PER_ROW 512
#define N_ROWS 16
#define FORMAT_VERSION 1u

// header flags
#define FLAG_EQUALS_REF 1u       // quantized bytes == type_traits.from_float_ref over the whole input
#define FLAG_IMATRIX_IGNORED 2u  // (imatrix files) quantized bytes == the same call without imatrix
#define FLAG_ROW_BY_ROW_SAME 4u  // calling ggml_quantize_chunk one row at a time gives the same bytes

static void die(const char *msg) {
    fprintf(stderr, "golden: error: %s\n", msg);
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

// ---- deterministic inputs (the floats are also written to every file: readers need no PRNG) --------

static uint64_t rng_state;

static uint64_t splitmix64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// uniform in [0, 1) with 24 bits
static double uniform01(void) { return (double)(splitmix64() >> 40) * (1.0 / 16777216.0); }

// approximately standard normal: Irwin-Hall sum of 12 uniforms minus 6 (no libm involved)
static double gauss(void) {
    double s = 0.0;
    for (int i = 0; i < 12; i++) s += uniform01();
    return s - 6.0;
}

static const char *const ROW_NAMES[N_ROWS] = {
    "gaussian sigma=1",
    "gaussian sigma=0.02",
    "gaussian, 32-blocks scaled by 2^((b%9)-4)",
    "all zero",
    "constant 0.37",
    "constant -1.5",
    "gaussian sigma=0.02 with rare outliers +-1.0 (every 61st)",
    "gaussian sigma=1e-6",
    "all positive |gaussian|*0.1+0.01",
    "all negative -(|gaussian|*0.1+0.01)",
    "alternating sign (-1)^j*(0.5+u)",
    "gaussian sigma=0.02 with x[300]=1000",
    "gaussian sigma=1e-20 (scales underflow f16)",
    "ramp j/64-4 (exact ties)",
    "small integers (j%17)-8",
    "gaussian sigma=5000",
};

static void make_inputs(float *x) {
    rng_state = 0x45414756ull; // "EAGV"
    for (int r = 0; r < N_ROWS; r++) {
        float *row = x + (size_t)r * N_PER_ROW;
        for (int j = 0; j < N_PER_ROW; j++) {
            double g = gauss();
            double u = uniform01();
            double v;
            switch (r) {
                case 0: v = g; break;
                case 1: v = 0.02 * g; break;
                case 2: v = g * ldexp(1.0, (j / 32) % 9 - 4); break;
                case 3: v = 0.0; break;
                case 4: v = 0.37; break;
                case 5: v = -1.5; break;
                case 6: v = (j % 61 == 7) ? ((j / 61) % 2 ? -1.0 : 1.0) : 0.02 * g; break;
                case 7: v = 1e-6 * g; break;
                case 8: v = fabs(g) * 0.1 + 0.01; break;
                case 9: v = -(fabs(g) * 0.1 + 0.01); break;
                case 10: v = (j % 2 ? -1.0 : 1.0) * (0.5 + u); break;
                case 11: v = (j == 300) ? 1000.0 : 0.02 * g; break;
                case 12: v = 1e-20 * g; break;
                case 13: v = (double)j / 64.0 - 4.0; break;
                case 14: v = (double)(j % 17) - 8.0; break;
                default: v = 5000.0 * g; break;
            }
            row[j] = (float)v;
        }
    }
}

// positive importance weights (an imatrix holds per-column mean squared activations)
static void make_imatrix(float *w) {
    for (int j = 0; j < N_PER_ROW; j++) {
        float v = 0.25f + (float)((j * 7919) % 97) / 16.0f;
        if (j % 32 == 5) v *= 8.0f;
        w[j] = v;
    }
}

// ---- file writing ----------------------------------------------------------------------------------

static void put_u32(FILE *f, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    if (fwrite(b, 1, 4, f) != 4) die("write failed");
}

static void put_bytes(FILE *f, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, f) != n) die("write failed");
}

static void put_f32s(FILE *f, const float *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        put_u32(f, u);
    }
}

struct golden {
    const char *name;        // file/type name
    uint32_t ggml_type;
    uint32_t n_rows, n_per_row;
    const float *imatrix;    // NULL: none
    const float *input;      // n_rows*n_per_row
    const void *quant;       // n_rows*row_size bytes
    uint32_t block_size, type_size, row_size;
    const float *dequant;    // n_rows*n_per_row
    uint32_t flags;
};

static void write_golden(const char *dir, const char *file, const struct golden *g) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "golden: cannot open %s: %s\n", path, strerror(errno));
        exit(1);
    }
    char name[16] = {0};
    if (strlen(g->name) >= sizeof name) die("type name too long");
    memcpy(name, g->name, strlen(g->name));
    put_bytes(f, "EAGV", 4);
    put_u32(f, FORMAT_VERSION);
    put_bytes(f, name, sizeof name);
    put_u32(f, g->ggml_type);
    put_u32(f, g->n_rows);
    put_u32(f, g->n_per_row);
    put_u32(f, g->imatrix != NULL);
    put_u32(f, g->block_size);
    put_u32(f, g->type_size);
    put_u32(f, g->row_size);
    put_u32(f, g->flags);
    const size_t n = (size_t)g->n_rows * g->n_per_row;
    if (g->imatrix) put_f32s(f, g->imatrix, g->n_per_row);
    put_f32s(f, g->input, n);
    put_bytes(f, g->quant, (size_t)g->n_rows * g->row_size);
    put_f32s(f, g->dequant, n);
    if (fclose(f) != 0) die("close failed");
}

// ---- block quantization types ----------------------------------------------------------------------

static const struct {
    const char *name;
    enum ggml_type type;
} TYPES[] = {
    {"Q8_0", GGML_TYPE_Q8_0},   {"Q4_0", GGML_TYPE_Q4_0}, {"Q4_1", GGML_TYPE_Q4_1},
    {"Q5_0", GGML_TYPE_Q5_0},   {"Q5_1", GGML_TYPE_Q5_1}, {"Q2_K", GGML_TYPE_Q2_K},
    {"Q3_K", GGML_TYPE_Q3_K},   {"Q4_K", GGML_TYPE_Q4_K}, {"Q5_K", GGML_TYPE_Q5_K},
    {"Q6_K", GGML_TYPE_Q6_K},   {"IQ4_NL", GGML_TYPE_IQ4_NL}, {"MXFP4", GGML_TYPE_MXFP4},
};

static int rows_differing(const uint8_t *a, const uint8_t *b, size_t row_size) {
    int n = 0;
    for (int r = 0; r < N_ROWS; r++)
        if (memcmp(a + (size_t)r * row_size, b + (size_t)r * row_size, row_size) != 0) n++;
    return n;
}

static void do_type(const char *dir, const char *name, enum ggml_type type, const float *x,
                    const float *imatrix) {
    const struct ggml_type_traits *tt = ggml_get_type_traits(type);
    if (strcmp(tt->type_name, "") == 0 || tt->to_float == NULL) die("type has no traits");
    const size_t n = (size_t)N_ROWS * N_PER_ROW;
    const size_t row_size = ggml_row_size(type, N_PER_ROW);
    const size_t qbytes = row_size * N_ROWS;
    if (N_PER_ROW % tt->blck_size != 0) die("n_per_row not a multiple of the block size");

    uint8_t *q_plain = xmalloc(qbytes), *q_imat = xmalloc(qbytes), *q_ref = xmalloc(qbytes),
            *q_rows = xmalloc(qbytes);
    float *deq = xmalloc(n * sizeof(float));
    const int requires = ggml_quantize_requires_imatrix(type);

    size_t got = ggml_quantize_chunk(type, x, q_plain, 0, N_ROWS, N_PER_ROW, NULL);
    if (got != qbytes) die("ggml_quantize_chunk returned an unexpected size (no imatrix)");
    got = ggml_quantize_chunk(type, x, q_imat, 0, N_ROWS, N_PER_ROW, imatrix);
    if (got != qbytes) die("ggml_quantize_chunk returned an unexpected size (imatrix)");
    if (tt->from_float_ref == NULL) die("type has no from_float_ref");
    tt->from_float_ref(x, q_ref, (int64_t)n);

    const int diff_plain_ref = rows_differing(q_plain, q_ref, row_size);
    const int diff_imat_ref = rows_differing(q_imat, q_ref, row_size);
    const int diff_imat_plain = rows_differing(q_imat, q_plain, row_size);

    for (int variant = 0; variant < 2; variant++) {
        const float *im = variant ? imatrix : NULL;
        const uint8_t *q = variant ? q_imat : q_plain;
        // row by row, as llama-quantize's worker threads do (start = first element of the chunk)
        for (int r = 0; r < N_ROWS; r++) {
            // dst is the base of the whole tensor: ggml_quantize_chunk offsets it by start_row*row_size
            ggml_quantize_chunk(type, x, q_rows, (int64_t)r * N_PER_ROW, 1, N_PER_ROW, im);
        }
        const int row_same = memcmp(q_rows, q, qbytes) == 0;
        tt->to_float(q, deq, (int64_t)n);

        struct golden g = {
            .name = name, .ggml_type = (uint32_t)type, .n_rows = N_ROWS, .n_per_row = N_PER_ROW,
            .imatrix = im, .input = x, .quant = q, .block_size = (uint32_t)tt->blck_size,
            .type_size = (uint32_t)tt->type_size, .row_size = (uint32_t)row_size, .dequant = deq,
            .flags = ((variant ? diff_imat_ref : diff_plain_ref) == 0 ? FLAG_EQUALS_REF : 0u) |
                     (variant && diff_imat_plain == 0 ? FLAG_IMATRIX_IGNORED : 0u) |
                     (row_same ? FLAG_ROW_BY_ROW_SAME : 0u),
        };
        char file[64];
        snprintf(file, sizeof file, "%s%s.bin", name, variant ? ".imatrix" : "");
        write_golden(dir, file, &g);
        if (!row_same) {
            fprintf(stderr, "golden: warning: %s: row-by-row quantization differs from one call\n", file);
        }
    }

    printf("| %-6s | %-3s | %-15s | %-15s | %-22s |\n", name, requires ? "yes" : "no",
           diff_plain_ref ? "no" : "yes", diff_imat_ref ? "no" : "yes",
           diff_imat_plain ? "used" : "ignored");
    if (diff_imat_plain) {
        char buf[64];
        snprintf(buf, sizeof buf, "%d/%d rows differ", diff_imat_plain, N_ROWS);
        printf("| %-6s | %-3s | %-15s | %-15s | %-22s |\n", "", "", "", "", buf);
    }
    free(q_plain);
    free(q_imat);
    free(q_ref);
    free(q_rows);
    free(deq);
}

// ---- F16 / BF16 conversion ---------------------------------------------------------------------------

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// special values, then random bit patterns, then random floats with exponents around the f16 range
static size_t make_conversion_inputs(float *out, size_t cap) {
    static const uint32_t bits[] = {
        0x00000000u, 0x80000000u, 0x3f800000u, 0xbf800000u, 0x3f000000u,  // 0 -0 1 -1 0.5
        0x477fe000u, 0xc77fe000u,                                          // +-65504 (f16 max)
        0x477fefffu, 0x477ff000u, 0x477ff001u, 0x47800000u,                // around 65520 (f16 overflow tie)
        0x501502f9u, 0x7f7fffffu, 0xff7fffffu,                             // 1e10, +-FLT_MAX
        0x7f800000u, 0xff800000u,                                          // +-inf
        0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fbfffffu,   // NaNs: quiet, signalling,
        0x7fc00001u, 0x7fffffffu, 0xffffffffu, 0x7fa00000u, 0x7f810000u,   // with payloads
        0x38800000u, 0x387fffffu, 0x387fe000u, 0x387ff000u,                // 2^-14 (f16 min normal) and below
        0x33800000u, 0x33000000u, 0x33000001u, 0x32ffffffu, 0x33400000u,   // 2^-24, 2^-25 (tie), 3*2^-26
        0x33c00000u, 0x34200000u, 0x32800000u, 0xb3000000u, 0xb3400000u,   // 3*2^-25, 5*2^-25 (ties), 2^-26, negatives
        0x00800000u, 0x00000001u, 0x007fffffu, 0x80000001u, 0x00400000u,   // f32 min normal, f32 subnormals
        0x3f801000u, 0x3f803000u, 0x3f801001u, 0x3f800fffu, 0x3f805000u,   // f16 ties at 1: 1+2^-11 ...
        0x45000800u, 0x45001800u, 0x45001000u,                             // 2048+1, 2048+3, 2048+2
        0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0x3f828000u,   // bf16 ties at 1: 1+2^-8 ...
        0xbf808000u, 0xbf818000u, 0x7f7f8000u, 0x7f7f7fffu, 0x7f7fc000u,   // negative ties, bf16 overflow
        0x00018000u, 0x00008000u, 0x00010000u, 0x80018000u,                // bf16 ties among f32 subnormals
        0x3eaaaaabu, 0x3dcccccdu, 0x40490fdbu, 0xc02df854u,                // 1/3, 0.1, pi, -e
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        if (n < cap) out[n++] = f32_from_bits(bits[i]);
    }
    rng_state = 0x46313642ull; // "F16B"
    for (int i = 0; i < 2048 && n < cap; i++) out[n++] = f32_from_bits((uint32_t)(splitmix64() >> 32));
    for (int i = 0; i < 2048 && n < cap; i++) {
        uint64_t r = splitmix64();
        uint32_t sign = (uint32_t)(r >> 63) << 31;
        uint32_t exp = 97u + (uint32_t)((r >> 32) % 50u); // 2^-30 .. 2^19
        uint32_t mant = (uint32_t)r & 0x7fffffu;
        out[n++] = f32_from_bits(sign | exp << 23 | mant);
    }
    return n;
}

static void do_conversion(const char *dir) {
    enum { CAP = 8192 };
    float *x = xmalloc(CAP * sizeof(float));
    const size_t n = make_conversion_inputs(x, CAP);
    uint16_t *h = xmalloc(n * 2), *h2 = xmalloc(n * 2), *h3 = xmalloc(n * 2);
    float *back = xmalloc(n * sizeof(float));

    // F16: ggml_quantize_chunk(F16) is what llama-quantize runs; it calls ggml_fp32_to_fp16_row
    ggml_quantize_chunk(GGML_TYPE_F16, x, h, 0, 1, (int64_t)n, NULL);
    ggml_fp32_to_fp16_row(x, (ggml_fp16_t *)h2, (int64_t)n);
    if (memcmp(h, h2, n * 2) != 0) die("F16: ggml_quantize_chunk differs from ggml_fp32_to_fp16_row");
    ggml_fp16_to_fp32_row((const ggml_fp16_t *)h, back, (int64_t)n);
    struct golden g = {
        .name = "F16", .ggml_type = GGML_TYPE_F16, .n_rows = 1, .n_per_row = (uint32_t)n,
        .imatrix = NULL, .input = x, .quant = h, .block_size = 1, .type_size = 2,
        .row_size = (uint32_t)(n * 2), .dequant = back, .flags = FLAG_EQUALS_REF | FLAG_ROW_BY_ROW_SAME,
    };
    write_golden(dir, "F16.bin", &g);

    // BF16: ggml_quantize_chunk(BF16) calls ggml_fp32_to_bf16_row_ref; ggml_fp32_to_bf16_row only
    // differs when ggml-base is compiled with AVX512-BF16 (subnormals flushed) -- it is not here.
    ggml_quantize_chunk(GGML_TYPE_BF16, x, h, 0, 1, (int64_t)n, NULL);
    ggml_fp32_to_bf16_row(x, (ggml_bf16_t *)h2, (int64_t)n);
    ggml_fp32_to_bf16_row_ref(x, (ggml_bf16_t *)h3, (int64_t)n);
    if (memcmp(h, h3, n * 2) != 0) die("BF16: ggml_quantize_chunk differs from ggml_fp32_to_bf16_row_ref");
    if (memcmp(h, h2, n * 2) != 0) die("BF16: ggml_fp32_to_bf16_row differs from _ref (AVX512-BF16 build?)");
    ggml_bf16_to_fp32_row((const ggml_bf16_t *)h, back, (int64_t)n);
    g.name = "BF16";
    g.ggml_type = GGML_TYPE_BF16;
    write_golden(dir, "BF16.bin", &g);

    printf("\nF16.bin, BF16.bin: %zu values (specials + random bit patterns + random floats);\n", n);
    printf("  ggml_quantize_chunk(F16)  == ggml_fp32_to_fp16_row\n");
    printf("  ggml_quantize_chunk(BF16) == ggml_fp32_to_bf16_row_ref == ggml_fp32_to_bf16_row\n");
    free(x);
    free(h);
    free(h2);
    free(h3);
    free(back);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    float *x = xmalloc((size_t)N_ROWS * N_PER_ROW * sizeof(float));
    float imatrix[N_PER_ROW];
    make_inputs(x);
    make_imatrix(imatrix);

    printf("rows (n_rows=%d, n_per_row=%d):\n", N_ROWS, N_PER_ROW);
    for (int r = 0; r < N_ROWS; r++) printf("  %2d  %s\n", r, ROW_NAMES[r]);
    printf("\nggml_quantize_chunk, per type (== *_ref: same bytes as type_traits.from_float_ref):\n");
    printf("| %-6s | %-3s | %-15s | %-15s | %-22s |\n", "type", "req", "no imatrix==ref", "imatrix==ref", "imatrix");
    printf("|--------|-----|-----------------|-----------------|------------------------|\n");
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++) {
        do_type(dir, TYPES[i].name, TYPES[i].type, x, imatrix);
    }
    do_conversion(dir);
    ggml_quantize_free();
    free(x);
    return 0;
}
