// Armature's CUDA kernels, compiled at run time by NVRTC (no nvcc, no CUDA headers needed).
// Activations of the residual stream are f32; matrix inputs and the KV pool are f16.
//
// KV pool layout, block-major so a block moves as one contiguous range (and matches the CPU
// backend's export format): pool[block][layer][K: kv_width rows x block_size][V: block_size rows x
// kv_width]. K is stored transposed (element e of position p at e * block_size + p).

typedef unsigned short h16;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float h2f(h16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ h16 f2h(float f) {
    h16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? shared[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    float total = shared[0];
    __syncthreads();
    return total;
}

__device__ float block_max(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? shared[threadIdx.x] : -INFINITY;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    float m = shared[0];
    __syncthreads();
    return m;
}

// x[r] = table[tokens[r]] * scale (one block per row; Gemma scales by sqrt(hidden)).
extern "C" __global__ void embed(const h16* table, const int* tokens, float* x, int hidden, float scale) {
    int r = blockIdx.x;
    const h16* src = table + (size_t)tokens[r] * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[(size_t)r * hidden + i] = h2f(src[i]) * scale;
}

// out[r] = x[rows ? rows[r] : r] / rms * w, written as f16 (one block per row).
extern "C" __global__ void rms_norm(const float* x, const int* rows, const float* w, h16* out, int hidden,
                                    float eps) {
    __shared__ float shared[32];
    int r = blockIdx.x;
    const float* xr = x + (size_t)(rows ? rows[r] : r) * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, shared);
    float scale = 1.0f / sqrtf(ss / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[(size_t)r * hidden + i] = f2h(xr[i] * scale * w[i]);
}

// x[r] += y[r] / rms(y[r]) * w: a norm after the attention or MLP output, before the residual
// (Gemma 2 and 3; one block per row).
extern "C" __global__ void add_rms_norm(float* x, const float* y, const float* w, int hidden, float eps) {
    __shared__ float shared[32];
    int r = blockIdx.x;
    const float* yr = y + (size_t)r * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += yr[i] * yr[i];
    ss = block_sum(ss, shared);
    float scale = 1.0f / sqrtf(ss / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[(size_t)r * hidden + i] += yr[i] * scale * w[i];
}

// RMSNorm of each q head (weights qn) and k head (weights kn) of each row of qkv, in place, before
// RoPE (Qwen3, Gemma 3; one block per row, one warp per head at a time).
extern "C" __global__ void head_norm(float* qkv, const float* qn, const float* kn, int heads, int kv_heads,
                                     int head_dim, float eps) {
    int r = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    int qw = heads * head_dim, kvw = kv_heads * head_dim;
    float* row = qkv + (size_t)r * (qw + 2 * kvw);
    for (int head = warp; head < heads + kv_heads; head += warps) {
        float* v = row + head * head_dim;  // k's heads follow q's
        const float* w = head < heads ? qn : kn;
        float ss = 0.0f;
        for (int i = lane; i < head_dim; i += 32) ss += v[i] * v[i];
        ss = warp_sum(ss);
        float scale = 1.0f / sqrtf(ss / head_dim + eps);
        for (int i = lane; i < head_dim; i += 32) v[i] = v[i] * scale * w[i];
    }
}

// x = cap * tanh(x / cap) over n values (Gemma 2's final logits).
extern "C" __global__ void softcap(float* x, int n, float cap) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = cap * tanhf(x[i] / cap);
}

// dst[i] = src[idx[i]] for the rows of idx (one block per row of `width` f16 values): the rows an
// expert serves, gathered.
extern "C" __global__ void gather_rows(const h16* src, const int* idx, h16* dst, int width) {
    int i = blockIdx.x;
    const h16* row = src + (size_t)idx[i] * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[(size_t)i * width + c] = row[c];
}

// x[idx[i]] += w[i] * y[i] (one block per row of `width`; an index appears once per launch): an
// expert's outputs added into the residual, weighted by the router.
extern "C" __global__ void scatter_add(float* x, const float* y, const int* idx, const float* w, int width) {
    int i = blockIdx.x;
    float* dst = x + (size_t)idx[i] * width;
    const float* src = y + (size_t)i * width;
    float wi = w[i];
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] += wi * src[c];
}

// y[r] += b (one block per row of `width`).
extern "C" __global__ void add_bias(float* y, const float* b, int width) {
    float* row = y + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) row[i] += b[i];
}

