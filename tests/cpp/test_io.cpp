// C++ API of the io layer: readers, positions, the synthetic generator, metrics, dedup.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/io/criteo_format.h"
#include "sparsecore/io/csv_format.h"
#include "sparsecore/io/feature_hash.h"
#include "sparsecore/io/libsvm_format.h"
#include "sparsecore/io/metrics.h"
#include "sparsecore/io/synthetic_generator.h"
#include "sparsecore/io/text_reader.h"

using namespace sparsecore;
using namespace sparsecore::io;

namespace {

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("sc_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    auto p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  std::string path(const std::string& name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

std::string criteo_line(std::mt19937_64& rng) {
  std::string s = std::to_string(rng() % 2);
  for (int i = 0; i < 13; ++i) s += "\t" + (rng() % 5 == 0 ? std::string() : std::to_string(rng() % 1000));
  for (int i = 0; i < 26; ++i) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(rng()));
    s += "\t" + (rng() % 5 == 0 ? std::string() : std::string(hex));
  }
  return s;
}

SampleBatch read_everything(TextReader& r, int64_t batch_size) {
  SampleBatch all = r.empty_batch();
  for (SampleBatch b = r.next_batch(batch_size); b.num_samples > 0; b = r.next_batch(batch_size)) {
    b.validate();
    all.append_samples(b, 0, b.num_samples);
  }
  return all;
}

void expect_same(const SampleBatch& a, const SampleBatch& b) {
  ASSERT_EQ(a.num_samples, b.num_samples);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.dense, b.dense);
  ASSERT_EQ(a.groups.size(), b.groups.size());
  for (size_t g = 0; g < a.groups.size(); ++g) {
    EXPECT_EQ(a.groups[g].ids, b.groups[g].ids) << a.groups[g].name;
    EXPECT_EQ(a.groups[g].offsets, b.groups[g].offsets) << a.groups[g].name;
    EXPECT_EQ(a.groups[g].weights, b.groups[g].weights) << a.groups[g].name;
  }
}

}  // namespace

TEST(FeatureHash, IsTheDocumentedFunction) {
  // Golden values of the file-format contract (feature_hash.h); they must never change.
  EXPECT_EQ(feature_value_id(feature_seed("C1"), "68fd1e64"), 2258962038413971100LL);
  EXPECT_EQ(feature_value_id(feature_seed("city"), "a somewhat longer value"), -7737958205363032913LL);
  EXPECT_EQ(feature_value_id(feature_seed("x"), ""), 3711637726795544975LL);
}

TEST(TextReader, CriteoReadsSamplesSkipsMalformedAndReportsLines) {
  TempDir dir;
  std::mt19937_64 rng(std::random_device{}());
  std::string a = criteo_line(rng), b = criteo_line(rng);
  auto path = dir.write("d.tsv", a + "\r\n\r\nnot a criteo line\r\n" + b);
  TextReaderOptions keep_going;
  keep_going.max_bad_fraction = 1.0;
  TextReader r({path}, std::make_shared<CriteoFormat>(), keep_going);
  SampleBatch all = read_everything(r, 1);
  EXPECT_EQ(all.num_samples, 2);
  EXPECT_EQ(all.dense_dim, 13);
  EXPECT_EQ(all.groups.size(), 26u);
  ASSERT_EQ(r.malformed_count(), 1);
  EXPECT_EQ(r.malformed_lines()[0].line_number, 3);
  EXPECT_EQ(r.position(), (ReaderPosition{1, 0, 0}));
}

TEST(TextReader, SeekResumesExactlyForAnyThreadsAndBlocks) {
  TempDir dir;
  std::mt19937_64 rng(std::random_device{}());
  std::vector<std::string> paths;
  for (int f = 0; f < 2; ++f) {
    std::string text;
    for (int i = 0; i < 300; ++i) text += (rng() % 17 == 0 ? std::string("junk") : criteo_line(rng)) + "\n";
    paths.push_back(dir.write("p" + std::to_string(f) + ".tsv", text));
  }
  auto fmt = std::make_shared<CriteoFormat>();
  TextReaderOptions keep_going;
  keep_going.max_bad_fraction = 1.0;
  TextReader ref(paths, fmt, keep_going);
  SampleBatch expected = read_everything(ref, 100);

  TextReaderOptions small{/*block_bytes=*/1500, /*num_threads=*/3, /*prefetch_blocks=*/1, 10, 1.0};
  auto r = std::make_unique<TextReader>(paths, fmt, small);
  SampleBatch got = r->empty_batch();
  int64_t malformed = 0;
  while (true) {
    SampleBatch b = r->next_batch(1 + static_cast<int64_t>(rng() % 90));
    if (b.num_samples == 0) break;
    got.append_samples(b, 0, b.num_samples);
    ReaderPosition p = r->position();
    malformed += r->malformed_count();
    // a fresh reader, other blocks and threads, resumes from the saved position
    r = std::make_unique<TextReader>(paths, fmt,
                                     TextReaderOptions{static_cast<int64_t>(200 + rng() % 5000), 2, 2, 10, 1.0});
    r->seek(p);
  }
  malformed += r->malformed_count();
  expect_same(expected, got);
  EXPECT_EQ(malformed, ref.malformed_count());
}

