// cnclip-bench: model-level measurements for scripts/bench.sh (not part of the cnclip CLI).
//   cnclip-bench sgemm [--workers 2]            -> {"sgemm_gflops": ...}
//   cnclip-bench image BUNDLE --batch 4 [--workers 2] --iters 3  -> {"batch": 4, "ms_per_image": ...}
//   cnclip-bench text BUNDLE --iters 20         -> {"ms_per_query": ...}
//   cnclip-bench peak [--workers N]             -> {"peak_gflops": ..., "isa": ...}: the CPU's float32
//       limit, measured: independent FMA chains in registers (no memory traffic) on N cores at once,
//       with the widest vectors the CPU has (AVX-512, else AVX2+FMA), so clock, vector width and the
//       number of FMA units per core are all counted as this CPU really runs them
// One JSON object on stdout; the best of the repeats (least disturbed by a noisy machine).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <immintrin.h>

#include <chrono>
#include <iostream>
#include <random>
#include <thread>

#include "cnclip/encode_options.h"
#include "cnclip/image.h"
#include "cnclip/model.h"
#include "cnclip/runtime.h"

using namespace cnclip;

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// kChains independent FMA chains hide the FMA latency (4 cycles) on two FMA units: no chain waits.
constexpr int kChains = 16;

__attribute__((target("avx512f"))) double fma_gflops_avx512(long iters) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(0.001f * static_cast<float>(j));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i) {
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  const double s = seconds_since(t0);
  alignas(64) float out[16];
  float sink = 0;
  for (int j = 0; j < kChains; ++j) {
    _mm512_store_ps(out, acc[j]);
    for (float v : out) sink += v;
  }
  if (sink == 12345.f) std::cerr << "";  // keeps the loop
  return 2.0 * 16 * kChains * static_cast<double>(iters) / s / 1e9;
}

__attribute__((target("avx2,fma"))) double fma_gflops_avx2(long iters) {
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(0.001f * static_cast<float>(j));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i) {
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  const double s = seconds_since(t0);
  alignas(32) float out[8];
  float sink = 0;
  for (int j = 0; j < kChains; ++j) {
    _mm256_store_ps(out, acc[j]);
    for (float v : out) sink += v;
  }
  if (sink == 12345.f) std::cerr << "";
  return 2.0 * 8 * kChains * static_cast<double>(iters) / s / 1e9;
}

