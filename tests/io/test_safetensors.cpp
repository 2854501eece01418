#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <moesched/io/safetensors.hpp>

#include <cmath>
#include <cstring>
#include <string>

using namespace moesched;
using moesched::io::SafetensorsFile;
using moesched::io::SafetensorsWriter;
using moesched::io::TensorDType;
using moesched::test::contains;
using moesched::test::TempDir;
using moesched::test::thrown_message;

namespace {
/// A container from a raw header string and a data buffer of `data_bytes` zero bytes.
std::vector<std::byte> container(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes);
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}
std::string open_error(const std::vector<std::byte>& bytes) {
  return thrown_message<ConfigError>([&] { (void)SafetensorsFile::from_buffer(bytes.data(), bytes.size(), "f.st"); });
}
}  // namespace

TEST_CASE("half floats round-trip exactly for every finite value", "[io][safetensors]") {
  std::uint32_t checked = 0;
  for (std::uint32_t h = 0; h < 0x10000U; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = io::half_to_float(bits);
    if (std::isnan(f)) {
      CHECK(std::isnan(io::half_to_float(io::float_to_half(f))));
      continue;
    }
    if (io::float_to_half(f) != bits) {
      FAIL("half " << h << " -> " << f << " -> " << io::float_to_half(f));
    }
    ++checked;
  }
  CHECK(checked == 0x10000U - 2U * 1023U);  // all but the NaN payloads
  CHECK(io::half_to_float(0x3C00) == 1.0F);
  CHECK(io::half_to_float(0x0001) == Approx(5.96046448e-08));  // smallest subnormal
  CHECK(io::float_to_half(1e6F) == 0x7C00);                       // overflow -> +inf
  CHECK(io::float_to_half(0.1F) == 0x2E66);                       // round to nearest
  CHECK(io::bf16_to_float(0x3F80) == 1.0F);
}

TEST_CASE("writer output reads back: metadata, shapes, values, alignment", "[io][safetensors]") {
  SafetensorsWriter w;
  w.metadata("format", "test");
  w.add_values("a_u8", TensorDType::u8, {3}, std::vector<std::uint8_t>{1, 2, 3});
  w.add_values("b_u32", TensorDType::u32, {2, 2}, std::vector<std::uint32_t>{10, 20, 30, 40});
  w.add_values("c_u16", TensorDType::u16, {1}, std::vector<std::uint16_t>{7});
  w.add_values("d_empty", TensorDType::f32, {0, 4}, std::vector<float>{});
  const auto bytes = w.serialize();
  const auto f = SafetensorsFile::from_buffer(bytes.data(), bytes.size(), "mem");
  CHECK(f.metadata().at("format") == "test");
  REQUIRE(f.tensors().size() == 4U);
  const auto& b = f.tensor("b_u32");
  CHECK(b.shape == std::vector<std::uint64_t>{2, 2});
  CHECK(f.load<std::uint32_t>(b, 3) == 40U);
  CHECK(f.load<std::uint8_t>(f.tensor("a_u8"), 2) == 3U);
  CHECK(f.load<std::uint16_t>(f.tensor("c_u16"), 0) == 7U);
  CHECK(f.tensor("d_empty").numel() == 0U);
  for (const auto& t : f.tensors()) {
    const auto addr = static_cast<std::uint64_t>(f.bytes(t) - bytes.data());
    CHECK(addr % io::tensor_dtype_size(t.dtype) == 0U);  // aligned to the element size
  }
  CHECK(f.file_bytes() == bytes.size());
  CHECK(thrown_message<ConfigError>([&] { (void)f.tensor("nope"); }) == "mem: field 'nope': required tensor is missing");
}

TEST_CASE("writer rejects inconsistent tensors", "[io][safetensors][bad_input]") {
  SafetensorsWriter w;
  CHECK(contains(thrown_message<ConfigError>([&] { w.add("x", TensorDType::u16, {3}, std::vector<std::byte>(5)); }),
                 "does not match its shape"));
  w.add("x", TensorDType::u8, {1}, std::vector<std::byte>(1));
  CHECK(contains(thrown_message<ConfigError>([&] { w.add("x", TensorDType::u8, {1}, std::vector<std::byte>(1)); }),
                 "tensor added twice"));
}

