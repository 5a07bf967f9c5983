/* A stand-in for the NVIDIA driver's libcuda.so.1, for machines without a GPU (CI, this project's machines).
 *
 * mxnet-cu112's libmxnet.so links libcuda.so.1, which only a driver install provides, so without one the GPU
 * build cannot even be imported. Every CUDA 11 library it needs comes from the nvidia-*-cu11 wheels; from the
 * driver it needs the entry points below (libmxnet.so's own undefined cu* symbols, which the test checks
 * against `nm -D --undefined-only`, plus what the CUDA runtime asks for at start). Each answers
 * CUDA_ERROR_NO_DEVICE: a machine with a driver and no GPU. That is enough to import the GPU build, read its
 * features, see zero GPUs and train on the CPU. It runs no kernel: it proves nothing about a real GPU.
 */
#include <stddef.h>

#define CUDA_ERROR_NO_DEVICE 100

static const char no_device[] = "no CUDA-capable device is detected (mxlab's stand-in driver)";

/* Reports its error as text, so that error messages stay readable. */
int cuGetErrorString(int error, const char **text) { if (text) *text = no_device; (void)error; return 0; }

/* The rest: "no device", whatever the arguments (none are read). */
#define NO_DEVICE(name) int name(void) { return CUDA_ERROR_NO_DEVICE; }
/* What the CUDA runtime (libcudart, from the wheel) looks up when it starts. */
NO_DEVICE(cuInit)
NO_DEVICE(cuDriverGetVersion)
NO_DEVICE(cuGetProcAddress)
NO_DEVICE(cuGetExportTable)
NO_DEVICE(cuDeviceGetCount)
/* libmxnet.so's own undefined driver symbols (runtime-compiled kernels, CUDA graphs). */
NO_DEVICE(cuDeviceGet)
NO_DEVICE(cuDevicePrimaryCtxRetain)
NO_DEVICE(cuGraphKernelNodeGetParams)
NO_DEVICE(cuGraphNodeGetType)
NO_DEVICE(cuLaunchKernel)
NO_DEVICE(cuModuleGetFunction)
NO_DEVICE(cuModuleLoadData)
NO_DEVICE(cuModuleLoadDataEx)
NO_DEVICE(cuModuleUnload)
