/* Stand-ins for the ~10 functions that TensorRT's Python bindings (tensorrt.so) import from
 * libnvinfer, libnvinfer_plugin and libnvonnxparser, so the module can be imported on a machine
 * without TensorRT for one purpose only: generating type stubs (pybind11-stubgen introspects
 * classes and docstrings; it never creates a builder or runtime).
 *
 * Every function returns NULL / 0: anything that would really build or run fails immediately. The
 * bindings resolve these symbols by name only (they are unversioned in the real libraries), so the
 * shim is compiled into libnvinfer.so.11 and the other two libraries are empty with the right
 * SONAMEs (see make_stubs.py). Signatures are approximate; no caller ever runs them. */
#include <stddef.h>
#include <stdint.h>

void *createInferBuilder_INTERNAL(void *logger, int32_t version) {
    (void)logger; (void)version; return NULL;
}
void *createInferRuntime_INTERNAL(void *logger, int32_t version) {
    (void)logger; (void)version; return NULL;
}
void *createInferRefitter_INTERNAL(void *engine, void *logger, int32_t version) {
    (void)engine; (void)logger; (void)version; return NULL;
}
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(int32_t capability) { (void)capability; return NULL; }
int initLibNvInferPlugins(void *logger, const char *lib_namespace) {
    (void)logger; (void)lib_namespace; return 0;
}
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int32_t version) {
    (void)network; (void)logger; (void)version; return NULL;
}
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int32_t version) {
    (void)refitter; (void)logger; (void)version; return NULL;
}
int getNvOnnxParserVersion(void) { return 0; }
