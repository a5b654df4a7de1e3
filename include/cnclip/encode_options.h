// How many image files are turned into embeddings at once: the one set of encode options shared by
// `cnclip index` (IndexOptions::encode), embed_image_files (EmbedFilesOptions::encode), `cnclip eval`
// (EvalOptions::encode) and the internal encode pipeline. Light header: no OpenCV, no LibTorch.
#pragma once

namespace cnclip {

// Set fields by name (`options.encode.batch_size = 8;`): the three are all `int`, so a positional
// initialization with two of them swapped would compile.
struct EncodeOptions {
  // Images per model call (and, for `index`, per committed transaction). Larger batches are no faster
  // on a CPU (the tower's time is ~89% sgemm at full single-core BLAS speed already, README
  // "Performance") and hold more memory: ~85 MB of activations per ViT-B-16 image in a call.
  int batch_size = 4;
  // Threads decoding and resizing images ahead of the model; 0 = one per core
  // (std::thread::hardware_concurrency). With DCT scaling a 12 MP JPEG decodes and resizes in ~17 ms
  // against ~340 ms of ViT-B-16 per image and core (scripts/bench.sh, README "Performance"): decoders
  // take ~5% of the CPU, and one per core keeps the queue ahead of the model even for slow files.
  int decode_threads = 0;
  // Concurrent model calls sharing the compute threads (see choose_parallelism); 0 = chosen for the
  // device: on a CPU one single-threaded call per core, at most 4; on another device one call.
  int model_workers = 0;
};

// How the image tower is spread over the compute threads: `workers` concurrent model calls, worker w
// running with threads_of(w) threads (the threads shared out, the first ones taking the remainder).
struct ModelParallelism {
  int threads = 1;  // compute threads in all (at least 1)
  int workers = 1;  // concurrent model calls (1 ≤ workers ≤ threads)
  int threads_of(int worker) const { return threads / workers + (worker < threads % workers ? 1 : 0); }
};

// The worker-split rule of the encode pipeline. On a CPU, the ViT runs faster as one single-threaded
// model call per core than as one call over all cores: nothing waits at OpenMP barriers, the small
// attention matmuls run at single-core BLAS speed instead of paying for a thread team each, and a
// decoder taking a core delays one call instead of stalling all. Measured with
// `cnclip-bench image --workers 2` on 2 cores: fp32 ~7% and int8 ~20% faster. Each worker holds its own
// batch of activations, so their number is capped at 4.
// `compute_threads`: the threads available (cnclip::compute_threads()); values below 1 count as 1.
// `requested_workers` > 0 is taken as given, capped at the threads; 0 (or less) is chosen as above.
// Pure and thread-safe.
inline ModelParallelism choose_parallelism(int compute_threads, bool on_cpu, int requested_workers) {
  ModelParallelism p;
  p.threads = compute_threads > 1 ? compute_threads : 1;
  if (requested_workers > 0) {
    p.workers = requested_workers < p.threads ? requested_workers : p.threads;
  } else if (on_cpu) {
    p.workers = p.threads < 4 ? p.threads : 4;
  }
  return p;
}

}  // namespace cnclip
