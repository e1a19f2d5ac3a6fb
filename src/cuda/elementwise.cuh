/* elementwise.cuh - the embedding gather and the elementwise kernels (swiglu, add, gather_rows,
 * bias_act, ew).
 * Part of backend_cuda.cu's translation unit (included there once, in order); not a header
 * of its own. */

__global__ void k_embed(float *out, const void *table, int dt, bool tiles, const int32_t *ids, int cols) {
    pdl_start();
    const int i = blockIdx.x;
    const size_t row = (size_t)ids[i];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(size_t)i * cols + c] = weight_rc(table, dt, tiles, row, c, cols);
}

__global__ void k_swiglu(float *out, const float *gate, const float *up, size_t n) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) out[i] = silu_mul(gate[i], up[i]);
}

__global__ void k_add(float *x, const float *y, size_t n) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] += y[i];
}

__global__ void k_gather_rows(float *dst, int dst_stride, const float *src, int src_stride, const int32_t *rows, int cols) {
    pdl_start();
    const int i = blockIdx.x;
    const float *s = src + (size_t)(rows ? rows[i] : i) * src_stride;
    float *d = dst + (size_t)i * dst_stride;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

__global__ void k_bias_act(float *x, const void *bias, int dt, size_t n, int dim, int act) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i] + (bias ? weight_at(bias, dt, i % dim) : 0.0f);
        if (act == ACT_SIGMOID) v = 1.0f / (1.0f + expf(-v));
        else if (act == ACT_TANH) v = tanhf(v);
        x[i] = v;
    }
}

__global__ void k_ew(int op, float *out, const float *a, const float *b, const float *c, size_t n) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if (op == EW_MUL) out[i] = a[i] * b[i];
        else out[i] = c[i] * a[i] + (1.0f - c[i]) * b[i];
    }
}
