// The float32 towers' Linear routes (model.h, "fp32 Linear layers"): oneDNN or BLIS for products of
// few rows (the default on CPUs with AVX2 and FMA: oneDNN where it runs AVX-512 and leads), BLAS, and
// XNNPACK with weights packed at load (CNCLIP_FP32_LINEAR=xnnpack), on bundles
// with either Linear weight storage (transposed, as exported now; plain [out, in], as before). Whatever
// route runs, the
// embeddings must stay those of the reference model: within 1e-5 of Chinese-CLIP's reference
// features, and at cosine >= 0.99999 to the BLAS route's.
#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cnclip/model.h"
#include "cnclip/npy.h"
#include "cnclip/runtime.h"
#include "damage_util.h"
#include "test_util.h"

namespace cnclip {
namespace {

// CNCLIP_FP32_LINEAR (or another route variable) set for a scope.
struct RouteEnv {
  explicit RouteEnv(const char* route, const char* variable = "CNCLIP_FP32_LINEAR") : name(variable) {
    setenv(name, route, 1);
  }
  ~RouteEnv() { unsetenv(name); }
  const char* name;
};

double min_cosine(const std::vector<float>& a, const std::vector<float>& b, size_t dim) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 1;
  for (size_t r = 0; r < std::min(a.size(), b.size()) / dim; ++r) {
    double dot = 0, na = 0, nb = 0;
    for (size_t i = r * dim; i < (r + 1) * dim; ++i) {
      dot += double(a[i]) * b[i];
      na += double(a[i]) * a[i];
      nb += double(b[i]) * b[i];
    }
    worst = std::min(worst, dot / std::sqrt(na * nb));
  }
  return worst;
}

using test::max_abs_diff;
using test::normalized_rows;

struct Embeddings {
  std::vector<float> texts_batch, text_each, text_each_again, images;
};

// The reference texts as one padded batch and one at a time (the 15-token-query shape), and the
// reference images, through a tower loaded under `route`, as a many-call command loads it.
Embeddings embed_with(const char* route, const std::string& bundle = test::tiny_bundle(),
                      const char* variable = "CNCLIP_FP32_LINEAR") {
  RouteEnv env(route, variable);
  auto model = Model::open(bundle, ModelOptions{"cpu", 0, /*optimize_for_many_calls=*/true});
  Embeddings e;
  const auto ids = read_npy(test::fixtures("reference/text_tokens.npy")).value().as_int64();
  e.texts_batch = model->encode_token_ids(ids.data(), 20, 52);
  // Twice: a route must leave the tower as it found it (one that added into a bias drifted).
  for (auto* each : {&e.text_each, &e.text_each_again}) {
    for (int t = 0; t < 20; ++t) {
      const auto one = model->encode_token_ids(ids.data() + t * 52, 1, 52);
      each->insert(each->end(), one.begin(), one.end());
    }
  }
  std::vector<float> pixels;
  for (const char* name : {"astronaut_palette", "camera_gray_1000x100", "chelsea_rgba", "coffee_2048x1366_exif6",
                           "pokemon", "rocket_rgb16_17x9"}) {
    auto t = read_npy(test::fixtures(std::string("preprocess/") + name + ".npy")).value().as_float();
    pixels.insert(pixels.end(), t.begin(), t.end());
  }
  e.images = model->encode_images(pixels.data(), 6);
  return e;
}

}  // namespace

// Every OpenMP parallel region of this process (LibTorch's, oneDNN's, BLAS's) passes here: the test
// program exports this definition (tests/CMakeLists.txt), which takes the place of libgomp's.
std::atomic<long> g_parallel_regions{0};
extern "C" void GOMP_parallel(void (*fn)(void*), void* data, unsigned threads, unsigned flags) {
  using Real = void (*)(void (*)(void*), void*, unsigned, unsigned);
  static const auto real = reinterpret_cast<Real>(dlsym(RTLD_NEXT, "GOMP_parallel"));
  g_parallel_regions.fetch_add(1, std::memory_order_relaxed);
  real(fn, data, threads, flags);
}

