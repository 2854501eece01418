#pragma once
/// A safetensors container: read (memory-mapped, validated) and write (atomically).
///
///   auto f = moesched::io::SafetensorsFile::open("trace.safetensors");
///   const auto& t = f.tensor("routing_experts");       // dtype, shape, bytes
///   std::uint16_t id = f.load<std::uint16_t>(t, 17);    // element 17, little-endian
///   f.metadata().at("format");                          // "__metadata__" strings
///
///   moesched::io::SafetensorsWriter w;
///   w.metadata("format", "moesched-trace");
///   w.add("x", moesched::io::TensorDType::u16, {2, 3}, bytes);
///   w.write("out.safetensors");   // temp file + rename: never a half-written file
///
/// Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N
/// bytes of JSON header {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}},
/// then the data buffer; offsets are relative to the buffer. open() checks everything a reader
/// could trip on (truncation, header length beyond the file, non-JSON or non-UTF-8 header, unknown
/// dtypes, shape/size mismatch, offsets out of range or overlapping) and throws ConfigError naming
/// the file, the tensor and the value. Element access goes through memcpy, so unaligned tensors
/// (allowed by the format) are read without undefined behaviour.

#include "moesched/core/error.hpp"
#include "moesched/core/units.hpp"
#include "moesched/io/atomic_file.hpp"
#include "moesched/io/json_reader.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static_assert(std::endian::native == std::endian::little,
              "moesched's safetensors I/O assumes a little-endian host");

namespace moesched::io {

/// Element types of the safetensors format.
enum class TensorDType : std::uint8_t { boolean, u8, i8, u16, i16, f16, bf16, u32, i32, f32, u64, i64, f64, f8_e4m3, f8_e5m2 };

struct TensorDTypeInfo {
  TensorDType dtype;
  std::string_view name;
  std::uint32_t size;
};
inline constexpr TensorDTypeInfo kTensorDTypes[] = {
    {TensorDType::boolean, "BOOL", 1}, {TensorDType::u8, "U8", 1},     {TensorDType::i8, "I8", 1},
    {TensorDType::u16, "U16", 2},      {TensorDType::i16, "I16", 2},   {TensorDType::f16, "F16", 2},
    {TensorDType::bf16, "BF16", 2},    {TensorDType::u32, "U32", 4},   {TensorDType::i32, "I32", 4},
    {TensorDType::f32, "F32", 4},      {TensorDType::u64, "U64", 8},   {TensorDType::i64, "I64", 8},
    {TensorDType::f64, "F64", 8},      {TensorDType::f8_e4m3, "F8_E4M3", 1},
    {TensorDType::f8_e5m2, "F8_E5M2", 1},
};
[[nodiscard]] constexpr const TensorDTypeInfo& tensor_dtype_info(TensorDType d) noexcept {
  return kTensorDTypes[static_cast<std::size_t>(d)];
}
[[nodiscard]] constexpr std::string_view tensor_dtype_name(TensorDType d) noexcept {
  return tensor_dtype_info(d).name;
}
[[nodiscard]] constexpr std::uint32_t tensor_dtype_size(TensorDType d) noexcept {
  return tensor_dtype_info(d).size;
}

/// IEEE half to float.
[[nodiscard]] inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = (h & 0x8000U) << 16U;
  std::uint32_t exp = (h >> 10U) & 0x1FU;
  std::uint32_t mant = h & 0x3FFU;
  std::uint32_t bits = 0;
  if (exp == 0x1FU) {
    bits = sign | 0x7F800000U | (mant << 13U);
  } else if (exp != 0) {
    bits = sign | ((exp + 112U) << 23U) | (mant << 13U);
  } else if (mant != 0) {  // subnormal: normalise
    exp = 113U;
    while ((mant & 0x400U) == 0) {
      mant <<= 1U;
      --exp;
    }
    bits = sign | (exp << 23U) | ((mant & 0x3FFU) << 13U);
  } else {
    bits = sign;
  }
  return std::bit_cast<float>(bits);
}