// Rotate the q and k heads of each row of qkv ([q | k | v], f32) by the row's position (cos and sin
// times `scale`: LongRoPE's attention factor, else 1), then store k and v into the pool at the
// row's slot (one block per row).
extern "C" __global__ void rope_cache(float* qkv, const int* pos, const int* seq, const int* table_off,
                                      const int* tables, const float* inv_freq, h16* pool, int layer, int layers,
                                      int heads, int kv_heads, int head_dim, int block_size, int halves,
                                      float scale) {
    int r = blockIdx.x;
    int h = heads * head_dim, kvw = kv_heads * head_dim;
    float* row = qkv + (size_t)r * (h + 2 * kvw);
    int p = pos[r], half = head_dim / 2;
    for (int i = threadIdx.x; i < (heads + kv_heads) * half; i += blockDim.x) {
        int head = i / half, j = i % half;
        float* v = row + head * head_dim;  // k's heads follow q's
        int a = halves ? j : 2 * j, b = halves ? j + half : 2 * j + 1;
        float s, c;
        sincosf((float)p * inv_freq[j], &s, &c);
        s *= scale;
        c *= scale;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
    __syncthreads();
    int blk = tables[table_off[seq[r]] + p / block_size], off = p % block_size;
    h16* base = pool + ((size_t)blk * layers + layer) * 2 * kvw * block_size;
    for (int e = threadIdx.x; e < kvw; e += blockDim.x) {
        base[(size_t)e * block_size + off] = f2h(row[h + e]);
        base[(size_t)kvw * block_size + (size_t)off * kvw + e] = f2h(row[h + kvw + e]);
    }
}

#define ATT_WARPS 4
#define MAX_DIMS_PER_LANE 8

// A score after soft-capping (`cap * tanh(s / cap)`, Gemma 2; none where cap is 0).
__device__ __forceinline__ float capped(float s, float cap) {
    return cap > 0.0f ? cap * tanhf(s / cap) : s;
}

// The first position a query at p sees: p - window + 1 with a sliding window, else 0.
__device__ __forceinline__ int window_start(int p, int window) {
    return window > 0 ? max(0, p - window + 1) : 0;
}

// Causal attention of one row's query head over its sequence's positions window_start..=pos[r],
// reading K and V through the sequence's block table; one block of ATT_WARPS warps per (row,
// head). Each warp takes chunks of 32 positions (one per lane for the scores), keeps an online
// softmax, and the warps are merged at the end. Scores are q.k times `scale`, soft-capped by
// `softcap` where it is not 0. Output is f16 [rows, heads * head_dim].
extern "C" __global__ void attention(const float* qkv, const int* pos, const int* seq, const int* table_off,
                                     const int* tables, const h16* pool, h16* out, int layer, int layers, int heads,
                                     int kv_heads, int head_dim, int block_size, float scale, float softcap,
                                     int window) {
    extern __shared__ float smem[];
    int r = blockIdx.x, head = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = heads * head_dim, kvw = kv_heads * head_dim;
    int g = head / (heads / kv_heads);
    float* qs = smem;
    const float* q = qkv + (size_t)r * (h + 2 * kvw) + head * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) qs[i] = q[i] * scale;
    __syncthreads();
    int p = pos[r], lo = window_start(p, window);
    const int* table = tables + table_off[seq[r]];
    size_t layer_stride = 2 * (size_t)kvw * block_size;
    size_t block_stride = layer_stride * layers;
    const h16* layer_base = pool + layer * layer_stride;
    int dims = (head_dim + 31) >> 5;  // this lane's dimensions: lane + 32 i below head_dim
    float m = -INFINITY, l = 0.0f, acc[MAX_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_DIMS_PER_LANE; i++) acc[i] = 0.0f;
    // Chunks start at the window's first position rounded down to 32: warp 0's first chunk holds
    // a visible position, and no chunk lies wholly before the window.
    for (int t0 = (lo & ~31) + warp * 32; t0 <= p; t0 += ATT_WARPS * 32) {
        int t = t0 + lane;
        bool seen = t >= lo && t <= p;
        float s = -INFINITY;
        if (seen) {
            const h16* k = layer_base + (size_t)table[t / block_size] * block_stride +
                           (size_t)g * head_dim * block_size + t % block_size;
            float d = 0.0f;
            for (int e = 0; e < head_dim; e++) d += qs[e] * h2f(k[(size_t)e * block_size]);
            s = capped(d, softcap);
        }
        float mn = fmaxf(m, warp_max(s));
        float corr = expf(m - mn);
        float pr = seen ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(pr);
#pragma unroll
        for (int i = 0; i < MAX_DIMS_PER_LANE; i++) acc[i] *= corr;
        int valid = min(32, p - t0 + 1);
        for (int j = 0; j < valid; j++) {
            float pj = __shfl_sync(0xffffffffu, pr, j);
            int tj = t0 + j;
            const h16* v = layer_base + (size_t)table[tj / block_size] * block_stride + (size_t)kvw * block_size +
                           (size_t)(tj % block_size) * kvw + g * head_dim;
#pragma unroll
            for (int i = 0; i < MAX_DIMS_PER_LANE; i++)
                if (i < dims && lane + 32 * i < head_dim) acc[i] += pj * h2f(v[lane + 32 * i]);
        }
        m = mn;
    }
    float* ms = smem + head_dim;
    float* ls = ms + ATT_WARPS;
    float* as = ls + ATT_WARPS;
    if (lane == 0) {
        ms[warp] = m;
        ls[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < MAX_DIMS_PER_LANE; i++)
        if (i < dims && lane + 32 * i < head_dim) as[warp * head_dim + lane + 32 * i] = acc[i];
    __syncthreads();
    float top = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) top = fmaxf(top, ms[w]);
    float total = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (ms[w] > -INFINITY) total += ls[w] * expf(ms[w] - top);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (ms[w] > -INFINITY) o += as[w * head_dim + d] * expf(ms[w] - top);
        out[(size_t)r * h + head * head_dim + d] = f2h(o / total);
    }
}

