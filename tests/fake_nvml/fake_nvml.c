/* A fake libnvidia-ml.so.1 for tests: the NVML entry points the agent reaches through
 * nvml-wrapper, answering from a script file, so the GPU path (dlopen, symbol lookup,
 * FFI structs, sampler, events, exporters, live page) runs end to end without a GPU.
 *
 * FAKE_NVML_SCRIPT names the file; it is re-read on every call, so a test can change
 * the figures while the agent runs. One item per line, '#' starts a comment:
 *   device  NAME UUID TOTAL USED FREE RESERVED      (bytes; the index is the order)
 *   process DEVICE_INDEX PID USED_BYTES              (a compute context)
 * Build: cc -shared -fPIC -o libnvidia-ml.so.1 fake_nvml.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_UNKNOWN 999

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

/* nvmlProcessInfo_t of NVML 11.5+ (the layout the _v2 and _v3 calls fill). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define MAX_DEVICES 16
#define MAX_PROCS 256

struct device {
    char name[96], uuid[96];
    unsigned long long total, used, free, reserved;
};
struct proc {
    unsigned int device, pid;
    unsigned long long used;
};

static struct device devices[MAX_DEVICES];
static struct proc procs[MAX_PROCS];
static unsigned int n_devices, n_procs;
static int initialized;

static nvmlReturn_t load(void) {
    const char *path = getenv("FAKE_NVML_SCRIPT");
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[512];
    if (!f)
        return NVML_ERROR_UNKNOWN;
    n_devices = n_procs = 0;
    while (fgets(line, sizeof line, f)) {
        struct device d;
        struct proc p;
        if (line[0] == '#')
            continue;
        if (n_devices < MAX_DEVICES &&
            sscanf(line, "device %95s %95s %llu %llu %llu %llu", d.name, d.uuid, &d.total,
                   &d.used, &d.free, &d.reserved) == 6)
            devices[n_devices++] = d;
        else if (n_procs < MAX_PROCS &&
                 sscanf(line, "process %u %u %llu", &p.device, &p.pid, &p.used) == 3)
            procs[n_procs++] = p;
    }
    fclose(f);
    return NVML_SUCCESS;
}

/* Handles are index + 1, so NULL is never a valid one. */
static struct device *dev(nvmlDevice_t h, unsigned int *index) {
    uintptr_t i = (uintptr_t)h;
    if (!initialized || load() != NVML_SUCCESS || i == 0 || i > n_devices)
        return NULL;
    if (index)
        *index = (unsigned int)(i - 1);
    return &devices[i - 1];
}

static nvmlReturn_t copy_str(const char *s, char *out, unsigned int len) {
    if (!out || strlen(s) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, s);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    nvmlReturn_t rc = load();
    initialized = rc == NVML_SUCCESS;
    return rc;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t rc) {
    return rc == NVML_SUCCESS ? "Success" : "fake NVML error";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int len) {
    return copy_str("999.99-fake", version, len);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!count || load() != NVML_SUCCESS)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = n_devices;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || load() != NVML_SUCCESS || index >= n_devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(uintptr_t)(index + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned int len) {
    struct device *d = dev(h, NULL);
    return d ? copy_str(d->name, name, len) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int len) {
    struct device *d = dev(h, NULL);
    return d ? copy_str(d->uuid, uuid, len) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    struct device *d = dev(h, NULL);
    if (!d || !m)
        return NVML_ERROR_INVALID_ARGUMENT;
    m->total = d->total;
    m->used = d->used;
    m->free = d->free;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m) {
    struct device *d = dev(h, NULL);
    /* The caller must set NVML_STRUCT_VERSION(Memory, 2), as the real library checks. */
    if (!d || !m || m->version != (unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
        return NVML_ERROR_INVALID_ARGUMENT;
    m->total = d->total;
    m->reserved = d->reserved;
    m->used = d->used;
    m->free = d->free;
    return NVML_SUCCESS;
}

static nvmlReturn_t processes(nvmlDevice_t h, unsigned int *count, nvmlProcessInfo_t *infos) {
    unsigned int index, n = 0, i;
    if (!dev(h, &index) || !count)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < n_procs; i++)
        n += procs[i].device == index;
    if (*count < n || (!infos && n > 0)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = 0;
    for (i = 0; i < n_procs; i++) {
        if (procs[i].device != index)
            continue;
        infos[*count].pid = procs[i].pid;
        infos[*count].usedGpuMemory = procs[i].used;
        infos[*count].gpuInstanceId = 0xFFFFFFFF;
        infos[*count].computeInstanceId = 0xFFFFFFFF;
        (*count)++;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return processes(h, count, infos);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t h, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return processes(h, count, infos);
}