/// Float to IEEE half, rounding to nearest even; overflow gives infinity.
[[nodiscard]] inline std::uint16_t float_to_half(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16U) & 0x8000U;
  const std::uint32_t exp = (x >> 23U) & 0xFFU;
  std::uint32_t mant = x & 0x7FFFFFU;
  if (exp == 0xFFU) return static_cast<std::uint16_t>(sign | 0x7C00U | (mant != 0 ? 0x200U : 0U));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<std::uint16_t>(sign | 0x7C00U);
  if (e <= 0) {
    if (e < -10) return static_cast<std::uint16_t>(sign);
    mant |= 0x800000U;
    const auto shift = static_cast<std::uint32_t>(14 - e);
    std::uint32_t half = mant >> shift;
    const std::uint32_t rem = mant & ((1U << shift) - 1U);
    const std::uint32_t mid = 1U << (shift - 1U);
    if (rem > mid || (rem == mid && (half & 1U))) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  std::uint32_t half = (static_cast<std::uint32_t>(e) << 10U) | (mant >> 13U);
  const std::uint32_t rem = mant & 0x1FFFU;
  if (rem > 0x1000U || (rem == 0x1000U && (half & 1U))) ++half;  // may carry into the exponent: fine
  return static_cast<std::uint16_t>(sign | half);
}

/// bfloat16 to float.
[[nodiscard]] inline float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16U);
}

/// One tensor of an opened file.
struct TensorInfo {
  std::string name;
  TensorDType dtype = TensorDType::u8;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0;  ///< offset in the data buffer
  std::uint64_t end = 0;
  [[nodiscard]] std::uint64_t numel() const noexcept {
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  [[nodiscard]] std::uint64_t bytes() const noexcept { return end - begin; }
};

/// A read-only memory map of a whole regular file.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path) : path_(path.string()) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      throw ConfigError(path_, "", "", err == ENOENT ? "no such file" : "cannot open: " + std::string(std::strerror(err)));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw ConfigError(path_, "", "", "not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw ConfigError(path_, "", "", "cannot map the file: " + std::string(std::strerror(err)));
      }
      data_ = static_cast<const std::byte*>(p);
      ::madvise(p, size_, MADV_SEQUENTIAL);
    }
    ::close(fd);
  }
  MappedFile(MappedFile&& o) noexcept
      : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { unmap(); }

  [[nodiscard]] const std::byte* data() const noexcept { return data_; }
  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
  }
  std::string path_;
  const std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
};

/// A validated, memory-mapped safetensors file (or an in-memory buffer, for tests and fuzzing).
class SafetensorsFile {
 public:
  /// Largest header accepted (the reference implementation's limit is 100 MB).
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