namespace {

// OpenMP parallel regions per 52-token query of the reference texts, through a text tower loaded on 2
// threads with `variable` set to `route`, as a many-call command loads it; the thread's count must be
// 2 again after each query.
double parallel_regions_per_query(const std::string& bundle, const char* variable, const char* route) {
  RouteEnv env(route, variable);
  const auto ids = read_npy(test::fixtures("reference/text_tokens.npy")).value().as_int64();
  auto model = Model::open(bundle, ModelOptions{"cpu", 2, true});
  model->encode_token_ids(ids.data(), 1, 52);  // loads the tower
  const long before = g_parallel_regions.load();
  for (int t = 0; t < 20; ++t) model->encode_token_ids(ids.data() + t * 52, 1, 52);
  EXPECT_EQ(compute_threads(), 2) << "an operator left the thread's count at 1";
  return static_cast<double>(g_parallel_regions.load() - before) / 20;
}

// Layer norms and softmaxes of a query's size run on the calling thread (src/small_ops.h): the same
// floats as LibTorch's own threading gives, in fewer parallel regions (each wakes the other threads).
TEST(LinearRoute, SmallOperatorsRunOnTheCallingThreadWithTheSameFloats) {
  // An image's attention softmax is oneDNN's where small operators are cnclip's (the test below), and
  // rounds otherwise: LibTorch's here, to compare the threading alone.
  RouteEnv softmax("libtorch", "CNCLIP_SOFTMAX");
  for (const std::string& bundle : {test::tiny_bundle(), test::tiny_int8_bundle()}) {
    SCOPED_TRACE(bundle);
    const Embeddings ours = embed_with("on", bundle, "CNCLIP_SMALL_OPS");
    const Embeddings libtorch = embed_with("libtorch", bundle, "CNCLIP_SMALL_OPS");
    EXPECT_EQ(ours.texts_batch, libtorch.texts_batch);
    EXPECT_EQ(ours.text_each, libtorch.text_each);
    EXPECT_EQ(ours.images, libtorch.images);
    const double on = parallel_regions_per_query(bundle, "CNCLIP_SMALL_OPS", "on"),
                 off = parallel_regions_per_query(bundle, "CNCLIP_SMALL_OPS", "libtorch");
    // The tiny text tower's layer norms of 52 rows (the embeddings', the first layer's two; the last
    // layer's have one row) are split by LibTorch, not by cnclip.
    EXPECT_GE(off - on, 3) << "parallel regions per query: " << on << " against LibTorch's " << off;
  }
}

TEST(LinearRoute, EveryRouteGivesTheReferenceEmbeddings) {
  const auto text_ref = normalized_rows(read_npy(test::fixtures("reference/text_features.npy")).value().as_float(), 32);
  const auto image_ref =
      normalized_rows(read_npy(test::fixtures("reference/image_features.npy")).value().as_float(), 32);
  const Embeddings blas = embed_with("blas");
  const std::string plain = test::tiny_bundle() + "-plain";
  for (const auto& [route, bundle] : std::vector<std::pair<const char*, std::string>>{
           {"blas", test::tiny_bundle()},  // blas against itself: the references hold
           {"xnnpack", test::tiny_bundle()},
           {"blis", test::tiny_bundle()},
           {"onednn", test::tiny_bundle()},
           {"auto", test::tiny_bundle()},
           {"blis", plain},
           {"onednn", plain},
           {"blas", plain}}) {
    SCOPED_TRACE(std::string(route) + " " + bundle);
    const Embeddings e = embed_with(route, bundle);
    EXPECT_LE(max_abs_diff(e.texts_batch, text_ref), 1e-5f);
    EXPECT_LE(max_abs_diff(e.text_each, text_ref), 1e-5f);
    EXPECT_EQ(e.text_each, e.text_each_again);
    EXPECT_LE(max_abs_diff(e.images, image_ref), 1e-5f);
    EXPECT_GE(min_cosine(e.texts_batch, blas.texts_batch, 32), 0.99999);
    EXPECT_GE(min_cosine(e.text_each, blas.text_each, 32), 0.99999);
    EXPECT_GE(min_cosine(e.images, blas.images, 32), 0.99999);
  }
}

// Whether this CPU is one where oneDNN's products lead BLIS's (model.cpp,
// onednn_leads_for_small_linears): AVX-512 (F, BW, VL, DQ: oneDNN's avx512_core), not AMD family 19h.
bool onednn_should_lead() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq")) {
    return false;
  }
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __get_cpuid(0, &eax, &ebx, &ecx, &edx);
  const bool amd = ebx == 0x68747541;  // "Auth"
  __get_cpuid(1, &eax, &ebx, &ecx, &edx);
  unsigned family = (eax >> 8) & 0xf;
  if (family == 0xf) family += (eax >> 20) & 0xff;
  return !(amd && family == 0x19);
}

// The default route on a CPU with AVX2 and FMA is oneDNN's where it runs AVX-512 and leads, else
// BLIS's; what computes says so, and each route can be asked for.
TEST(LinearRoute, SmallProductsRunOnTheKernelThatLeadsOnThisCpu) {
  auto model = Model::open(test::tiny_bundle());
  model->load_text_tower();
  const std::string d = compute_backend_description();
  __builtin_cpu_init();
  if (std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA")) {
    // oneDNN's own view of the CPU, lowered by the user: either small-product kernel.
    EXPECT_TRUE(d.find("float32 Linear layers: oneDNN 2.") != std::string::npos ||
                d.find("float32 Linear layers: BLIS ") != std::string::npos)
        << d;
  } else if (onednn_should_lead()) {
    // oneDNN for the text tower, and for the image tower on packed weights; what oneDNN does not take
    // goes to BLIS and BLAS, and the description says so.
    EXPECT_NE(d.find("float32 Linear layers: oneDNN 2."), std::string::npos) << d;
    EXPECT_NE(d.find("(the text tower's not packed, up to 192 rows), oneDNN 2."), std::string::npos) << d;
    EXPECT_NE(d.find(" on weights packed at load (the image and text towers', where it runs brgemm), BLIS "),
              std::string::npos)
        << d;
    EXPECT_NE(d.find("(the image tower's, up to 192 rows), BLAS above"), std::string::npos) << d;
    RouteEnv image("libtorch", "CNCLIP_IMAGE_LINEAR");
    const std::string text_packed = compute_backend_description();
    EXPECT_NE(text_packed.find(" on weights packed at load (the text tower's, where it runs brgemm), BLIS "),
              std::string::npos)
        << text_packed;
    RouteEnv text("inplace", "CNCLIP_TEXT_LINEAR");
    const std::string unpacked = compute_backend_description();
    EXPECT_NE(unpacked.find("(the text tower's, up to 192 rows), BLIS "), std::string::npos) << unpacked;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_NE(d.find("float32 Linear layers: BLIS "), std::string::npos) << d;
  } else {
    EXPECT_NE(d.find("float32 Linear layers: BLAS"), std::string::npos) << d;
  }
  EXPECT_EQ(d.find("(skx kernels)"), std::string::npos) << d;
  {
    RouteEnv env("blis");
    const std::string blis = compute_backend_description();
    EXPECT_NE(blis.find("float32 Linear layers: BLIS "), std::string::npos) << blis;
    // Never BLIS 0.9's skx kernels: they have no small-matrix path (model.cpp, choose_blis_kernels).
    EXPECT_EQ(blis.find("(skx kernels)"), std::string::npos) << blis;
  }
  RouteEnv env("blas");
  EXPECT_NE(compute_backend_description().find("float32 Linear layers: BLAS,"), std::string::npos);
}

