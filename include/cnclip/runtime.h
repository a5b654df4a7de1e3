// Process-wide switches: the Ctrl-C flag that long operations poll between batches, and the capture
// of what image libraries print on stderr.
#pragma once

#include <string>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

// The XDG Base Directory data home: $XDG_DATA_HOME when it is an absolute path (relative values
// are ignored, as the specification requires), else $HOME/.local/share when HOME is an absolute
// path. When neither gives a place, the error (kInvalidArgument) says why, e.g. "HOME is not set",
// for the caller to say what the place was for and how else to give it. Reads the environment on
// each call; thread-safe as long as nothing changes the environment meanwhile.
Result<std::string> xdg_data_home();

// Installs SIGINT/SIGTERM handlers that set the interrupt flag; a second signal ends the process
// at once (the default action). A signal ignored when this is called (inherited from the parent:
// nohup, a background job of a script) is left ignored.
void install_interrupt_handlers();
bool interrupt_requested();
// The signal that requested the interrupt (SIGINT, SIGTERM), or 0 (none, or request_interrupt()).
int interrupt_signal();
void request_interrupt();  // what the handler does; also for tests

// libjpeg and libpng print warnings ("Corrupt JPEG data: ...", "libpng error: ...") straight to
// file descriptor 2, with no file name. After capture_library_stderr(), fd 2 is a pipe read by a
// thread that prints each such line as "cnclip: warning: FILE: decoder: LINE", FILE being the
// image(s) being decoded at the time (see DecodingFile); std::cerr keeps writing to the terminal.
// release_library_stderr() flushes and restores fd 2; call it before exiting. Neither is
// thread-safe against the other; both are no-ops when repeated.
void capture_library_stderr();
void release_library_stderr();
// The descriptor std::cerr writes to: the terminal's stderr even while fd 2 is captured.
int user_stderr_fd();
// Width of the terminal on `fd` (TIOCGWINSZ), else $COLUMNS when it is a positive number, else 80.
int terminal_columns(int fd);

// Marks `path` as being decoded by this thread for the lifetime of the object, so that library
// output can be attributed to it. `decoder` ("jpeg", "png", "tiff", ...) narrows that down when
// several files are decoded at once: a line that names its library ("libpng error: ...", "Corrupt
// JPEG data: ...") goes to the files of that format only. Thread-safe; cheap when stderr is not
// captured.
class DecodingFile {
 public:
  explicit DecodingFile(const std::string& path, const std::string& decoder = "");
  ~DecodingFile();
  DecodingFile(const DecodingFile&) = delete;
  DecodingFile& operator=(const DecodingFile&) = delete;

 private:
  std::string path_;
  std::string decoder_;
};

// Two runtimes cnclip's model commands compute with read their settings once, when the process
// starts, so the only way to choose them is the environment of a new process:
// - libgomp (LibTorch's and FAISS's OpenMP) reads its wait policy when it is loaded (before main).
//   By default its idle threads spin for ~300,000 rounds after every parallel region; on a machine
//   whose cores are also busy with other work, spinning threads take the CPU from the one that must
//   finish the region: a 15-token query over 2 threads took 4.6-10 s instead of ~0.1 s (README
//   "Performance"). GOMP_SPINCOUNT=1000 is the short spin libgomp itself uses when it has more
//   threads than cores.
// - glibc's malloc, where LibTorch's tensors come from, reads GLIBC_TUNABLES. By default it maps
//   every block over 128 KiB afresh and returns it on free (the threshold rises to at most 32 MiB as
//   such blocks are freed) and trims its heap past 128 KiB free: the image tower's activations (up to
//   ~10 MB for 4 images) came from new pages on every call, and a first touch of a page costs ~14 us
//   on the VMs measured: 17,000 page faults per call of 4 images, 157-171 ms/image against 116-131
//   with both thresholds raised (ONNX Runtime, which keeps its own arena, 112-122 in the same run).
//   hugetlb=1 (transparent huge pages for malloc's memory, where the system allows them on request)
//   cuts what a one-shot command pays for touching the weights it loads: embed-text with the fp32
//   ViT-B-16 bundle went from 119,400 page faults and 2.5-2.8 s to 8,400 and 1.1-1.4 s, same peak RSS.
//   arena_max=1: every thread allocates from the main arena. A thread of its own (index's model
//   workers and decoders; serve's handlers too, whose case was not measured) gets an arena of 64 MiB heaps, and glibc
//   unmaps a heap as soon as it is empty, whatever trim_threshold says: `index` of 30 photos with the fp32 ViT-B-16
//   created and deleted ~500 heaps. Of the 68 bench photos: fp32 12.6-13.4 s and 228,000-249,000
//   page faults against 10.4-10.5 s and 9,400 in one arena, int8 7.2-7.6 s against 6.0 s, peak RSS
//   lower (1.13 -> 0.98-1.06 GB fp32); the tiny test bundle's `index` went from 24,000 faults to
//   8,000. The encode benches (warm, two workers) did not move: 118-119 vs 119-120 ms/image,
//   17.9-18.8 vs 17.6-18.2 ms/query (small blocks come from each thread's tcache).
// runtime_environment_missing() lists what is not set yet: GOMP_SPINCOUNT=1000 unless
// OMP_WAIT_POLICY or GOMP_SPINCOUNT is set (the user's choice), and glibc.malloc.hugetlb=1,
// glibc.malloc.mmap_threshold=33554432 (its largest), glibc.malloc.trim_threshold=1073741824 and
// glibc.malloc.arena_max=1 added to GLIBC_TUNABLES unless the user chose malloc's settings (GLIBC_TUNABLES names a
// glibc.malloc tunable, or an older MALLOC_..._ variable such as MALLOC_ARENA_MAX is set;
// GLIBC_TUNABLES=glibc.malloc.hugetlb=0 gives glibc's defaults). As "NAME=VALUE" strings.
// Reads the environment; thread-safe while nothing changes it.
std::vector<std::string> runtime_environment_missing();
// Sets what runtime_environment_missing() lists, and CNCLIP_RESTARTED=1, and executes `exe` again
// with `argv`, so that the new process starts with it; returns without doing anything when nothing
// is missing (the user's choice), when CNCLIP_RESTARTED is set (a process restarts at most once,
// even where glibc drops the tunables of a privileged program) or when running with privileges
// (AT_SECURE), and returns after setting them when the exec fails. Call while no other thread runs (it changes the
// environment): first in main, or later once every thread has ended (search-text and search-image restart only when
// they answer without a server; src/cli/options.h).
void restart_with_runtime_environment(char** argv, const char* exe = "/proc/self/exe");
// Whether restart_with_runtime_environment would execute anything now.
bool runtime_restart_wanted();

}  // namespace cnclip