  /// Map and validate `path`; ConfigError naming the file, tensor and value on any defect.
  [[nodiscard]] static SafetensorsFile open(const std::filesystem::path& path) {
    SafetensorsFile f;
    f.file_ = std::make_shared<MappedFile>(path);
    f.parse(f.file_->data(), f.file_->size(), f.file_->path());
    return f;
  }
  /// Validate a buffer the caller keeps alive for the object's lifetime.
  [[nodiscard]] static SafetensorsFile from_buffer(const std::byte* data, std::uint64_t size,
                                                   std::string source) {
    SafetensorsFile f;
    f.parse(data, size, std::move(source));
    return f;
  }

  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  [[nodiscard]] const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }
  [[nodiscard]] std::uint64_t file_bytes() const noexcept { return data_offset_ + data_size_; }

  [[nodiscard]] const TensorInfo* find(std::string_view name) const noexcept {
    for (const auto& t : tensors_) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  /// The tensor `name`; ConfigError if the file lacks it.
  [[nodiscard]] const TensorInfo& tensor(std::string_view name) const {
    if (const auto* t = find(name)) return *t;
    throw ConfigError(source_, std::string(name), "", "required tensor is missing");
  }
  /// First byte of a tensor's data.
  [[nodiscard]] const std::byte* bytes(const TensorInfo& t) const noexcept {
    return base_ + data_offset_ + t.begin;
  }
  /// Element `i` of `t` as T (sizeof(T) must equal the element size; unchecked, see open()).
  template <class T>
  [[nodiscard]] T load(const TensorInfo& t, std::uint64_t i) const noexcept {
    T v;
    std::memcpy(&v, bytes(t) + i * sizeof(T), sizeof(T));
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& field, const std::string& value, const std::string& reason) const {
    throw ConfigError(source_, field, value, reason);
  }

  void parse(const std::byte* data, std::uint64_t size, std::string source) {
    source_ = std::move(source);
    base_ = data;
    if (size < 8) fail("", "", "truncated: " + std::to_string(size) + " bytes, a safetensors file starts with an 8-byte header length");
    std::uint64_t n = 0;
    std::memcpy(&n, data, 8);
    if (n > size - 8) {
      fail("header length", std::to_string(n), "exceeds the " + std::to_string(size - 8) + " bytes after the length field (truncated file?)");
    }
    if (n > kMaxHeaderBytes) fail("header length", std::to_string(n), "exceeds the 100 MB limit");
    if (n < 2) fail("header length", std::to_string(n), "too short for a JSON object");
    const std::string_view text(reinterpret_cast<const char*>(data + 8), n);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for huge numbers
      fail("header", "", "not valid JSON (or not UTF-8): " + json_error_text(e));
    }
    if (!header.is_object()) fail("header", header.type_name(), "must be a JSON object");
    data_offset_ = 8 + n;
    data_size_ = size - data_offset_;
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) fail("__metadata__", value.type_name(), "must be an object of strings");
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) fail("__metadata__." + mk, mv.type_name(), "metadata values must be strings");
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      tensors_.push_back(parse_tensor(key, value));
    }
    // no two tensors may share bytes
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    for (std::size_t i = 1; i < by_offset.size(); ++i) {
      if (by_offset[i]->begin < by_offset[i - 1]->end) {
        fail(by_offset[i]->name + ".data_offsets", std::to_string(by_offset[i]->begin),
             "overlaps tensor '" + by_offset[i - 1]->name + "' (which ends at " + std::to_string(by_offset[i - 1]->end) + ")");
      }
    }
  }

  TensorInfo parse_tensor(const std::string& name, const nlohmann::json& v) const {
    if (!v.is_object()) fail(name, v.type_name(), "a tensor entry must be an object");
    TensorInfo t;
    t.name = name;
    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(name + ".dtype", "", "missing or not a string");
    const auto dname = dt->get<std::string>();
    bool known = false;
    for (const auto& info : kTensorDTypes) {
      if (info.name == dname) {
        t.dtype = info.dtype;
        known = true;
      }
    }
    if (!known) fail(name + ".dtype", "\"" + dname + "\"", "unknown dtype");
    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(name + ".shape", "", "missing or not a list");
    std::uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) fail(name + ".shape", sh->dump(), "dimensions must be non-negative integers");
      const auto dim = d.get<std::uint64_t>();
      const auto product = checked_mul(numel, dim);
      if (!product) fail(name + ".shape", sh->dump(), "element count overflows 64 bits");
      numel = *product;
      t.shape.push_back(dim);
    }
    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      fail(name + ".data_offsets", off == v.end() ? "" : off->dump(), "must be [begin, end] with non-negative integers");
    }
    t.begin = (*off)[0].get<std::uint64_t>();
    t.end = (*off)[1].get<std::uint64_t>();
    if (t.begin > t.end) fail(name + ".data_offsets", off->dump(), "begin is after end");
    if (t.end > data_size_) {
      fail(name + ".data_offsets", off->dump(), "end is beyond the data buffer (" + std::to_string(data_size_) + " bytes)");
    }
    const auto need = checked_mul(numel, tensor_dtype_size(t.dtype));
    if (!need || t.end - t.begin != *need) {
      fail(name + ".data_offsets", off->dump(),
           "holds " + std::to_string(t.end - t.begin) + " bytes but shape " + sh->dump() + " of " + dname +
               " needs " + (need ? std::to_string(*need) : std::string("more than 2^64")));
    }
    for (const auto& [k, _] : v.items()) {
      if (k != "dtype" && k != "shape" && k != "data_offsets") fail(name + "." + k, "", "unknown key in a tensor entry");
    }
    return t;
  }

  std::shared_ptr<MappedFile> file_;  // shared so that views stay valid when the object is copied
  std::string source_;
  const std::byte* base_ = nullptr;
  std::uint64_t data_offset_ = 0;
  std::uint64_t data_size_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
};

