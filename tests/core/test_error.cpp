#include "support/catch.hpp"

#include <moesched/core/error.hpp>

using moesched::ConfigError;

TEST_CASE("ConfigError names source, field, value and reason", "[core][error]") {
  const ConfigError e("presets/models/x.json", "top_k", "9", "must be <= 8");
  CHECK(std::string(e.what()) == "presets/models/x.json: field 'top_k' = 9: must be <= 8");
  CHECK(e.source() == "presets/models/x.json");
  CHECK(e.field() == "top_k");
  CHECK(e.value() == "9");
  CHECK(e.reason() == "must be <= 8");
}

TEST_CASE("ConfigError can be attributed and nested after the fact", "[core][error]") {
  const ConfigError e("", "heads", "0", "must be positive");
  CHECK(std::string(e.what()) == "field 'heads' = 0: must be positive");
  const ConfigError nested = e.under("attention").in_source("m.json");
  CHECK(std::string(nested.what()) == "m.json: field 'attention.heads' = 0: must be positive");
  // an existing source is kept
  CHECK(nested.in_source("other.json").source() == "m.json");
  const ConfigError no_field("f.json", "", "", "no such file");
  CHECK(std::string(no_field.what()) == "f.json: no such file");
}