TEST_CASE("malformed containers: every defect named, never a crash", "[io][safetensors][bad_input]") {
  CHECK(open_error(std::vector<std::byte>(5)) == "f.st: truncated: 5 bytes, a safetensors file starts with an 8-byte header length");
  auto b = container("{}", 0);
  const std::uint64_t huge = 1000;
  std::memcpy(b.data(), &huge, 8);
  CHECK(open_error(b) == "f.st: field 'header length' = 1000: exceeds the 2 bytes after the length field (truncated file?)");
  CHECK(contains(open_error(container("{not json", 0)), "f.st: field 'header': not valid JSON"));
  CHECK(contains(open_error(container("{\"a\": \"\xff\xfe\"}", 0)), "not valid JSON (or not UTF-8)"));
  CHECK(open_error(container("[1]", 0)) == "f.st: field 'header' = array: must be a JSON object");
  CHECK(contains(open_error(container(R"({"x": 1e999999})", 0)), "f.st: field 'header': not valid JSON (or not UTF-8): number overflow"));
  CHECK(open_error(container(R"({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}})", 1)) ==
        "f.st: field 'x.dtype' = \"Q7\": unknown dtype");
  CHECK(open_error(container(R"({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", 2)) ==
        "f.st: field 'x.data_offsets' = [0,4]: end is beyond the data buffer (2 bytes)");
  CHECK(open_error(container(R"({"x": {"dtype": "U16", "shape": [3], "data_offsets": [0, 4]}})", 8)) ==
        "f.st: field 'x.data_offsets' = [0,4]: holds 4 bytes but shape [3] of U16 needs 6");
  CHECK(open_error(container(R"({"x": {"dtype": "U8", "shape": [2], "data_offsets": [3, 1]}})", 8)) ==
        "f.st: field 'x.data_offsets' = [3,1]: begin is after end");
  CHECK(open_error(container(R"({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                  "y": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})", 8)) ==
        "f.st: field 'y.data_offsets' = 2: overlaps tensor 'x' (which ends at 4)");
  CHECK(contains(open_error(container(R"({"x": {"dtype": "U8", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 1]}})", 8)),
                 "element count overflows 64 bits"));
  CHECK(contains(open_error(container(R"({"x": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}})", 8)),
                 "dimensions must be non-negative integers"));
  CHECK(contains(open_error(container(R"({"x": {"dtype": "U8", "shape": [1]}})", 8)), "field 'x.data_offsets': must be [begin, end]"));
  CHECK(open_error(container(R"({"__metadata__": {"a": 1}})", 0)) ==
        "f.st: field '__metadata__.a' = number: metadata values must be strings");
  CHECK(contains(open_error(container(R"({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "extra": 1}})", 8)),
                 "unknown key in a tensor entry"));
}

TEST_CASE("files: missing, not regular, written atomically", "[io][safetensors]") {
  TempDir dir;
  CHECK(thrown_message<ConfigError>([&] { (void)SafetensorsFile::open(dir.path() / "none.st"); }) ==
        (dir.path() / "none.st").string() + ": no such file");
  CHECK(contains(thrown_message<ConfigError>([&] { (void)SafetensorsFile::open(dir.path()); }), "not a regular file"));
  const auto empty = dir.write("empty.st", "");
  CHECK(contains(thrown_message<ConfigError>([&] { (void)SafetensorsFile::open(empty); }), "truncated: 0 bytes"));

  SafetensorsWriter w;
  w.add_values("x", TensorDType::u8, {2}, std::vector<std::uint8_t>{4, 5});
  const auto path = dir.path() / "ok.st";
  w.write(path);
  const auto f = SafetensorsFile::open(path);
  CHECK(f.load<std::uint8_t>(f.tensor("x"), 1) == 5U);
  CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  // a failed write leaves nothing behind
  const auto bad = dir.path() / "no-such-dir" / "x.st";
  CHECK(contains(thrown_message<ConfigError>([&] { w.write(bad); }), "cannot open for writing"));
  CHECK_FALSE(std::filesystem::exists(bad.string() + ".tmp"));
}

TEST_CASE("output paths are checked before any work", "[io][atomic_file]") {
  TempDir dir;
  // a file in an existing folder, or in the current folder, is fine (and nothing is created)
  io::check_writable_path(dir.path() / "out.json", "--json");
  io::check_writable_path("relative-out.json", "--json");
  CHECK_FALSE(std::filesystem::exists(dir.path() / "out.json"));
  const auto missing = dir.path() / "no-such-dir" / "out.json";
  CHECK(thrown_message<ConfigError>([&] { io::check_writable_path(missing, "--json"); }) ==
        "field '--json' = " + missing.string() + ": the folder " + (dir.path() / "no-such-dir").string() +
            " does not exist");
  CHECK(contains(thrown_message<ConfigError>([&] { io::check_writable_path(dir.path(), "--csv"); }), "is a folder, not a file"));
  const auto file = dir.write("plain", "x");
  CHECK(contains(thrown_message<ConfigError>([&] { io::check_writable_path(file / "out.json", "--plot"); }), "is not a folder"));
  CHECK(contains(thrown_message<ConfigError>([&] { io::check_writable_path("", "--json"); }), "empty output path"));
}