// Which kernel ran, as oneDNN reports its primitives (ONEDNN_VERBOSE, on stdout): oneDNN's route
// runs every text product as a float32 matmul, on weights packed at load (a blocked layout; the test
// below) or, with CNCLIP_TEXT_LINEAR=inplace, on the bundle's weights in place (layout "ab", the
// transposed storage), with BERT's GELU as the product's post-op; BLIS's route runs none there.
TEST(LinearRoute, OneDnnRunsTheTextProductsWithTheirGelu) {
  for (const auto& [route, bundle] :
       std::vector<std::pair<std::string, std::string>>{{"onednn", test::tiny_bundle()},
                                                        {"onednn", test::tiny_bundle() + "-plain"},
                                                        {"blis", test::tiny_bundle()}}) {
    SCOPED_TRACE(route + " " + bundle);
    test::RunOptions options;
    // The attention's products are oneDNN's on every route (the test below): the Linears' alone here.
    options.env = {"ONEDNN_VERBOSE=1", "CNCLIP_FP32_LINEAR=" + route, "CNCLIP_BATCHED_MATMUL=libtorch",
                   "CNCLIP_TEXT_LINEAR=inplace"};
    const auto r = test::run_cnclip({"embed-text", "--model", bundle, "小狗"}, options);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");  // no warning that oneDNN failed
    const bool ours = route == "onednn";
    // The transposed storage is oneDNN's [k, n] "ab"; the plain [n, k] rows its "ba".
    const std::string layout = bundle == test::tiny_bundle() ? "ab" : "ba";
    EXPECT_EQ(r.out.find("matmul,") != std::string::npos, ours) << r.out.substr(0, 4000);
    EXPECT_EQ(r.out.find("src_f32::blocked:ab:f0 wei_f32::blocked:" + layout + ":f0") != std::string::npos, ours)
        << r.out.substr(0, 4000);
    EXPECT_EQ(r.out.find("attr-post-ops:eltwise_gelu_erf") != std::string::npos, ours) << r.out.substr(0, 4000);
    // The embedding is the last line whichever route ran.
    EXPECT_NE(test::lines(r.out).back().find("\"embedding\""), std::string::npos) << r.out.substr(0, 4000);
  }
}

// The text tower's Linears run on oneDNN's brgemm on weights packed at load too, where the image
// tower's do (oneDNN's route, AVX-512), with BERT's GELU as a post-op; then a text gets the same floats
// alone and beside 7 copies of itself (416 rows: in place, OpenBLAS's above 192, ~1e-7 apart).
TEST(LinearRoute, TextProductsOnPackedWeightsGiveATextTheSameFloatsInAnyBatch) {
  const bool lowered = std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA");
  const bool packed = !lowered && onednn_should_lead();
  for (const std::string route : {"packed", "inplace"}) {
    SCOPED_TRACE(route);
    test::RunOptions options;
    options.env = {"ONEDNN_VERBOSE=1", "CNCLIP_TEXT_LINEAR=" + route};
    const auto r = test::run_cnclip({"embed-text", "--model", test::tiny_bundle(), "小狗"}, options);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");  // no warning that packing or a product failed
    int packed_products = 0, with_gelu = 0;
    for (const std::string& line : test::lines(r.out)) {
      // Packed layouts are blocked ("BA16a64b"; "wei_f32:p:" where the blocks pad the matrix).
      const size_t weights = line.find(" wei_f32:");
      if (line.rfind("onednn_verbose,exec,cpu,matmul,brg", 0) == 0 && weights != std::string::npos &&
          line.find(":blocked:B", weights) == line.find(':', weights + 9)) {
        ++packed_products;
        with_gelu += line.find("eltwise_gelu_erf") != std::string::npos;
      }
    }
    if (packed && route == "packed") {
      // The first layer's 4 products, the last layer's 5 (its query apart), the projection.
      EXPECT_EQ(packed_products, 10) << r.out.substr(0, 4000);
      EXPECT_EQ(with_gelu, 2);
    } else {
      EXPECT_EQ(packed_products, 0) << r.out.substr(0, 4000);
    }
  }
  if (!packed) return;
  auto model = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 2, true});
  const auto ids = read_npy(test::fixtures("reference/text_tokens.npy")).value().as_int64();
  for (int t : {0, 7, 13}) {
    std::vector<int64_t> eight;
    for (int copy = 0; copy < 8; ++copy) eight.insert(eight.end(), ids.begin() + t * 52, ids.begin() + (t + 1) * 52);
    const auto alone = model->encode_token_ids(ids.data() + t * 52, 1, 52);
    const auto batch = model->encode_token_ids(eight.data(), 8, 52);
    for (int copy = 0; copy < 8; ++copy) {
      EXPECT_EQ(std::vector<float>(batch.begin() + copy * 32, batch.begin() + (copy + 1) * 32), alone) << t;
    }
  }
  // 64 texts of mixed lengths in one call (64 x 52 = 3,328 rows, past the 3,152 measured bit for bit):
  // no product falls back, and they agree with the weights in place to float rounding.
  std::vector<int64_t> mixed;
  for (int t = 0; t < 64; ++t) mixed.insert(mixed.end(), ids.begin() + (t % 20) * 52, ids.begin() + (t % 20 + 1) * 52);
  const auto packed_texts = model->encode_token_ids(mixed.data(), 64, 52);
  RouteEnv inplace("inplace", "CNCLIP_TEXT_LINEAR");
  auto in_place = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 2, true});
  EXPECT_LE(max_abs_diff(packed_texts, in_place->encode_token_ids(mixed.data(), 64, 52)), 1e-6f);
  EXPECT_EQ(compute_backend_description().find("failed once"), std::string::npos) << compute_backend_description();
}

