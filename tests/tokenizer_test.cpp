#include "cnclip/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace cnclip {
namespace {

const WordPieceTokenizer& tokenizer() {
  static auto t = WordPieceTokenizer::from_vocab_file(test::fixtures("vocab.txt"));
  return *t;
}

TEST(Tokenizer, ReproducesEveryFixtureCase) {
  std::ifstream in(test::fixtures("tokenizer_cases.jsonl"));
  ASSERT_TRUE(in) << "missing fixtures";
  std::string line;
  int cases = 0, wrong = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    const std::string text = j["text"];
    const std::vector<int64_t> expected = j["ids"].get<std::vector<int64_t>>();
    const std::vector<int64_t> got = tokenizer().encode(text, 52);
    ++cases;
    if (got != expected) {
      ++wrong;
      ADD_FAILURE() << "text " << nlohmann::json(text).dump() << ": " << nlohmann::json(got).dump()
                    << " != " << nlohmann::json(expected).dump();
    }
  }
  EXPECT_EQ(cases, 404);
  EXPECT_EQ(wrong, 0);
}

TEST(Tokenizer, LayoutClsPiecesSepPadding) {
  auto ids = tokenizer().encode("", 52);
  ASSERT_EQ(ids.size(), 52u);
  EXPECT_EQ(ids[0], 101);
  EXPECT_EQ(ids[1], 102);
  EXPECT_EQ(ids[2], 0);
  // 60 ideographs: cut to 50 pieces, [SEP] always last.
  std::string long_text;
  for (int i = 0; i < 60; ++i) long_text += "猫";
  ids = tokenizer().encode(long_text, 52);
  EXPECT_EQ(ids[51], 102);
  EXPECT_EQ(ids[50], ids[1]);
  EXPECT_EQ(tokenizer().encode(long_text, 8).size(), 8u);
}

TEST(Tokenizer, SplitsPunctuationLowercasesAndStripsAccents) {
  EXPECT_EQ(tokenizer().tokenize("Crème BRÛLÉE!"), tokenizer().tokenize("creme brulee !"));
  auto pieces = tokenizer().tokenize("ΟΔΟΣ");
  ASSERT_FALSE(pieces.empty());
  EXPECT_EQ(tokenizer().tokenize("ΟΔΟΣ"), tokenizer().tokenize("οδος"));  // final sigma
}

TEST(Tokenizer, LongWordIsOneUnknown) {
  std::string word(201, 'a');
  EXPECT_EQ(tokenizer().tokenize(word), std::vector<std::string>{"[UNK]"});
  EXPECT_NE(tokenizer().tokenize(std::string(200, 'a')), std::vector<std::string>{"[UNK]"});
}

TEST(Tokenizer, RejectsInvalidUtf8WithOffset) {
  try {
    tokenizer().encode("ab\xff", 52);
    FAIL() << "no exception";
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("offset 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tokenizer().encode("\xed\xa0\x80", 52), Exception);  // a lone surrogate
  EXPECT_EQ(find_invalid_utf8("夕阳"), std::nullopt);
}

TEST(Tokenizer, MissingVocabNamesTheFile) {
  try {
    WordPieceTokenizer::from_vocab_file("/nonexistent/vocab.txt");
    FAIL() << "no exception";
  } catch (const Exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/vocab.txt"), std::string::npos);
  }
}

// Not a pass/fail benchmark: reports the speed and guards against an accidental quadratic blow-up.
TEST(Tokenizer, TenThousandCaptionsQuickly) {
  std::vector<std::string> captions;
  for (int i = 0; i < 10000; ++i) {
    captions.push_back("一只橘猫趴在窗台上晒太阳 A photo of a CAT number " + std::to_string(i) + "，非常可爱！");
  }
  const auto t0 = std::chrono::steady_clock::now();
  size_t total = 0;
  for (const auto& c : captions) total += tokenizer().encode(c, 52)[1];
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tokenized 10000 captions in %.3f s\n", s);
  EXPECT_GT(total, 0u);
  EXPECT_LT(s, 5.0);
}

}  // namespace
}  // namespace cnclip
