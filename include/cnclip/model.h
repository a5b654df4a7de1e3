// The Chinese-CLIP encoders of a model bundle, run by LibTorch. LibTorch stays behind this header
// (pimpl), so code that only needs embeddings compiles without its heavy headers, and out of the
// program: everything that needs it is in the model module, libcnclip_model.so, which the library
// loads (dlopen) the first time a Model needs a tower (a load_*_tower or encode_* call, or a device
// other than "cpu"), and the functions below that say so. Loading LibTorch's ~290 shared libraries
// takes ~0.3-0.5 s, which commands that never encode (info, tokenize, remove, ...) do not pay.
//
// Where the module is: $CNCLIP_MODEL_MODULE (its full path) when set and not empty; else, when cnclip
// was configured with CNCLIP_MODEL_MODULE_DIR (relative to the executable's directory, or absolute)
// and the module is there, that; else next to the executable (/proc/self/exe), as in a build tree.
// A module that cannot be loaded (missing, not a shared library, missing LibTorch libraries, or built
// for another cnclip) makes the call that needed it throw Exception, one line naming the module's
// path and dlerror(): kNotFound (no such file), kCorrupt (dlopen failed), kMismatch (another build).
// A failed load is tried again on the next call; a loaded module stays loaded.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/bundle.h"
#include "cnclip/tokenizer.h"

namespace cnclip {

struct ModelOptions {
  std::string device = "cpu";  // "cpu" or "cuda" / "cuda:N"
  int threads = 0;             // LibTorch intra-op threads; 0 = all cores
  // Let TorchScript's profiling executor optimize the graphs. It pays off for many calls (indexing:
  // ~10% faster ViT-B-16 here) and costs ~50 ms on the first calls, all that a one-shot query makes.
  // Process-wide in LibTorch: the last Model opened decides.
  // fp32 Linear layers: where oneDNN runs AVX-512 (brgemm) and leads (not AMD family 19h), both towers'
  // products by a constant matrix run on oneDNN's float32 matmul on weights packed once at load, over
  // the bundle's (src/linear_packed.h), the MLP's GELU or SiLU as a post-op, the final projection too:
  // a row then gets the same bits in any batch and on any thread count, which OpenBLAS's AVX2 kernels
  // (forced as this workplace does) did not (~1e-7 apart between batches of 1, 4 and 6 here). ViT-B-16 on 2
  // threads, Zen 5: 135 -> 117 ms/image in batches of 4, the same peak memory; a 15-token query 14.2-14.8 ->
  // 12.3-13.6 ms against the weights in place (CNCLIP_IMAGE_LINEAR=libtorch leaves the image tower's to BLIS
  // and OpenBLAS as before, CNCLIP_TEXT_LINEAR=inplace the text tower's to oneDNN on the weights in place).
  // What is not packed, up to 192 rows (a text query's), runs on a small-matrix kernel that reads the
  // bundle's weights in place, on CPUs with AVX2 and FMA (OpenBLAS repacks each weight matrix on every
  // call): oneDNN's (the text tower's on the oneDNN route; a 15-token query 21-22 -> 15.6-16.2 ms against
  // OpenBLAS) or BLIS's (41 -> 23 ms against OpenBLAS on a Zen 4, where BLIS led oneDNN); larger ones
  // on OpenBLAS, with the kernels it picks for the CPU. There which kernel computes a row depends on the
  // number of rows, so a text's embedding may differ by ~1e-7 with the other texts of its encode call.
  // CNCLIP_FP32_LINEAR=onednn or =blis asks for one of the two; =blas keeps every Linear on OpenBLAS; =xnnpack instead
  // packs a float32 bundle's Linear weights once at load for XNNPACK (which picks its kernels from the CPU at run
  // time); it adds ~1 s to loading ViT-B-16's text tower and fails the load if it cannot be applied. Measured routes:
  // README "Against ONNX Runtime". Every route agrees to float rounding (cosine >= 0.99999,
  // tests/linear_route_test.cpp). oneDNN, BLIS and OpenBLAS compute with the calling thread's compute threads
  // (set_compute_threads); XNNPACK in LibTorch's one process-wide thread pool, sized by the last set_compute_threads
  // call of any thread. int8 Linear layers (a bundle exported with --precision int8) run on oneDNN's int8 matmul with
  // weights packed once per layer for the CPU's instructions and the activations' scale given per call
  // (src/linear_int8.h), the MLP's activation computed by the product: a 15-token ViT-B-16 query
  // 28 -> 7.5 ms on 2 threads here, where LibTorch's own kernel repacked the weights on every call;
  // ~0.1-0.25 GB more memory (the packed copies beside LibTorch's). On CPUs with VNNI the activations
  // take all 8 bits, not PyTorch's 7: cosine to the float32 tower 0.9982 -> 0.9992 (ViT-B-16 text).
  // int8 towers are frozen at load (one inlined graph). CNCLIP_INT8_LINEAR=libtorch keeps LibTorch's
  // kernel and graph. The attention products (either precision) run on oneDNN's batched matmul: an
  // image's, and a text's on the calling thread where oneDNN has brgemm for it (AVX-512: ~0.35 ms of a
  // query; src/batched_matmul.h; CNCLIP_BATCHED_MATMUL=libtorch keeps aten::matmul). Layer norms and
  // softmaxes of fewer than 65,536 values (a text query's)
  // run on the calling thread alone, where LibTorch split them over the compute threads in parallel
  // regions that cost more than they computed (src/small_ops.h; the same floats; an int8 query 4% faster
  // here; CNCLIP_SMALL_OPS=libtorch keeps LibTorch's threading). An image's attention softmax, chosen
  // per batch item, runs on oneDNN's instead (4x faster; CNCLIP_SOFTMAX=libtorch keeps LibTorch's).
  bool optimize_for_many_calls = false;
};

// Per input of one encode call: std::nullopt for a usable embedding, else why it is not.
using RowErrors = std::vector<std::optional<Error>>;

// Why an embedding cannot be used, or std::nullopt: a value that is NaN or infinite, a length of ~0,
// or (when `normalized`, i.e. the bundle promises L2-normalized output) a length other than 1.
std::optional<std::string> embedding_problem(const float* embedding, int dim, bool normalized);

// Owns the bundle's two TorchScript towers and its tokenizer. Each tower (and the tokenizer) is
// loaded on first use, so a text search never reads the image tower. Thread-safety: once a tower is
// loaded (load_image_tower / load_text_tower), its encode_* calls may run concurrently from several
// threads, each with the compute threads it set for itself, and so may tokenizer(), manifest(),
// dim() and on_cpu() at any time; everything else, one thread at a time.
// Failures throw Exception naming the bundle file.
class Model {
 public:
  // Reads and checks bundle.json; loads nothing else yet (for a device other than "cpu": loads the
  // model module and checks the device, kInvalidArgument if it does not exist).
  static std::unique_ptr<Model> open(const std::string& bundle_dir, const ModelOptions& options = {});
  ~Model();