// The image tower's Linears run on oneDNN's brgemm on weights packed at load where oneDNN runs
// AVX-512 (src/linear_packed.h), with the MLP's SiLU as a post-op; an image then gets the very same
// floats whatever the batch it is encoded in and the thread count (an index run's batches against
// `embed-image --shard`'s). Elsewhere BLIS and OpenBLAS compute them, within 1e-6 of each other.
TEST(LinearRoute, ImageProductsOnPackedWeightsGiveAnImageTheSameFloatsInAnyBatch) {
  const bool lowered = std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA");
  // Where oneDNN runs AVX-512 (its brgemm) and leads: the route of this CPU, unless lowered.
  const bool packed = !lowered && onednn_should_lead();
  for (const std::string route : {"on", "libtorch"}) {
    SCOPED_TRACE(route);
    test::RunOptions options;
    options.env = {"ONEDNN_VERBOSE=1", "CNCLIP_IMAGE_LINEAR=" + route};
    const auto r = test::run_cnclip(
        {"embed-image", "--model", test::tiny_bundle(), test::fixtures("images/pokemon.jpeg")}, options);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");  // no warning that packing or a product failed
    // Packed layouts are oneDNN's blocked ones (BA16a64b on AVX-512), never the plain "ab" or "ba".
    const auto packed_products = [&](const std::string& post_op) {
      int count = 0;
      for (const std::string& line : test::lines(r.out)) {
        if (line.find(",matmul,brg:") == std::string::npos || line.find(" wei_f32::blocked:ab:") != std::string::npos ||
            line.find(" wei_f32::blocked:ba:") != std::string::npos ||
            line.find("wei_f32::blocked:") == std::string::npos || line.find("bia_f32") == std::string::npos ||
            line.find(",197x") == std::string::npos) {
          continue;
        }
        if (post_op.empty() || line.find(post_op) != std::string::npos) ++count;
      }
      return count;
    };
    // The tiny tower: 2 layers of 4 Linears each.
    if (route == "on" && packed) {
      EXPECT_EQ(packed_products(""), 8) << r.out.substr(0, 4000);
      EXPECT_EQ(packed_products("attr-post-ops:eltwise_swish"), 2) << r.out.substr(0, 4000);
    } else if (!lowered) {
      EXPECT_EQ(packed_products(""), 0) << r.out.substr(0, 4000);
    }
    EXPECT_NE(test::lines(r.out).back().find("\"embedding\""), std::string::npos) << r.out.substr(0, 4000);
  }
  std::vector<float> pixels;
  for (const char* name : {"astronaut_palette", "camera_gray_1000x100", "chelsea_rgba", "coffee_2048x1366_exif6",
                           "pokemon", "rocket_rgb16_17x9"}) {
    auto t = read_npy(test::fixtures(std::string("preprocess/") + name + ".npy")).value().as_float();
    pixels.insert(pixels.end(), t.begin(), t.end());
  }
  const size_t per_image = pixels.size() / 6;
  std::vector<float> first;
  for (int threads : {2, 1}) {
    SCOPED_TRACE(threads);
    auto model = Model::open(test::tiny_bundle(), ModelOptions{"cpu", threads, true});
    const auto all = model->encode_images(pixels.data(), 6);
    std::vector<float> four_two = model->encode_images(pixels.data(), 4);
    const auto two = model->encode_images(pixels.data() + 4 * per_image, 2);
    four_two.insert(four_two.end(), two.begin(), two.end());
    std::vector<float> each;
    for (int i = 0; i < 6; ++i) {
      const auto one = model->encode_images(pixels.data() + i * per_image, 1);
      each.insert(each.end(), one.begin(), one.end());
    }
    if (first.empty()) first = all;
    if (packed) {
      EXPECT_EQ(all, four_two);
      EXPECT_EQ(all, each);
      EXPECT_EQ(all, first) << "the thread count changed an image's embedding";
    } else {
      // BLIS and OpenBLAS (its AVX2 kernels forced, as here) may round a row by its batch.
      EXPECT_LE(max_abs_diff(all, four_two), 1e-6f);
      EXPECT_LE(max_abs_diff(all, each), 1e-6f);
      EXPECT_LE(max_abs_diff(all, first), 1e-6f);
    }
  }
}