TEST(TextReader, MostlyMalformedDataThrowsCorruptDataNamingTheFirstLine) {
  TempDir dir;
  auto path = dir.write("four.tsv", "1\t2\t3\t4\n1\t2\n");
  TextReader r({path}, std::make_shared<CriteoFormat>());
  try {
    r.next_batch(10);
    FAIL() << "expected CorruptData";
  } catch (const CorruptData& e) {
    EXPECT_NE(std::string(e.what()).find("no line of the data parses (2 malformed); first: " + path +
                                         ":1: expected 40 fields, found 4 (tab-separated)"),
              std::string::npos)
        << e.what();
  }
}

TEST(TextReader, ReadsGzipMembersAsOneStreamAndSeeksInside) {
  TempDir dir;
  // gzip -c of "1,a\n0,b\n" followed by gzip -c of "1,c\n0,d" (two members, no final newline).
  const char packed[] =
      "\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\x33\xd4\x49\xe4\x32\xd0\x49\xe2\x02\x00\x22\xbc\x22\xdb\x08\x00"
      "\x00\x00\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\x33\xd4\x49\xe6\x32\xd0\x49\x01\x00\x53\x72\xbc\x05\x07"
      "\x00\x00\x00";
  auto gz = dir.write("d.csv.gz", std::string(packed, sizeof packed - 1));
  auto plain = dir.write("d.csv", "1,a\n0,b\n1,c\n0,d");
  auto fmt = std::make_shared<CsvFormat>(
      CsvSchema{{{"y", CsvColumnType::kLabel, ""}, {"v", CsvColumnType::kCategorical, ""}}});
  TextReader from_plain({plain}, fmt), from_gz({gz}, fmt, TextReaderOptions{3, 1, 1, 10, 0.01});
  expect_same(read_everything(from_plain, 3), read_everything(from_gz, 3));
  EXPECT_EQ(from_gz.position(), (ReaderPosition{1, 0, 0}));
  TextReader resumed({gz}, fmt);
  resumed.seek({0, 8, 2});  // after "1,a\n0,b\n": the third line, in the second member
  SampleBatch rest = read_everything(resumed, 10);
  EXPECT_EQ(rest.labels, (std::vector<float>{1.0f, 0.0f}));
  EXPECT_THROW(resumed.seek({0, 5, 1}), InvalidArgument);   // not a line start
  EXPECT_THROW(resumed.seek({0, 99, 4}), InvalidArgument);  // beyond the data
}

TEST(TextReader, UnreadableFileThrowsIoErrorNamingIt) {
  TempDir dir;
  try {
    TextReader r({dir.path("missing.tsv")}, std::make_shared<CriteoFormat>());
    FAIL() << "no exception";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.tsv"), std::string::npos);
  }
}

TEST(TextReader, LibsvmWeightsAndSeekValidation) {
  TempDir dir;
  auto path = dir.write("a.svm", "1 3:0.5 9:2\n-1 4:1\n");
  TextReader r({path}, std::make_shared<LibsvmFormat>());
  SampleBatch b = r.next_batch(10);
  EXPECT_EQ(b.labels, (std::vector<float>{1.0f, 0.0f}));
  EXPECT_EQ(b.groups[0].ids, (std::vector<int64_t>{3, 9, 4}));
  EXPECT_EQ(b.groups[0].weights, (std::vector<float>{0.5f, 2.0f, 1.0f}));
  EXPECT_THROW(r.seek({0, 2, 0}), InvalidArgument);
  EXPECT_THROW(r.seek({2, 0, 0}), InvalidArgument);
  r.seek({0, 12, 1});  // the start of line 2
  EXPECT_EQ(r.next_batch(10).groups[0].ids, (std::vector<int64_t>{4}));
}

TEST(CsvFormat, RejectsBadSchemas) {
  EXPECT_THROW(CsvFormat(CsvSchema{}), InvalidArgument);
  CsvSchema two_labels{{{"a", CsvColumnType::kLabel, ""}, {"b", CsvColumnType::kLabel, ""}}};
  EXPECT_THROW(CsvFormat{two_labels}, InvalidArgument);
  EXPECT_THROW(parse_csv_column_type("float", "x"), InvalidArgument);
}