  const BundleManifest& manifest() const;
  int dim() const { return manifest().embedding_dim; }

  // Every embedding a tower returns is checked here, for every caller (embedding_problem): a damaged
  // bundle can return NaN, infinities or zeros, which must never be printed or stored. With
  // row_errors == nullptr, one bad embedding makes the call throw Exception (kCorrupt, naming the
  // bundle and the input's position). With row_errors, the call fails only the inputs concerned:
  // row_errors gets one entry per input (an Error of code kCorrupt for a bad one, whose row of the
  // result is zeros and must not be used), and throws only when the model itself fails.

  // pixels: float [batch,3,R,R] (see image.h). Returns batch*dim L2-normalized floats.
  std::vector<float> encode_images(const float* pixels, int batch, RowErrors* row_errors = nullptr);
  // ids: `batch` rows of `length` token ids (0 = padding). Trailing columns that are padding in every
  // row are not computed (the attention mask makes them irrelevant). Returns batch*dim floats.
  std::vector<float> encode_token_ids(const int64_t* ids, int batch, int length, RowErrors* row_errors = nullptr);
  // Tokenize with the bundle's vocabulary, then encode. Throws for invalid UTF-8.
  std::vector<float> encode_texts(const std::vector<std::string>& texts, RowErrors* row_errors = nullptr);

  bool on_cpu() const;

  const Tokenizer& tokenizer();
  void load_image_tower();
  void load_text_tower();
  bool image_tower_loaded() const;
  bool text_tower_loaded() const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The model module's path, as found by the rule above (whether or not it exists).
std::string model_module_path();
// Whether this process has loaded the model module (and so LibTorch). Thread-safe.
bool model_module_loaded();

// Before the model module is loaded, these two act on OpenMP alone (what FAISS computes with), and
// the module applies the last count set when it loads. Thread-safe.
// Sets LibTorch's intra-op thread count (which also sizes OpenMP, and so FAISS). n <= 0: all cores.
// Call once before heavy work: LibTorch defaults to 1 thread on some systems. OpenMP keeps this per
// thread: it holds for the calling thread, and for threads that start computing after the call.
void set_compute_threads(int n);
// The calling thread's intra-op thread count.
int compute_threads();

// "LibTorch 1.13.1, OpenBLAS (PATH, Cooperlake kernels), float32 Linear layers: BLIS 0.9.0 (zen3
// kernels), 2 intra-op threads": what actually computes (OpenBLAS's and BLIS's kernels as they chose
// them for the CPU, or as OPENBLAS_CORETYPE / BLIS_ARCH_TYPE forced), for benchmarks.
// Loads the model module (as does measure_sgemm_gflops); throws Exception if it cannot.
std::string compute_backend_description();

// Measured float32 matrix-multiply throughput (n x n times n x n, through LibTorch), in GFLOP/s.
double measure_sgemm_gflops(int n, int repeats);

}  // namespace cnclip
