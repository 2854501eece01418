#include "support/catch.hpp"

#include <moesched/io/json_reader.hpp>

using namespace moesched;
using moesched::io::JsonObjectReader;
using moesched::test::contains;
using moesched::test::thrown_message;
using nlohmann::json;

TEST_CASE("typed reads accept the right types and name the wrong ones", "[io][json_reader]") {
  const json j = json::parse(R"({"n": 4096, "f": 4096.0, "neg": -3, "s": "x", "b": true,
                                  "frac": 1.5, "list": ["a", "b"], "bad_list": ["a", 1]})");
  JsonObjectReader r(j, "f.json");
  CHECK(r.required_uint("n") == 4096U);
  CHECK(r.required_uint("f") == 4096U);
  CHECK(r.required_string("s") == "x");
  CHECK(r.optional_bool("b") == true);
  CHECK_FALSE(r.optional_bool("absent").has_value());
  CHECK(r.required_number("frac", true) == Approx(1.5));
  CHECK(r.optional_string_list("list") == std::vector<std::string>{"a", "b"});

  CHECK(thrown_message<ConfigError>([&] { (void)r.required_uint("neg", 1); }) ==
        "f.json: field 'neg' = -3: must be a positive integer");
  CHECK(thrown_message<ConfigError>([&] { (void)r.required_uint("s"); }) ==
        "f.json: field 's' = \"x\": expected an integer, got string");
  CHECK(thrown_message<ConfigError>([&] { (void)r.required_uint("frac"); }) ==
        "f.json: field 'frac' = 1.5: expected an integer");
  CHECK(thrown_message<ConfigError>([&] { (void)r.required_string("n"); }) ==
        "f.json: field 'n' = 4096: expected a string, got integer");
  CHECK(thrown_message<ConfigError>([&] { (void)r.optional_bool("s"); }) ==
        "f.json: field 's' = \"x\": expected true or false, got string");
  CHECK(thrown_message<ConfigError>([&] { (void)r.required_uint("missing"); }) ==
        "f.json: field 'missing': required field is missing");
  CHECK(contains(thrown_message<ConfigError>([&] { (void)r.optional_string_list("bad_list"); }),
                 "field 'bad_list[1]' = 1: expected a string"));
  CHECK(contains(thrown_message<ConfigError>([&] { (void)r.required_number("neg", true); }),
                 "field 'neg' = -3: must be positive"));
  CHECK(contains(thrown_message<ConfigError>([&] { (void)r.required_uint("n", 1, 100); }),
                 "field 'n' = 4096: must be between 1 and 100"));
}

TEST_CASE("zero is rejected where a positive size is required", "[io][json_reader]") {
  const json j = json::parse(R"({"z": 0})");
  JsonObjectReader r(j, "f.json");
  CHECK(thrown_message<ConfigError>([&] { (void)r.required_uint("z", 1); }) ==
        "f.json: field 'z' = 0: must be a positive integer");
}

TEST_CASE("finish() rejects unknown fields and suggests the closest known one", "[io][json_reader]") {
  const json j = json::parse(R"({"hidden_size": 1, "top_kk": 2})");
  JsonObjectReader r(j, "m.json");
  (void)r.required_uint("hidden_size");
  (void)r.optional_uint("top_k");
  const auto m = thrown_message<ConfigError>([&] { r.finish(); });
  CHECK(contains(m, "m.json: field 'top_kk' = 2: unknown field (did you mean 'top_k'?)"));
  CHECK(contains(m, "known fields here: hidden_size, top_k"));
}

TEST_CASE("nested objects carry their dotted path", "[io][json_reader]") {
  const json j = json::parse(R"({"attention": {"heads": "many"}, "scalar": 3})");
  JsonObjectReader r(j, "m.json");
  auto a = r.object("attention");
  CHECK(thrown_message<ConfigError>([&] { (void)a.required_uint("heads"); }) ==
        "m.json: field 'attention.heads' = \"many\": expected an integer, got string");
  CHECK(thrown_message<ConfigError>([&] { (void)r.object("scalar"); }) ==
        "m.json: field 'scalar' = 3: expected an object, got integer");
}

TEST_CASE("choices list the allowed values", "[io][json_reader]") {
  const json j = json::parse(R"({"kind": "gqaa"})");
  JsonObjectReader r(j, "m.json");
  CHECK(thrown_message<ConfigError>([&] { (void)r.optional_choice("kind", {"gqa", "mla"}); }) ==
        "m.json: field 'kind' = \"gqaa\": unknown value; expected one of: gqa, mla");
}

TEST_CASE("closest_match only suggests plausible typos", "[io][json_reader]") {
  const std::vector<std::string> names{"hidden_size", "top_k", "vocab_size"};
  CHECK(io::closest_match("hiden_size", names) == std::optional<std::string>("hidden_size"));
  CHECK_FALSE(io::closest_match("completely_different", names).has_value());
  CHECK(io::edit_distance("kitten", "sitting") == 3U);
}
