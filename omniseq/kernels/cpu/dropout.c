/* Dropout with a counter-based mask: out = keep(i) ? x * scale : 0 over a dense buffer.
 *
 * The mask is a pure function of the element index and a 64-bit key, so backward recomputes
 * it instead of keeping it, and mask generation and its application are one pass (on the CPU
 * torch's generator draws serially, and a bool mask costs four more full passes).
 *
 * Stream (omniseq.kernels.gelu_mix.keep_mask is the same in PyTorch): the buffer is cut into
 * tiles of 8192 elements; tile t runs Philox4x32-10 (Salmon et al. 2011) with the key on the
 * counters (t * 1024 + b, 0, 0, 0) for b < 1024, giving words w[r][b] (r < 4). Element
 * e = r * 2048 + 2 * b + h of the tile reads the 16-bit half h (0: low) of w[r][b] and is
 * kept when that half is below `threshold` (keep probability threshold / 65536).
 */
#include <stdint.h>
#include <string.h>

#define TILE_BLOCKS 1024
#define TILE (8 * TILE_BLOCKS)

/* Philox4x32-10 in place on the counter (c0, c1, c2, c3) under the key (k0, k1). */
static inline void philox_rounds(uint32_t *c0, uint32_t *c1, uint32_t *c2, uint32_t *c3, uint32_t k0,
                                 uint32_t k1) {
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * *c0, p1 = (uint64_t)0xCD9E8D57u * *c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ *c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ *c3 ^ k1;
        *c1 = (uint32_t)p1;
        *c3 = (uint32_t)p0;
        *c0 = n0;
        *c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

/* All 1024 blocks of one tile; the block loop vectorises (the rounds inline to straight-line code). */
static void philox_tile(uint64_t first_block, uint32_t key0, uint32_t key1, uint32_t words[4][TILE_BLOCKS]) {
    for (int b = 0; b < TILE_BLOCKS; ++b) {
        const uint64_t block = first_block + (uint64_t)b;
        uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = 0, c3 = 0;
        philox_rounds(&c0, &c1, &c2, &c3, key0, key1);
        words[0][b] = c0;
        words[1][b] = c1;
        words[2][b] = c2;
        words[3][b] = c3;
    }
}

static void tile_halves(uint64_t tile, uint32_t key0, uint32_t key1, uint16_t halves[TILE]) {
    uint32_t words[4][TILE_BLOCKS];
    philox_tile(tile * TILE_BLOCKS, key0, key1, words);
    for (int r = 0; r < 4; ++r) {
        for (int b = 0; b < TILE_BLOCKS; ++b) {
            halves[r * 2 * TILE_BLOCKS + 2 * b] = (uint16_t)(words[r][b] & 0xffffu);
            halves[r * 2 * TILE_BLOCKS + 2 * b + 1] = (uint16_t)(words[r][b] >> 16);
        }
    }
}

/* The 4 output words of Philox4x32-10 for one counter (known-answer tests). */
void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    philox_rounds(&c0, &c1, &c2, &c3, key[0], key[1]);
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

static inline float bf16_to_f32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Round to nearest even as PyTorch does (NaN stays a quiet NaN). */
static inline uint16_t f32_to_bf16(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? (bits >> 16) | 0x0040u : rounded);
}

static inline float load_f32(float v) { return v; }
static inline float store_f32(float v) { return v; }

/* philox_dropout_<SUFFIX>(x, out, n, key0, key1, threshold, scale): out = keep ? x * scale : 0
 * over n elements of storage type S (`out` may be `x`), in fp32 arithmetic. */
#define DEFINE_PHILOX_DROPOUT(S, SUFFIX, LOAD, STORE)                                              \
    void philox_dropout_##SUFFIX(const S *x, S *out, int64_t n, uint32_t key0, uint32_t key1,       \
                                 uint32_t threshold, float scale) {                                 \
        uint16_t halves[TILE];                                                                      \
        for (int64_t start = 0; start < n; start += TILE) {                                         \
            tile_halves((uint64_t)(start / TILE), key0, key1, halves);                              \
            const int64_t count = n - start < TILE ? n - start : TILE;                              \
            const S *src = x + start;                                                               \
            S *dst = out + start;                                                                   \
            for (int64_t e = 0; e < count; ++e)                                                     \
                dst[e] = halves[e] < threshold ? STORE(LOAD(src[e]) * scale) : (S)0;                \
        }                                                                                           \
    }

DEFINE_PHILOX_DROPOUT(float, f32, load_f32, store_f32)
DEFINE_PHILOX_DROPOUT(uint16_t, bf16, bf16_to_f32, f32_to_bf16)