// The attention's softmax of an image (2 x 197 x 197 values per image in the tiny tower) runs on
// oneDNN's softmax (src/small_ops.h), a text's (2 x 52 x 52 per text) on LibTorch's; CNCLIP_SOFTMAX=libtorch
// keeps LibTorch's for both. The probabilities differ by float rounding only.
TEST(SmallOps, AnImagesAttentionSoftmaxRunsOnOneDnnATextsOnLibTorch) {
  __builtin_cpu_init();
  const bool lowered = std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA");
  const bool jit = __builtin_cpu_supports("avx2") && !lowered;  // oneDNN's kernel, not its reference one
  const auto softmaxes = [](const std::vector<std::string>& args, const std::string& route) {
    test::RunOptions options;
    options.env = {"ONEDNN_VERBOSE=1", "CNCLIP_SOFTMAX=" + route};
    const auto r = test::run_cnclip(args, options);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    int count = 0;
    for (const std::string& line : test::lines(r.out)) {
      if (line.find(",exec,cpu,softmax_v2,") != std::string::npos && line.find(",1x2x197x197,") != std::string::npos) {
        ++count;
      } else if (line.find(",exec,cpu,softmax") != std::string::npos) {
        ADD_FAILURE() << "a softmax of another shape on oneDNN: " << line;
      }
    }
    return count;
  };
  const std::vector<std::string> image{"embed-image", "--model", test::tiny_bundle(),
                                       test::fixtures("images/pokemon.jpeg")};
  const std::vector<std::string> texts{"embed-text", "--model", test::tiny_bundle(), "小狗", "夕阳、大海、沙滩"};
  const int on_onednn = softmaxes(image, "on");
  if (jit) EXPECT_EQ(on_onednn, 2);                                 // one per layer
  else EXPECT_TRUE(on_onednn == 0 || on_onednn == 2) << on_onednn;  // whether oneDNN has a kernel there
  EXPECT_EQ(softmaxes(image, "libtorch"), 0);
  EXPECT_EQ(softmaxes(texts, "on"), 0);
  const Embeddings on = embed_with("on", test::tiny_bundle(), "CNCLIP_SOFTMAX");
  const Embeddings libtorch = embed_with("libtorch", test::tiny_bundle(), "CNCLIP_SOFTMAX");
  EXPECT_EQ(on.texts_batch, libtorch.texts_batch);
  EXPECT_LE(max_abs_diff(on.images, libtorch.images), 2e-6f);
  if (on_onednn > 0) {
    EXPECT_NE(on.images, libtorch.images) << "the same floats: oneDNN's softmax did not run";
  }
}

// Both towers' attention products (q·kᵀ and weights·v) run on oneDNN's brgemm where oneDNN runs
// AVX-512: a text's, [1, heads, tokens, 64], on the calling thread alone (they open no parallel region),
// never on oneDNN's jit gemm, whose first product costs a process ~40 ms (an image's did, on the
// operands' strided views, before they were copied contiguous). The floats agree with LibTorch's to
// ~1e-7 (another summation order).
TEST(SmallOps, AttentionProductsRunOnBrgemmATextsOnTheCallingThread) {
  __builtin_cpu_init();
  const bool lowered = std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA");
  const bool brgemm = !lowered && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  // oneDNN's float32 products of 4-D operands in its log (the Linears' are 2-D), by kernel.
  const auto attention_products = [](const std::vector<std::string>& args, const std::string& route,
                                     const std::string& isa = "", const std::string& stdin_text = "") {
    test::RunOptions options;
    options.env = {"ONEDNN_VERBOSE=1", "CNCLIP_BATCHED_MATMUL=" + route};
    if (!isa.empty()) options.env.push_back("ONEDNN_MAX_CPU_ISA=" + isa);
    options.stdin_text = stdin_text;
    const auto r = test::run_cnclip(args, options);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::map<std::string, int> kernels;
    const std::string prefix = "onednn_verbose,exec,cpu,matmul,";
    for (const std::string& line : test::lines(r.out)) {
      if (line.rfind(prefix, 0) == 0 && line.find("src_f32::blocked:abcd:f0") != std::string::npos) {
        ++kernels[line.substr(prefix.size(), line.find(',', prefix.size()) - prefix.size())];
      }
    }
    return kernels;
  };
  for (const std::string& bundle : {test::tiny_bundle(), test::tiny_int8_bundle()}) {
    SCOPED_TRACE(bundle);
    const std::vector<std::string> text{"embed-text", "--model", bundle, "小狗"};
    const std::vector<std::string> image{"embed-image", "--model", bundle, test::fixtures("images/pokemon.jpeg")};
    for (const auto* args : {&text, &image}) {
      const auto on = attention_products(*args, "on");
      if (brgemm) {
        EXPECT_EQ(on, (std::map<std::string, int>{{"brg:avx512_core", 4}})) << args->front();  // 2 layers
      } else if (args == &text) {
        // A text's products are small: LibTorch's, rather than oneDNN's jit gemm.
        EXPECT_TRUE(on.empty()) << on.begin()->first;
      }
      EXPECT_TRUE(attention_products(*args, "libtorch").empty());
    }
    // Where oneDNN has no brgemm (its AVX2 kernels), texts stay on LibTorch in a batch too: the choice
    // is made per text, and 60 of ~40 tokens are a large product together (60 x 2 heads x 40 x 40).
    if (__builtin_cpu_supports("avx2")) {
      std::string texts;
      for (int i = 0; i < 60; ++i)
        texts += "一只在草地上奔跑的金毛犬，阳光明媚，远处有山和湖，天空很蓝，云朵很白" + std::to_string(i) + "\n";
      EXPECT_TRUE(attention_products({"embed-text", "--model", bundle, "-"}, "on", "AVX2", texts).empty());
    }
    if (bundle == test::tiny_bundle()) {
      const Embeddings ours = embed_with("on", bundle, "CNCLIP_BATCHED_MATMUL");
      const Embeddings libtorch = embed_with("libtorch", bundle, "CNCLIP_BATCHED_MATMUL");
      EXPECT_LE(max_abs_diff(ours.texts_batch, libtorch.texts_batch), 1e-6f);
      EXPECT_LE(max_abs_diff(ours.text_each, libtorch.text_each), 1e-6f);
      EXPECT_LE(max_abs_diff(ours.images, libtorch.images), 1e-6f);
    }
    const double ours = parallel_regions_per_query(bundle, "CNCLIP_BATCHED_MATMUL", "on"),
                 libtorch = parallel_regions_per_query(bundle, "CNCLIP_BATCHED_MATMUL", "libtorch");
    EXPECT_LE(ours, libtorch) << "parallel regions per query: " << ours << " against LibTorch's " << libtorch;
  }
}

