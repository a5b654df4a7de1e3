// --max-pixels: any number of megapixels from one pixel up, fractions included, and messages that
// show the limit and the image's size as given (not rounded down to whole megapixels).
#include <gtest/gtest.h>

#include "cnclip/image.h"
#include "test_util.h"

namespace cnclip {
namespace {

TEST(MaxPixels, MegapixelsTextKeepsTheDecimalsItNeeds) {
  EXPECT_EQ(megapixels_text(100'000'000), "100");
  EXPECT_EQ(megapixels_text(500'000), "0.5");
  EXPECT_EQ(megapixels_text(1), "0.000001");
  EXPECT_EQ(megapixels_text(4032.0 * 3024.0), "12.192768");
  EXPECT_EQ(megapixels_text(100'000'001), "100.000001");
  EXPECT_EQ(megapixels_text(0), "0");
}

TEST(MaxPixels, FractionalLimitsWorkDownToOnePixel) {
  const std::string image = test::fixtures("images/pokemon.jpeg");  // 224x224: 50,176 pixels
  auto embed = [&](const std::string& limit) {
    return test::run_cnclip({"embed-image", "--model", test::tiny_bundle(), "--max-pixels", limit, image});
  };
  for (const auto& [limit, shown] : std::vector<std::pair<std::string, std::string>>{
           {"0.000001", "0.000001"}, {"1e-6", "0.000001"}, {"0.01", "0.01"}, {"0.050175", "0.050175"}}) {
    SCOPED_TRACE(limit);
    const auto r = embed(limit);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("image is 224x224 (0.050176 MP), over the limit of " + shown + " MP (--max-pixels)"),
              std::string::npos)
        << r.err;
  }
  for (const std::string limit : {"0.050176", "0.06", "1e-1"}) {
    const auto r = embed(limit);
    EXPECT_EQ(r.exit_code, 0) << limit << ": " << r.err;
    EXPECT_NE(r.out.find("\"embedding\""), std::string::npos) << limit;
  }
}

}  // namespace
}  // namespace cnclip
