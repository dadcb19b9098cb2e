/*
 * cuda_memcpy_bw.cu: the reference Ferry's GPU figures are compared with:
 * cudaMemcpy bandwidth on one GPU, device to device, host (pinned) to
 * device and device to host, for 1 MiB .. 1 GiB (powers of 4 by default).
 *
 * Prints one line per (direction, size): bytes moved per second of the
 * copies, in GB/s (10^9 bytes; a device-to-device copy reads and writes
 * each byte, this counts it once, as a transfer's bandwidth does). Each size
 * is timed with CUDA events around ITERS copies after WARMUP copies; the
 * destination is checked against the source pattern once per size.
 *
 *   ferry_cuda_memcpy_bw [--device N] [--max-mib M] [--iters K]
 *
 * Uses only the CUDA runtime (no kernels), linked statically by nvcc, so it
 * needs just the driver (libcuda.so.1) where it runs. Exit status 2 where
 * there is no usable GPU, 1 on a failed copy or check.
 */
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "cuda_memcpy_bw: %s: %s\n", #call, cudaGetErrorString(err_));         \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

enum dir { D2D, H2D, D2H };
static const char *const dir_name[] = {"d2d", "h2d", "d2h"};

static int run_size(enum dir dir, size_t size, int iters, unsigned char *h_src, unsigned char *h_dst,
                    unsigned char *d_a, unsigned char *d_b, double *gbps)
{
    void *dst = dir == D2H ? (void *)h_dst : (void *)d_b;
    const void *src = dir == H2D ? (const void *)h_src : (const void *)d_a;
    cudaMemcpyKind kind = dir == D2D   ? cudaMemcpyDeviceToDevice
                          : dir == H2D ? cudaMemcpyHostToDevice
                                       : cudaMemcpyDeviceToHost;
    cudaEvent_t start, stop;
    float ms = 0;

    CHECK(cudaMemset(d_b, 0, size));
    memset(h_dst, 0, size);
    for (int i = 0; i < 2; i++) {
        CHECK(cudaMemcpy(dst, src, size, kind));
    }
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    CHECK(cudaEventRecord(start, 0));
    for (int i = 0; i < iters; i++) {
        CHECK(cudaMemcpyAsync(dst, src, size, kind, 0));
    }
    CHECK(cudaEventRecord(stop, 0));
    CHECK(cudaEventSynchronize(stop));
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    CHECK(cudaEventDestroy(start));
    CHECK(cudaEventDestroy(stop));
    *gbps = (double)size * iters / (ms / 1e3) / 1e9;

    /* Check: bring the destination to host memory and compare. */
    if (dir != D2H) {
        CHECK(cudaMemcpy(h_dst, d_b, size, cudaMemcpyDeviceToHost));
    }
    if (memcmp(h_dst, h_src, size) != 0) {
        fprintf(stderr, "cuda_memcpy_bw: %s %zu bytes: destination differs from source\n",
                dir_name[dir], size);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int device = 0, iters = 20, count = 0;
    size_t max = (size_t)1 << 30;
    unsigned char *h_src, *h_dst, *d_a, *d_b;
    cudaDeviceProp prop;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--device") == 0) {
            device = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--max-mib") == 0) {
            max = (size_t)strtoull(argv[i + 1], NULL, 10) << 20;
        } else if (strcmp(argv[i], "--iters") == 0) {
            iters = atoi(argv[i + 1]);
        } else {
            fprintf(stderr, "usage: %s [--device N] [--max-mib M] [--iters K]\n", argv[0]);
            return 1;
        }
    }
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        fprintf(stderr, "cuda_memcpy_bw: no CUDA device (%s)\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "count 0");
        return 2;
    }
    if (device < 0 || device >= count || max < ((size_t)1 << 20) || iters < 1) {
        fprintf(stderr, "cuda_memcpy_bw: bad --device, --max-mib or --iters\n");
        return 1;
    }
    CHECK(cudaSetDevice(device));
    CHECK(cudaGetDeviceProperties(&prop, device));
    printf("# device %d: %s, %.1f GiB, cuda runtime ", device, prop.name,
           prop.totalGlobalMem / (double)(1 << 30));
    {
        int rt = 0, drv = 0;
        cudaRuntimeGetVersion(&rt);
        cudaDriverGetVersion(&drv);
        printf("%d, driver %d\n", rt, drv);
    }
    CHECK(cudaMallocHost((void **)&h_src, max));
    CHECK(cudaMallocHost((void **)&h_dst, max));
    CHECK(cudaMalloc((void **)&d_a, max));
    CHECK(cudaMalloc((void **)&d_b, max));
    for (size_t i = 0; i < max; i++) {
        h_src[i] = (unsigned char)(i * 131 + (i >> 20));
    }
    CHECK(cudaMemcpy(d_a, h_src, max, cudaMemcpyHostToDevice));

    printf("%-4s %12s %10s\n", "dir", "bytes", "GB/s");
    for (int d = D2D; d <= D2H; d++) {
        for (size_t size = (size_t)1 << 20; size <= max; size <<= 2) {
            double gbps = 0;
            /* Fewer iterations for the big sizes keeps the run short. */
            int n = size >= ((size_t)256 << 20) ? (iters + 3) / 4 : iters;
            if (run_size((enum dir)d, size, n, h_src, h_dst, d_a, d_b, &gbps) != 0) {
                return 1;
            }
            printf("%-4s %12zu %10.2f\n", dir_name[d], size, gbps);
            fflush(stdout);
        }
    }
    cudaFree(d_a);
    cudaFree(d_b);
    cudaFreeHost(h_src);
    cudaFreeHost(h_dst);
    return 0;
}
