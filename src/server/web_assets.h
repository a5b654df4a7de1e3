// The web page of `cnclip serve`, compiled into the binary (src/server/web/*, turned into arrays by
// embed_assets.cmake at build time), so the page works offline and needs no files next to the binary.
#pragma once

#include <cstddef>

namespace cnclip::web {

struct Asset {
  const char* path;  // URL path, e.g. "/app.js"
  const char* type;  // Content-Type
  const unsigned char* data;
  size_t size;
};

extern const Asset kAssets[];
extern const size_t kAssetCount;

}  // namespace cnclip::web
