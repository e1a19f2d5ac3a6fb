/* tests/emu/cuda_runtime.h - the part of the CUDA runtime that src/cuda/ uses, on the CPU, for
 * the backend built by g++ against tests/cuda_emu.h (test_cuda_emu): device memory is host
 * memory, a launch runs its kernel at once (cuda_emu.h), a stream is a name, copies are memcpy,
 * a graph is the list of its stream's ops (replayed in order); one device, "emulated". */
#ifndef DSPARK_EMU_CUDA_RUNTIME_H
#define DSPARK_EMU_CUDA_RUNTIME_H

#include "cuda_emu.h"

#include <stdlib.h>
#include <string.h>

typedef int cudaError_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNotSupported = 801,
    cudaErrorStreamCaptureUnsupported = 900,
};
typedef struct EmuStream *cudaStream_t;
typedef struct EmuGraph *cudaGraph_t;
typedef struct EmuGraphExec *cudaGraphExec_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeRelaxed };
enum { cudaStreamNonBlocking = 1 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaLaunchAttributeID { cudaLaunchAttributeProgrammaticStreamSerialization = 5 };

struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};
struct cudaFuncAttributes {
    int numRegs, maxThreadsPerBlock;
};
struct cudaLaunchAttribute {
    cudaLaunchAttributeID id;
    struct {
        int programmaticStreamSerializationAllowed;
    } val;
};
struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
};

namespace emu {
enum { SMS = 4 }; /* the emulated device's SMs: launches sized by SMs stay small */
inline size_t g_allocated;
/* a graph: the stream's work in order, each launch with its arguments as captured */
struct Graph {
    std::vector<std::function<void()>> ops;
};
inline Graph *g_capture; /* the graph being captured (one stream at a time), else NULL */
/* op now, or into the graph being captured */
template <typename F>
inline void submit(F &&op) {
    if (g_capture) g_capture->ops.emplace_back(std::forward<F>(op));
    else op();
}
} // namespace emu
struct EmuGraph : emu::Graph {};
struct EmuGraphExec : emu::Graph {};

inline const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "emulated (tests/cuda_emu.h)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = emu::SMS;
    p->totalGlobalMem = (size_t)4 << 30;
    return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
    a->numRegs = 64;
    a->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, F, int, size_t) {
    *n = 2;
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    *total_b = (size_t)4 << 30;
    *free_b = *total_b - emu::g_allocated;
    return cudaSuccess;
}
/* (waiting inside a capture is an error, as on the GPU) */
inline cudaError_t cudaDeviceSynchronize() { return emu::g_capture ? cudaErrorStreamCaptureUnsupported : cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu::g_capture ? cudaErrorStreamCaptureUnsupported : cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    static char names[1];
    *s = (cudaStream_t)names; /* (a name: every stream is the one host thread) */
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

/* device memory: host memory, 256-byte aligned, filled with a NaN pattern (a read before a
 * write shows) */
inline cudaError_t cudaMalloc(void **p, size_t n) {
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, n);
    emu::g_allocated += n;
    return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
inline cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
    emu::submit([=] {
        if (n) memmove(d, s, n);
    });
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t = nullptr) {
    emu::submit([=] { memset(d, v, n); });
    return cudaSuccess;
}

/* a launch runs the kernel now, block after block (or, in a capture, when the graph runs: with
 * the arguments it has now, as a graph's kernel node keeps them) */
template <typename... KArgs, typename... Args>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *lc, void (*kernel)(KArgs...), Args... args) {
    const dim3 grid = lc->gridDim, block = lc->blockDim;
    const size_t smem = lc->dynamicSmemBytes;
    emu::submit([=] { emu::launch(grid, block, smem, [&] { kernel(args...); }); });
    return cudaSuccess;
}

/* graphs: a capture records the stream's ops; an instance replays them in order */
inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    if (emu::g_capture) return cudaErrorStreamCaptureUnsupported;
    emu::g_capture = new EmuGraph;
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
    *g = static_cast<EmuGraph *>(emu::g_capture);
    emu::g_capture = nullptr;
    return *g ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) {
    *e = new EmuGraphExec;
    (*e)->ops = g->ops;
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
    if (emu::g_capture) return cudaErrorStreamCaptureUnsupported;
    for (const auto &op : e->ops) op();
    return cudaSuccess;
}

#endif