int main(int argc, char** argv) {
  restart_with_runtime_environment(argv);  // as `cnclip` runs its model commands (runtime.h)
  CLI::App app{"cnclip-bench: model-level measurements for scripts/bench.sh"};
  app.require_subcommand(1);
  std::string bundle;
  int batch = 8, iters = 3, threads = 0, n = 2048, workers = 1;
  auto* sgemm = app.add_subcommand("sgemm", "float32 matmul GFLOP/s through LibTorch");
  sgemm->add_option("--n", n);
  sgemm->add_option("--workers", workers, "concurrent single-threaded matmuls; their sum is reported");
  auto* image = app.add_subcommand("image", "image tower ms/image");
  image->add_option("bundle", bundle)->required();
  image->add_option("--batch", batch);
  image->add_option("--workers", workers, "concurrent single-threaded model calls (as `cnclip index` runs them)");
  auto* text = app.add_subcommand("text", "13-character text queries, a new one each time");
  auto* tok = app.add_subcommand("tokenize", "tokenize 10,000 mixed Chinese/English captions");
  tok->add_option("bundle", bundle)->required();
  std::vector<std::string> images;
  int reduce = 0;
  auto* prep = app.add_subcommand("preprocess", "decode and resize ms per image (one thread)");
  prep->add_option("images", images)->required();
  prep->add_option("--reduced-min-side", reduce, "allow JPEG DCT scaling down to this side (0 = full decode)");
  text->add_option("bundle", bundle)->required();
  auto* peak = app.add_subcommand("peak", "the CPU's float32 peak GFLOP/s, measured with FMA chains in registers");
  peak->add_option("--workers", workers, "cores measured at once (default: all)");
  for (auto* s : {sgemm, image, text, tok, prep, peak}) {
    s->add_option("--iters", iters);
    s->add_option("--threads", threads);
  }
  CLI11_PARSE(app, argc, argv);
  if (*peak) {
    // Measured before LibTorch is loaded: nothing else of ours runs meanwhile.
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f");
    if (!avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
      std::cerr << "cnclip-bench: peak: this CPU has neither AVX-512 nor AVX2+FMA" << std::endl;
      return 1;
    }
    const int cores = peak->count("--workers") ? workers : static_cast<int>(std::thread::hardware_concurrency());
    double best = 0;
    for (int r = 0; r < std::max(1, iters); ++r) {
      std::vector<double> each(static_cast<size_t>(cores));
      std::vector<std::thread> pool;
      for (int w = 0; w < cores; ++w) {
        pool.emplace_back([&, w] { each[w] = avx512 ? fma_gflops_avx512(40'000'000) : fma_gflops_avx2(40'000'000); });
      }
      for (auto& t : pool) t.join();
      double sum = 0;
      for (double g : each) sum += g;
      best = std::max(best, sum);
    }
    std::cout
        << nlohmann::json{{"peak_gflops", best}, {"isa", avx512 ? "AVX-512" : "AVX2+FMA"}, {"cores", cores}}.dump()
        << std::endl;
    return 0;
  }
  try {
    set_compute_threads(threads);
    nlohmann::json out{{"backend", compute_backend_description()}};
    if (*tok) {
      auto tokenizer = WordPieceTokenizer::from_vocab_file(load_bundle_manifest(bundle).path_of("vocab.txt"));
      const char* parts[] = {
          "一只橘猫趴在窗台上晒太阳", "A photo of a CAT at the café",        "雨后的城市街道倒映着霓虹灯",
          "Crème brûlée, 2024年",     "两个小孩在公园里放风筝 kite flying!", "夕阳、大海、沙滩"};
      std::vector<std::string> captions;
      for (int i = 0; i < 10000; ++i) {
        captions.push_back(std::string(parts[i % 6]) + " " + parts[(i / 6) % 6] + " #" + std::to_string(i));
      }
      double best = 1e30;
      int64_t checksum = 0;
      for (int r = 0; r < iters; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (const auto& c : captions) checksum += tokenizer->encode(c, 52)[1];
        best = std::min(best, seconds_since(t0));
      }
      out["captions"] = captions.size();
      out["seconds"] = best;
      out["checksum"] = checksum;
    } else if (*prep) {
      DecodeOptions d;
      d.reduced_decode_min_side = reduce;
      double decode_s = 0, resize_s = 0, read_s = 0;
      for (int i = 0; i < iters; ++i) {
        for (const auto& path : images) {
          auto t0 = std::chrono::steady_clock::now();
          auto bytes = read_file_bytes(path).value();
          read_s += seconds_since(t0);
          t0 = std::chrono::steady_clock::now();
          auto img = decode_image(bytes, path, d).value();
          decode_s += seconds_since(t0);
          t0 = std::chrono::steady_clock::now();
          std::vector<float> chw(3 * 224 * 224);
          normalize_to_chw(resize_like_pillow(img, 224, 224), Normalization{}, chw.data());
          resize_s += seconds_since(t0);
        }
      }
      const double runs = static_cast<double>(images.size()) * iters;
      out["read_ms"] = read_s * 1000 / runs;
      out["decode_ms"] = decode_s * 1000 / runs;
      out["resize_normalize_ms"] = resize_s * 1000 / runs;
    } else if (*sgemm) {
      if (workers <= 1) {
        out["sgemm_gflops"] = measure_sgemm_gflops(n, iters);
      } else {
        std::vector<double> each(workers);
        std::vector<std::thread> pool;
        for (int w = 0; w < workers; ++w) {
          pool.emplace_back([&, w] {
            set_compute_threads(1);
            each[w] = measure_sgemm_gflops(n, iters);
          });
        }
        for (auto& t : pool) t.join();
        double sum = 0;
        for (double g : each) sum += g;
        out["sgemm_gflops"] = sum;
        out["workers"] = workers;
      }
    } else if (*image) {
      auto model = Model::open(bundle, ModelOptions{"cpu", threads, /*optimize_for_many_calls=*/true});
      const int r = model->manifest().image.size;
      std::vector<float> pixels(static_cast<size_t>(batch) * 3 * r * r);
      std::mt19937 rng(1);
      std::normal_distribution<float> dist;
      for (auto& p : pixels) p = dist(rng);
      model->encode_images(pixels.data(), batch);  // warm-up (and load)
      double best = 1e30;
      if (workers <= 1) {
        for (int i = 0; i < iters; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          model->encode_images(pixels.data(), batch);
          best = std::min(best, seconds_since(t0));
        }
      } else {
        // The threads shared out by the encode pipeline's own rule, as `cnclip index` runs them.
        const ModelParallelism split = choose_parallelism(compute_threads(), model->on_cpu(), workers);
        workers = split.workers;
        for (int i = 0; i < iters; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          std::vector<std::thread> pool;
          for (int w = 0; w < split.workers; ++w) {
            pool.emplace_back([&, w] {
              set_compute_threads(split.threads_of(w));
              model->encode_images(pixels.data(), batch);
            });
          }
          for (auto& t : pool) t.join();
          best = std::min(best, seconds_since(t0) / split.workers);
        }
      }
      out["batch"] = batch;
      out["workers"] = workers;
      out["ms_per_image"] = best * 1000 / batch;
      out["precision"] = model->manifest().precision;
    } else {
      auto model = Model::open(bundle, ModelOptions{"cpu", threads, /*optimize_for_many_calls=*/true});
      // A new query each time, as in real use (13 characters, 15 tokens, like the first): an int8
      // tower's dynamically quantized kernels would otherwise be served from oneDNN's cache.
      const std::string base = "一只橘猫趴在窗台上晒太阳";  // 13 three-byte characters
      auto query = [&](int i) {
        const size_t k = static_cast<size_t>(i % 13) * 3;
        std::string q = base.substr(k) + base.substr(0, k);
        if ((i / 13) % 2) q = "夜里" + q.substr(6);
        return q;
      };
      const int len = model->manifest().context_length;
      const auto t_load = std::chrono::steady_clock::now();
      model->load_text_tower();  // for a float32 bundle, with the Linear route of many-call commands
      out["load_ms"] = seconds_since(t_load) * 1000;
      auto ids = model->tokenizer().encode(query(iters), len);
      model->encode_token_ids(ids.data(), 1, len);  // warm-up
      double best = 1e30;
      for (int i = 0; i < iters; ++i) {
        ids = model->tokenizer().encode(query(i), len);
        const auto t0 = std::chrono::steady_clock::now();
        model->encode_token_ids(ids.data(), 1, len);  // padding is trimmed
        best = std::min(best, seconds_since(t0));
      }
      out["ms_per_query"] = best * 1000;
      out["precision"] = model->manifest().precision;
    }
    std::cout << out.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "cnclip-bench: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