// An int8 bundle has no float32 Linears to route: a forced route changes nothing there.
TEST(LinearRoute, Int8BundleIgnoresTheRoute) {
  RouteEnv env("xnnpack");
  auto model = Model::open(test::tiny_int8_bundle(), ModelOptions{"cpu", 0, true});
  const auto ids = read_npy(test::fixtures("reference/text_tokens.npy")).value().as_int64();
  const auto text_ref = normalized_rows(read_npy(test::fixtures("reference/text_features.npy")).value().as_float(), 32);
  EXPECT_GE(min_cosine(model->encode_token_ids(ids.data(), 20, 52), text_ref, 32), 0.99);
}

}  // namespace
}  // namespace cnclip

namespace cnclip {
namespace {

// The int8 towers' Linears (model.h, "int8 Linear layers"): on oneDNN with per-call operands
// (src/linear_int8.cpp) by default, LibTorch's quantized kernel with CNCLIP_INT8_LINEAR=libtorch.
// Both quantize the activations per call and sum in int32; the route is never further from the
// float32 model, and a query answers the same the second time.
TEST(Int8Route, AgreesWithLibTorchsKernel) {
  const Embeddings libtorch = embed_with("libtorch", test::tiny_int8_bundle(), "CNCLIP_INT8_LINEAR");
  const Embeddings onednn = embed_with("onednn", test::tiny_int8_bundle(), "CNCLIP_INT8_LINEAR");
  // Not bit for bit: on CPUs with VNNI the route quantizes activations to 8 bits where LibTorch's
  // kernel takes 7 (src/linear_int8.cpp, kFullRangeIsExact), and elsewhere rounding ties can go the
  // other way (the last bit of x / scale); so at the quantization's own scale.
  EXPECT_GE(min_cosine(onednn.texts_batch, libtorch.texts_batch, 32), 0.999);
  EXPECT_GE(min_cosine(onednn.text_each, libtorch.text_each, 32), 0.999);
  EXPECT_GE(min_cosine(onednn.images, libtorch.images, 32), 0.999);
  EXPECT_EQ(onednn.text_each, onednn.text_each_again);
  const auto text_ref = normalized_rows(read_npy(test::fixtures("reference/text_features.npy")).value().as_float(), 32);
  const auto image_ref =
      normalized_rows(read_npy(test::fixtures("reference/image_features.npy")).value().as_float(), 32);
  // At least as close to the float32 model as LibTorch's kernel, and within issue 20's 0.999 (a query
  // alone and in a padded batch: dynamic quantization takes the activations' range from the call).
  for (auto member : {&Embeddings::texts_batch, &Embeddings::text_each}) {
    EXPECT_GE(min_cosine(onednn.*member, text_ref, 32), min_cosine(libtorch.*member, text_ref, 32) - 2e-4);
    EXPECT_GE(min_cosine(onednn.*member, text_ref, 32), 0.999);
  }
  EXPECT_GE(min_cosine(onednn.images, image_ref, 32), min_cosine(libtorch.images, image_ref, 32) - 2e-4);
  EXPECT_GE(min_cosine(onednn.images, image_ref, 32), 0.999);
  std::printf(
      "int8 min cosine to float32: text batch %.6f / %.6f, text alone %.6f / %.6f, images %.6f / %.6f "
      "(oneDNN route / LibTorch)\n",
      min_cosine(onednn.texts_batch, text_ref, 32), min_cosine(libtorch.texts_batch, text_ref, 32),
      min_cosine(onednn.text_each, text_ref, 32), min_cosine(libtorch.text_each, text_ref, 32),
      min_cosine(onednn.images, image_ref, 32), min_cosine(libtorch.images, image_ref, 32));
}

// Which kernel ran, as oneDNN reports its primitives (ONEDNN_VERBOSE, on stdout): cnclip's route
// multiplies by the activation scale in a post-op, and computes the MLPs' activation in the product
// (BERT's GELU in the text tower; ViT's QuickGELU, exported as SiLU, in the image tower); LibTorch's
// kernel passes zero points of source and weights. And what computes says so.
TEST(Int8Route, OneDnnRunsTheProductsUnlessLibTorchIsAsked) {
  for (const char* route : {"", "libtorch"}) {
    SCOPED_TRACE(route);
    test::RunOptions options;
    options.env = {"ONEDNN_VERBOSE=1", std::string("CNCLIP_INT8_LINEAR=") + route};
    const auto text = test::run_cnclip({"embed-text", "--model", test::tiny_int8_bundle(), "小狗"}, options);
    const auto image = test::run_cnclip(
        {"embed-image", "--model", test::tiny_int8_bundle(), test::fixtures("images/pokemon.jpeg")}, options);
    ASSERT_EQ(text.exit_code, 0) << text.err;
    ASSERT_EQ(image.exit_code, 0) << image.err;
    const bool ours = *route == '\0';
    for (const auto* r : {&text, &image}) {
      EXPECT_EQ(r->out.find("binary_mul") != std::string::npos, ours) << r->out.substr(0, 4000);
      EXPECT_EQ(r->out.find("zero-points:src:0:*+wei") != std::string::npos, !ours) << r->out.substr(0, 4000);
    }
    EXPECT_EQ(text.out.find("+eltwise_gelu_erf") != std::string::npos, ours);
    EXPECT_EQ(image.out.find("+eltwise_swish") != std::string::npos, ours);
  }
  auto model = Model::open(test::tiny_int8_bundle());
  model->load_text_tower();
  EXPECT_NE(compute_backend_description().find("int8 Linear layers: oneDNN 2."), std::string::npos)
      << compute_backend_description();
  RouteEnv env("libtorch", "CNCLIP_INT8_LINEAR");
  EXPECT_NE(compute_backend_description().find("int8 Linear layers: LibTorch's quantized kernel"), std::string::npos);
}

// Encode calls on several threads at once (index workers share one model): each thread's queries
// answer as they do on one thread, while the routes build primitives (and pack int8 weights) for
// them, each thread with its own scratch memory: fp32 (oneDNN's or BLIS's products) and int8.
TEST(Concurrency, TextTowersEncodeOnSeveralThreadsAtOnce) {
  for (const auto& [bundle, route] : std::vector<std::pair<std::string, const char*>>{
           {test::tiny_bundle(), "onednn"}, {test::tiny_bundle(), "blis"}, {test::tiny_int8_bundle(), "auto"}}) {
    SCOPED_TRACE(bundle + " " + route);
    RouteEnv env(route);
    auto model = Model::open(bundle, ModelOptions{"cpu", 1, true});
    const auto ids = read_npy(test::fixtures("reference/text_tokens.npy")).value().as_int64();
    std::vector<std::vector<float>> alone(20);
    for (int t = 0; t < 20; ++t) alone[t] = model->encode_token_ids(ids.data() + t * 52, 1, 52);
    auto fresh = Model::open(bundle, ModelOptions{"cpu", 1, true});
    fresh->load_text_tower();  // the one call that must come first (model.h)
    // Every thread encodes every query three times (one pass caught a shared scratchpad 1 time in 10).
    std::vector<std::string> wrong[4];
    std::vector<std::thread> threads;
    for (int w = 0; w < 4; ++w) {
      threads.emplace_back([&, w] {
        set_compute_threads(1 + w % 2);
        for (int round = 0; round < 3; ++round) {
          for (int t = 0; t < 20; ++t) {
            if (max_abs_diff(fresh->encode_token_ids(ids.data() + t * 52, 1, 52), alone[t]) > 1e-5f) {
              wrong[w].push_back("thread " + std::to_string(w) + " query " + std::to_string(t));
            }
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& list : wrong) EXPECT_TRUE(list.empty()) << list.front();
  }
}

// restart_with_runtime_environment (runtime.h), run in a child process with the variables in `env`
// set (and the others it looks at unset): what the program it execs (a shell) sees, as
// "GOMP_SPINCOUNT|GLIBC_TUNABLES", or "returned" when it did not exec.
std::string environment_after_restart(const std::vector<std::pair<std::string, std::string>>& env) {
  test::TempDir dir;
  const std::string out = dir / "out";
  const pid_t pid = fork();
  if (pid == 0) {
    for (const char* name :
         {"CNCLIP_RESTARTED", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_",
          "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST"})
      unsetenv(name);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    const std::string script = "printf '%s|%s' \"$GOMP_SPINCOUNT\" \"$GLIBC_TUNABLES\" > '" + out + "'";
    char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"), const_cast<char*>(script.c_str()), nullptr};
    restart_with_runtime_environment(argv, "/bin/sh");
    FILE* f = fopen(out.c_str(), "w");
    if (f) {
      fputs("returned", f);
      fclose(f);
    }
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return test::read_text(out);
}

TEST(RuntimeEnvironment, RestartsOnceWithWhatTheUserDidNotChoose) {
  const std::string malloc_tunables =
      "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:"
      "glibc.malloc.arena_max=1";
  EXPECT_EQ(environment_after_restart({}), "1000|" + malloc_tunables);
  // The user's spin or wait policy is kept, and the malloc settings still added.
  EXPECT_EQ(environment_after_restart({{"GOMP_SPINCOUNT", "5"}}), "5|" + malloc_tunables);
  EXPECT_EQ(environment_after_restart({{"OMP_WAIT_POLICY", "active"}}), "|" + malloc_tunables);
  // Tunables of other parts of glibc are kept beside them; a name that only contains a malloc
  // tunable's is not one.
  EXPECT_EQ(environment_after_restart({{"GLIBC_TUNABLES", "glibc.cpu.x86_ibt=on:x.glibc.malloc.hugetlb=0"}}),
            "1000|glibc.cpu.x86_ibt=on:x.glibc.malloc.hugetlb=0:" + malloc_tunables);
  // Any malloc setting of the user's: malloc is left to it.
  EXPECT_EQ(environment_after_restart({{"GLIBC_TUNABLES", "glibc.cpu.x86_ibt=on:glibc.malloc.hugetlb=0"}}),
            "1000|glibc.cpu.x86_ibt=on:glibc.malloc.hugetlb=0");
  EXPECT_EQ(environment_after_restart({{"MALLOC_ARENA_MAX", "2"}}), "1000|");
  // Everything set (by the user, or by the restart itself): no second start.
  EXPECT_EQ(environment_after_restart({{"GOMP_SPINCOUNT", "1000"}, {"GLIBC_TUNABLES", malloc_tunables}}), "returned");
  EXPECT_EQ(environment_after_restart({{"OMP_WAIT_POLICY", "passive"}, {"MALLOC_TRIM_THRESHOLD_", "0"}}), "returned");
  // A restarted process never restarts again, even when what it was given did not reach it.
  EXPECT_EQ(environment_after_restart({{"CNCLIP_RESTARTED", "1"}}), "returned");
  // The tests' Python (tests/test_python.sh.in) gives itself the very same settings, so that the
  // cnclip processes it starts run as a user's do; a malloc setting already given is left alone.
  auto python_sees = [](const std::string& env) {
    const std::string cmd =
        "env -u GLIBC_TUNABLES -u MALLOC_ARENA_MAX -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ -u "
        "MALLOC_TOP_PAD_ -u MALLOC_MMAP_MAX_ -u MALLOC_ARENA_TEST " +
        env + " " + CNCLIP_PYTHON + " -c 'import os; print(os.environ.get(\"GLIBC_TUNABLES\"))'";
    std::string out;
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[512];
      while (fgets(buf, sizeof buf, p)) out += buf;
      pclose(p);
    }
    return out;
  };
  EXPECT_EQ(python_sees(""), malloc_tunables + "\n");
  EXPECT_EQ(python_sees("GLIBC_TUNABLES=glibc.cpu.x86_ibt=on"), "glibc.cpu.x86_ibt=on:" + malloc_tunables + "\n");
  EXPECT_EQ(python_sees("GLIBC_TUNABLES=glibc.malloc.hugetlb=0"), "glibc.malloc.hugetlb=0\n");
  EXPECT_EQ(python_sees("MALLOC_ARENA_MAX=2"), "None\n");
  EXPECT_EQ(python_sees("MALLOC_TOP_PAD_="), "None\n");  // set, even empty: chosen, as cnclip sees it
}

// What the restart's malloc settings are for (runtime.h): a model worker's memory is kept from one
// batch to the next. `cnclip index` makes well under half the page faults it makes when the user
// gives the same settings without arena_max=1 (glibc's arena per thread, whose empty heaps are unmapped):
// ~8,000 against ~24,000 with the tiny bundle here.
TEST(RuntimeEnvironment, IndexKeepsItsWorkersMemoryBetweenBatches) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's malloc in this build";
#endif
  test::TempDir dir;
  const std::string photos = dir / "photos";
  std::filesystem::create_directories(photos);
  for (int i = 0; i < 8; ++i) test::make_small_photo(photos + "/p" + std::to_string(i) + ".png", 40 + i);
  auto page_faults = [&](const char* tunables, const std::string& idx) -> long {
    const pid_t pid = fork();
    if (pid == 0) {
      unsetenv("CNCLIP_RESTARTED");
      unsetenv("MALLOC_ARENA_MAX");
      if (tunables) setenv("GLIBC_TUNABLES", tunables, 1);
      else unsetenv("GLIBC_TUNABLES");
      const int null = ::open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      const std::string model = test::tiny_bundle();
      execl(CNCLIP_BINARY, "cnclip", "index", "-q", "--batch-size", "2", photos.c_str(), "--model", model.c_str(),
            "--index", idx.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    struct rusage usage {};
    ::wait4(pid, &status, 0, &usage);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    return usage.ru_minflt;
  };
  const long ours = page_faults(nullptr, dir / "one-arena");
  const long per_thread =
      page_faults("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824",
                  dir / "arena-per-thread");
  EXPECT_EQ(test::indexed_paths(dir / "one-arena").size(), 8u);
  EXPECT_LT(ours * 2, per_thread) << "page faults: " << ours << " with the restart's settings, " << per_thread
                                  << " with an arena per thread";
}

// The image towers likewise (the server encodes uploads on its request threads at once): fp32 and
// int8, on 1 and 2 compute threads, each image as it encodes alone.
TEST(Concurrency, ImageTowersEncodeOnSeveralThreadsAtOnce) {
  for (const std::string& bundle : {test::tiny_bundle(), test::tiny_int8_bundle()}) {
    auto model = Model::open(bundle, ModelOptions{"cpu", 1, true});
    const int side = model->manifest().image.size;
    const size_t per_image = static_cast<size_t>(3) * side * side;
    std::vector<std::vector<float>> pixels(8, std::vector<float>(per_image));
    for (size_t n = 0; n < pixels.size(); ++n) {
      for (size_t i = 0; i < per_image; ++i) pixels[n][i] = std::sin(0.001f * static_cast<float>(i * (n + 3)));
    }
    std::vector<std::vector<float>> alone(pixels.size());
    for (size_t n = 0; n < pixels.size(); ++n) alone[n] = model->encode_images(pixels[n].data(), 1);
    auto fresh = Model::open(bundle, ModelOptions{"cpu", 1, true});
    fresh->load_image_tower();
    std::vector<std::string> wrong[4];
    std::vector<std::thread> threads;
    for (int w = 0; w < 4; ++w) {
      threads.emplace_back([&, w] {
        set_compute_threads(1 + w % 2);
        for (int round = 0; round < 10; ++round) {
          for (size_t n = 0; n < pixels.size(); ++n) {
            const float diff = max_abs_diff(fresh->encode_images(pixels[n].data(), 1), alone[n]);
            if (diff > 1e-5f) {
              wrong[w].push_back(bundle + ": thread " + std::to_string(w) + " image " + std::to_string(n) +
                                 " differs by " + std::to_string(diff));
            }
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& list : wrong) EXPECT_TRUE(list.empty()) << list.size() << " wrong, first: " << list.front();
  }
}

}  // namespace
}  // namespace cnclip
