#pragma once
/// gzip (and zlib) decompression of routing dumps in memory, through zlib. Link ZLIB::ZLIB
/// (Debian: zlib1g-dev) when including this header or trace/import.hpp.
///
///   std::string gz = moesched::trace::gzip(text);      // compress (tests, writers)
///   if (moesched::trace::is_gzip(bytes)) {
///     auto r = moesched::trace::gunzip(bytes, "dump.jsonl.gz");  // ConfigError naming the file
///     use(r.text);                  // r.cut_short: the stream ended before its end marker
///   }
///
/// Concatenated gzip members (what `cat a.gz b.gz` gives) decompress as one text. A stream that
/// stops early (the writer was killed) returns what was decompressed with `cut_short` set;
/// corrupt data, a bad header or a checksum mismatch is a ConfigError naming the file.

#include "moesched/core/error.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moesched::trace {

/// True when `bytes` starts with the gzip magic number (1f 8b).
[[nodiscard]] inline bool is_gzip(std::string_view bytes) noexcept {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1FU && static_cast<unsigned char>(bytes[1]) == 0x8BU;
}

struct GunzipResult {
  std::string text;
  bool cut_short = false;  ///< the input ended inside a stream (what was decompressed is kept)
  std::uint32_t members = 0;  ///< gzip members decompressed
};

/// Decompress gzip (or zlib) data; `source` names the file in errors.
[[nodiscard]] inline GunzipResult gunzip(std::string_view bytes, const std::string& source) {
  GunzipResult out;
  z_stream zs{};
  // inflateInit2() is a macro with a C cast; call the function it names directly. 15 + 32: the
  // largest window, and a gzip or zlib header detected automatically.
  if (inflateInit2_(&zs, 15 + 32, ZLIB_VERSION, static_cast<int>(sizeof(z_stream))) != Z_OK) {
    throw ConfigError(source, "", "", "gzip: cannot initialise zlib");
  }
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&zs};
  std::size_t in_pos = 0;
  char buf[1 << 16];
  bool in_member = true;
  while (true) {
    if (zs.avail_in == 0 && in_pos < bytes.size()) {
      const std::size_t n = std::min<std::size_t>(bytes.size() - in_pos, UINT_MAX / 2);
      zs.next_in = const_cast<Bytef*>(reinterpret_cast<const Bytef*>(bytes.data() + in_pos));
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = static_cast<uInt>(sizeof buf);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    out.text.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_STREAM_END) {
      ++out.members;
      in_member = false;
      const std::size_t left = zs.avail_in + (bytes.size() - in_pos);
      if (left == 0) break;
      // another member follows, or trailing bytes: gzip(1) ignores trailing zeros
      const std::size_t at = bytes.size() - left;
      const std::string_view rest = bytes.substr(at);
      if (rest.find_first_not_of('\0') == std::string_view::npos) break;
      if (!is_gzip(rest)) {
        throw ConfigError(source, "", "byte " + std::to_string(at), "gzip: data after the end of the compressed stream is not gzip");
      }
      if (inflateReset(&zs) != Z_OK) throw ConfigError(source, "", "", "gzip: cannot reset zlib");
      in_member = true;
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR) {
      // no progress possible: the input is exhausted inside a member
      if (zs.avail_in == 0 && in_pos >= bytes.size()) break;
      continue;
    }
    const std::string why = zs.msg != nullptr ? zs.msg : "error " + std::to_string(rc);
    throw ConfigError(source, "", "byte " + std::to_string(in_pos - zs.avail_in), "gzip: corrupt compressed data (zlib: " + why + ")");
  }
  out.cut_short = in_member;
  if (out.cut_short && out.members == 0 && out.text.empty()) {
    throw ConfigError(source, "", "", "gzip: the compressed stream ends before any data (file cut short?)");
  }
  return out;
}

/// Compress `text` as one gzip member (no file name, time 0: the same text gives the same bytes).
[[nodiscard]] inline std::string gzip(std::string_view text, int level = 6) {
  z_stream zs{};
  // deflateInit2() is a macro with a C cast; 15 + 16: the largest window, with a gzip wrapper
  if (deflateInit2_(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, static_cast<int>(sizeof(z_stream))) != Z_OK) {
    throw ConfigError("", "gzip", std::to_string(level), "cannot initialise zlib (level must be between -1 and 9)");
  }
  struct End {
    z_stream* z;
    ~End() { deflateEnd(z); }
  } end{&zs};
  std::string out;
  char buf[1 << 16];
  std::size_t in_pos = 0;
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    if (zs.avail_in == 0 && in_pos < text.size()) {
      const std::size_t n = std::min<std::size_t>(text.size() - in_pos, UINT_MAX / 2);
      zs.next_in = const_cast<Bytef*>(reinterpret_cast<const Bytef*>(text.data() + in_pos));
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = static_cast<uInt>(sizeof buf);
    rc = deflate(&zs, in_pos < text.size() ? Z_NO_FLUSH : Z_FINISH);
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) throw ConfigError("", "gzip", std::to_string(rc), "zlib deflate failed");
    out.append(buf, sizeof buf - zs.avail_out);
  }
  return out;
}

}  // namespace moesched::trace