/// Collects tensors and metadata, then writes a safetensors file in one go.
class SafetensorsWriter {
 public:
  void metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// Add a tensor; `data` must hold exactly numel(shape) * element size bytes.
  void add(const std::string& name, TensorDType dtype, std::vector<std::uint64_t> shape, std::vector<std::byte> data) {
    std::uint64_t numel = 1;
    for (auto d : shape) numel *= d;
    if (numel * tensor_dtype_size(dtype) != data.size()) {
      throw ConfigError("", name, std::to_string(data.size()) + " bytes",
                        "does not match its shape (" + std::to_string(numel) + " elements of " +
                            std::string(tensor_dtype_name(dtype)) + ")");
    }
    for (const auto& e : entries_) {
      if (e.name == name) throw ConfigError("", name, "", "tensor added twice");
    }
    if (name == "__metadata__") throw ConfigError("", name, "", "reserved name");
    entries_.push_back({name, dtype, std::move(shape), std::move(data)});
  }
  /// Add a tensor from a vector of trivially copyable elements.
  template <class T>
  void add_values(const std::string& name, TensorDType dtype, std::vector<std::uint64_t> shape, const std::vector<T>& values) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (sizeof(T) != tensor_dtype_size(dtype)) throw ConfigError("", name, "", "element size does not match the dtype");
    std::vector<std::byte> bytes(values.size() * sizeof(T));
    if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    add(name, dtype, std::move(shape), std::move(bytes));
  }

  /// The complete file contents. Tensors are laid out largest element size first (then by
  /// name) after a header padded to 8 bytes, so every tensor is aligned to its element size.
  [[nodiscard]] std::vector<std::byte> serialize() const {
    std::vector<const Entry*> order;
    for (const auto& e : entries_) order.push_back(&e);
    std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
      const auto sa = tensor_dtype_size(a->dtype);
      const auto sb = tensor_dtype_size(b->dtype);
      return sa != sb ? sa > sb : a->name < b->name;
    });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json md = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) md[k] = v;
      header["__metadata__"] = md;
    }
    std::uint64_t offset = 0;
    for (const Entry* e : order) {
      header[e->name] = {{"dtype", std::string(tensor_dtype_name(e->dtype))},
                         {"shape", e->shape},
                         {"data_offsets", {offset, offset + e->data.size()}}};
      offset += e->data.size();
    }
    std::string text = header.dump();
    while ((8 + text.size()) % 8 != 0) text.push_back(' ');
    std::vector<std::byte> out(8 + text.size() + offset);
    const std::uint64_t n = text.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::uint64_t pos = 8 + text.size();
    for (const Entry* e : order) {
      if (!e->data.empty()) std::memcpy(out.data() + pos, e->data.data(), e->data.size());
      pos += e->data.size();
    }
    return out;
  }

  /// Write to `path` through `path.tmp` and a rename; on failure nothing is left behind and an
  /// existing file at `path` is untouched.
  void write(const std::filesystem::path& path) const {
    const auto bytes = serialize();
    write_file_atomically(path, bytes.data(), bytes.size());
  }

 private:
  struct Entry {
    std::string name;
    TensorDType dtype;
    std::vector<std::uint64_t> shape;
    std::vector<std::byte> data;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
};

}  // namespace moesched::io