#define TILE_ROWS 32
#define TILE_POS 32
#define ROWS_PER_WARP (TILE_ROWS / ATT_WARPS)
#define TILE_MAX_DIMS 4

// Causal attention for prefill: one block of ATT_WARPS warps per (tile, head), where a tile is up
// to TILE_ROWS consecutive rows of one sequence (tiles[2 t] = its first row, tiles[2 t + 1] = its
// row count; rows in increasing positions). K and V are staged in shared memory TILE_POS
// positions at a time and used by every row of the tile; each warp keeps an online softmax for
// ROWS_PER_WARP rows, one position per lane for the scores. head_dim at most 32 * TILE_MAX_DIMS.
// Scores are soft-capped and windowed as `attention` does. Shared memory: (TILE_ROWS + 2 *
// TILE_POS) * head_dim floats.
extern "C" __global__ void attention_tiles(const float* qkv, const int* pos, const int* seq, const int* table_off,
                                           const int* tables, const int* tiles, const h16* pool, h16* out,
                                           int layer, int layers, int heads, int kv_heads, int head_dim,
                                           int block_size, float scale, float softcap, int window) {
    extern __shared__ float smem[];
    int tile = blockIdx.x, head = blockIdx.y;
    int first = tiles[2 * tile], count = tiles[2 * tile + 1];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = heads * head_dim, kvw = kv_heads * head_dim;
    int g = head / (heads / kv_heads);
    float* qs = smem;
    float* ks = qs + TILE_ROWS * head_dim;  // transposed: ks[e * TILE_POS + j]
    float* vs = ks + head_dim * TILE_POS;   // vs[j * head_dim + e]
    for (int i = threadIdx.x; i < count * head_dim; i += blockDim.x) {
        int r = i / head_dim, e = i % head_dim;
        qs[i] = qkv[(size_t)(first + r) * (h + 2 * kvw) + head * head_dim + e] * scale;
    }
    const int* table = tables + table_off[seq[first]];
    int last_pos = pos[first + count - 1];
    size_t layer_stride = 2 * (size_t)kvw * block_size;
    size_t block_stride = layer_stride * layers;
    const h16* layer_base = pool + layer * layer_stride;
    int dims = (head_dim + 31) >> 5;
    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][TILE_MAX_DIMS];
    int my_pos[ROWS_PER_WARP];
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        int r = warp * ROWS_PER_WARP + i;
        my_pos[i] = r < count ? pos[first + r] : -1;
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int d = 0; d < TILE_MAX_DIMS; d++) acc[i][d] = 0.0f;
    }
    // From the chunk of the first row's window start (rows are in increasing positions).
    for (int t0 = window_start(pos[first], window) / TILE_POS * TILE_POS; t0 <= last_pos; t0 += TILE_POS) {
        __syncthreads();  // every warp is done with the previous chunk (and qs is written)
        for (int i = threadIdx.x; i < TILE_POS * head_dim; i += blockDim.x) {
            int j = i / head_dim, e = i % head_dim, t = t0 + j;
            float v = 0.0f;
            if (t <= last_pos)
                v = h2f(layer_base[(size_t)table[t / block_size] * block_stride + (size_t)kvw * block_size +
                                   (size_t)(t % block_size) * kvw + g * head_dim + e]);
            vs[j * head_dim + e] = v;
        }
        for (int i = threadIdx.x; i < TILE_POS * head_dim; i += blockDim.x) {
            int e = i / TILE_POS, j = i % TILE_POS, t = t0 + j;
            float k = 0.0f;
            if (t <= last_pos)
                k = h2f(layer_base[(size_t)table[t / block_size] * block_stride +
                                   (size_t)(g * head_dim + e) * block_size + t % block_size]);
            ks[e * TILE_POS + j] = k;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; i++) {
            int p = my_pos[i], lo = window_start(p, window);
            if (p < t0 || t0 + TILE_POS <= lo) continue;  // the same for the whole warp
            const float* q = qs + (warp * ROWS_PER_WARP + i) * head_dim;
            int t = t0 + lane;
            bool seen = t >= lo && t <= p;
            float s = -INFINITY;
            if (seen) {
                float d = 0.0f;
                for (int e = 0; e < head_dim; e++) d += q[e] * ks[e * TILE_POS + lane];
                s = capped(d, softcap);
            }
            float mn = fmaxf(m[i], warp_max(s));
            float corr = expf(m[i] - mn);
            float pr = seen ? expf(s - mn) : 0.0f;
            l[i] = l[i] * corr + warp_sum(pr);
#pragma unroll
            for (int d = 0; d < TILE_MAX_DIMS; d++) acc[i][d] *= corr;
            int valid = min(TILE_POS, p - t0 + 1);
            for (int j = 0; j < valid; j++) {
                float pj = __shfl_sync(0xffffffffu, pr, j);
#pragma unroll
                for (int d = 0; d < TILE_MAX_DIMS; d++)
                    if (d < dims && lane + 32 * d < head_dim) acc[i][d] += pj * vs[j * head_dim + lane + 32 * d];
            }
            m[i] = mn;
        }
    }
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; i++) {
        int r = warp * ROWS_PER_WARP + i;
        if (r >= count) continue;
#pragma unroll
        for (int d = 0; d < TILE_MAX_DIMS; d++)
            if (d < dims && lane + 32 * d < head_dim)
                out[(size_t)(first + r) * h + head * head_dim + lane + 32 * d] = f2h(acc[i][d] / l[i]);
    }
}