TEST(ZipfSampler, FrequenciesDecreaseWithRank) {
  ZipfSampler z(50, 1.2);
  SplitMixStream rng{42};
  std::vector<int64_t> counts(51, 0);
  for (int i = 0; i < 200000; ++i) {
    int64_t k = z.sample(rng);
    ASSERT_GE(k, 1);
    ASSERT_LE(k, 50);
    ++counts[k];
  }
  double norm = 0;
  for (int k = 1; k <= 50; ++k) norm += std::pow(k, -1.2);
  for (int k = 1; k <= 5; ++k) EXPECT_NEAR(counts[k] / 200000.0, std::pow(k, -1.2) / norm, 0.01) << k;
  EXPECT_THROW(ZipfSampler(0, 1.0), InvalidArgument);
}

TEST(SyntheticGenerator, StreamIsIndependentOfBatchSizeAndCompressionExpands) {
  SyntheticConfig c;
  c.group_names = {"u0", "u1", "a0"};
  c.vocab_size = 5000;
  c.num_user_groups = 2;
  c.samples_per_view = 5;
  c.seed = std::random_device{}();
  SyntheticGenerator g(c);
  SampleBatch whole = g.generate(0, 97, false);
  SampleBatch parts = whole.empty_like();
  for (int64_t first = 0; first < 97; first += 13) {
    SampleBatch compressed = g.generate(first, std::min<int64_t>(13, 97 - first), true);
    ASSERT_TRUE(compressed.compressed());
    compressed.validate();
    EXPECT_EQ(g.true_probabilities(compressed), compressed.probabilities);
    SampleBatch plain = expand_compressed(compressed);
    parts.append_samples(plain, 0, plain.num_samples);
  }
  expect_same(whole, parts);
  EXPECT_EQ(whole.probabilities, parts.probabilities);
  std::set<int64_t> ids;
  for (int64_t k = 1; k <= 5000; ++k) ids.insert(g.rank_to_id(k));
  EXPECT_EQ(ids.size(), 5000u);
  EXPECT_EQ(*ids.rbegin(), 4999);
}

TEST(Metrics, AucGaucLogloss) {
  std::vector<double> y{0, 0, 1, 1, 0, 1}, s{0.1, 0.4, 0.35, 0.8, 0.5, 0.5};
  // pairs (pos, neg): 0.35 beats 0.1 only; 0.8 beats all; 0.5 beats 0.1, 0.4, ties 0.5
  EXPECT_DOUBLE_EQ(auc(y.data(), s.data(), 6), (1 + 3 + 2.5) / 9.0);
  std::vector<int64_t> users{1, 1, 1, 2, 2, 2};
  EXPECT_DOUBLE_EQ(gauc(y.data(), s.data(), users.data(), 6), (0.5 * 3 + 0.75 * 3) / 6);
  std::vector<double> p{0.5, 0.5, 0.5, 0.5, 0.5, 0.5};
  EXPECT_NEAR(logloss(y.data(), p.data(), 6), std::log(2.0), 1e-15);
  std::vector<double> bad{0, 2};
  EXPECT_THROW(auc(bad.data(), s.data(), 2), InvalidArgument);
  EXPECT_TRUE(std::isnan(auc(y.data(), s.data(), 2)));
}

TEST(TextReader, EndOffsetsCutEachFileIntoLineRangesThatTogetherAreTheWholeData) {
  TempDir dir;
  std::mt19937_64 rng(11);
  std::string text;
  std::vector<int64_t> line_starts;
  for (int i = 0; i < 200; ++i) {
    line_starts.push_back(static_cast<int64_t>(text.size()));
    text += criteo_line(rng) + "\n";
  }
  auto path = dir.write("whole.tsv", text);
  auto fmt = std::make_shared<CriteoFormat>();
  TextReader whole({path}, fmt);
  SampleBatch expected = read_everything(whole, 64);
  // Three ranges of lines [0, 70), [70, 71), [71, 200), each read by a reader of its own
  // with small blocks: together the whole file, in order, none twice.
  const std::vector<int64_t> cuts = {0, 70, 71, 200};
  SampleBatch got = whole.empty_batch();
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    TextReaderOptions o{/*block_bytes=*/300, /*num_threads=*/2, /*prefetch_blocks=*/1, 10, 0.01};
    o.end_offsets = {cuts[r + 1] < 200 ? line_starts[cuts[r + 1]] : -1};
    TextReader part({path}, fmt, o);
    part.seek({0, line_starts[cuts[r]], cuts[r]});
    SampleBatch b = read_everything(part, 16);
    EXPECT_EQ(b.num_samples, cuts[r + 1] - cuts[r]);
    got.append_samples(b, 0, b.num_samples);
  }
  expect_same(expected, got);
  TextReaderOptions wrong;
  wrong.end_offsets = {10, 20};
  EXPECT_THROW(TextReader({path}, fmt, wrong), InvalidArgument);
}