// out[r] = act(gate) * up from gate_up rows [gate | up] (f32), as f16: act is SiLU, or GELU with
// the tanh approximation where `gelu` (Gemma's GeGLU).
extern "C" __global__ void gated_act(const float* gate_up, h16* out, int ffn, int rows, int gelu) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * ffn) return;
    size_t r = i / ffn, c = i % ffn;
    float g = gate_up[r * 2 * ffn + c], u = gate_up[r * 2 * ffn + ffn + c];
    float a = gelu ? 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) : g / (1.0f + expf(-g));
    out[i] = f2h(a * u);
}

// out[r] = the index of row r's largest logit, the lowest index on ties (one block per row).
extern "C" __global__ void argmax_rows(const float* logits, int vocab, int* out) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = best_v[threadIdx.x + s];
            int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] == 0x7fffffff ? 0 : best_i[0];
}

// Temperature and top-p (nucleus) sampling, one block per row: probabilities softmax(l / T); the
// nucleus is every token whose probability is at least the largest threshold c at which the mass
// of such tokens still reaches top_p (found by bisection); then the token where the running mass
// of the nucleus, in index order, passes uniform[r] times its total. Non-finite logits are never
// drawn; a row with none finite gets token 0.
extern "C" __global__ void sample_top_p(const float* logits, int vocab, const float* temperature,
                                        const float* top_p, const float* uniform, int* out) {
    __shared__ float shared[32];
    __shared__ float prefix[1024];
    int r = blockIdx.x;
    const float* row = logits + (size_t)r * vocab;
    float inv_t = 1.0f / temperature[r];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (isfinite(row[i])) m = fmaxf(m, row[i]);
    m = block_max(m, shared);
    if (m == -INFINITY) {
        if (threadIdx.x == 0) out[r] = 0;
        return;
    }
    float z = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (isfinite(row[i])) z += expf((row[i] - m) * inv_t);
    z = block_sum(z, shared);
    float lo = 0.0f, hi = 1.0f + 1e-6f, want = top_p[r];
    for (int it = 0; it < 40; it++) {
        float mid = 0.5f * (lo + hi), mass = 0.0f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float pr = isfinite(row[i]) ? expf((row[i] - m) * inv_t) / z : 0.0f;
            if (pr >= mid) mass += pr;
        }
        mass = block_sum(mass, shared);
        if (mass >= want) lo = mid; else hi = mid;
    }
    // Each thread's contiguous chunk of the vocabulary, scanned in index order.
    int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    int begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
    float own = 0.0f;
    for (int i = begin; i < end; i++) {
        float pr = isfinite(row[i]) ? expf((row[i] - m) * inv_t) / z : 0.0f;
        if (pr >= lo && pr > 0.0f) own += pr;
    }
    prefix[threadIdx.x] = own;
    __syncthreads();
    if (threadIdx.x == 0) {
        float run = 0.0f;
        for (int t = 0; t < (int)blockDim.x; t++) {
            float v = prefix[t];
            prefix[t] = run;
            run += v;
        }
        shared[0] = run;
        out[r] = -1;
    }
    __syncthreads();
    float target = uniform[r] * shared[0];
    float run = prefix[threadIdx.x];
    if (own > 0.0f && target >= run && target < run + own) {
        for (int i = begin; i < end; i++) {
            float pr = isfinite(row[i]) ? expf((row[i] - m) * inv_t) / z : 0.0f;
            if (pr >= lo && pr > 0.0f) {
                run += pr;
                if (target < run) {
                    out[r] = i;
                    break;
                }
            }
        }
    }
    __syncthreads();
    // Rounding left the target past every chunk: take the nucleus' last token.
    if (threadIdx.x == 0 && out[r] < 0) {
        int last = 0;
        for (int i = 0; i < vocab; i++) {
            float pr = isfinite(row[i]) ? expf((row[i] - m) * inv_t) / z : 0.0f;
            if (pr >= lo && pr > 0.0f) last = i;
        }
        out[r] = last;
    }
}
