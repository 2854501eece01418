#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <moesched/io/presets.hpp>

#include <algorithm>

using namespace moesched;
using moesched::test::contains;
using moesched::test::TempDir;
using moesched::test::thrown_message;

namespace {
const std::filesystem::path kPresets = std::filesystem::path(MOESCHED_SOURCE_DIR) / "presets";

std::vector<std::string> names(const std::vector<io::PresetCatalog::Entry>& entries) {
  std::vector<std::string> out;
  for (const auto& e : entries) out.push_back(e.name);
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

TEST_CASE("the shipped catalog lists every model and GPU once", "[io][catalog]") {
  const io::PresetCatalog c({kPresets});
  CHECK(names(c.list_models()) ==
        std::vector<std::string>{"deepseek-v2-lite", "gpt-oss-20b", "mixtral-8x7b", "moesched-upcycled-fg",
                                 "moesched-upcycled-mix", "olmoe-1b-7b", "phi-3.5-moe", "qwen1.5-moe-a2.7b",
                                 "qwen3-30b-a3b"});
  CHECK(names(c.list_gpus()) ==
        std::vector<std::string>{"a100-40gb-pcie", "h100-pcie", "h200", "h200-measured", "rtx3090", "rtx4090"});
  // each listed preset loads fully, and its file stem is its name
  for (const auto& e : c.list_models()) {
    CHECK(c.model(e.name).name == e.name);
    CHECK(e.path.stem().string() == e.name);
  }
  for (const auto& e : c.list_gpus()) CHECK(c.gpu(e.name).name == e.name);
}

TEST_CASE("names resolve by name, alias, display name spelling, and path", "[io][catalog]") {
  const io::PresetCatalog c({kPresets});
  CHECK(c.model("mixtral-8x7b").name == "mixtral-8x7b");
  CHECK(c.model("Mixtral-8x7B").name == "mixtral-8x7b");  // case and punctuation ignored
  CHECK(c.model("mixtral").name == "mixtral-8x7b");       // alias
  CHECK(c.model("Qwen1.5-MoE-A2.7B").name == "qwen1.5-moe-a2.7b");
  CHECK(c.gpu("4090").name == "rtx4090");
  CHECK(c.gpu("RTX_3090").name == "rtx3090");
  CHECK(c.model((kPresets / "models" / "olmoe-1b-7b.json").string()).name == "olmoe-1b-7b");
}

TEST_CASE("unknown names list what exists and suggest the closest", "[io][catalog]") {
  const io::PresetCatalog c({kPresets});
  const auto m = thrown_message<ConfigError>([&] { (void)c.model("mixtrel-8x7b"); });
  CHECK(contains(m, "field '--model' = mixtrel-8x7b: unknown model preset (did you mean 'mixtral-8x7b'?)"));
  CHECK(contains(m, "available: deepseek-v2-lite, gpt-oss-20b"));
  CHECK(contains(m, "searched: " + (kPresets / "models").string()));
  const auto g = thrown_message<ConfigError>([&] { (void)c.gpu("tpu-v5"); });
  CHECK(contains(g, "field '--gpu' = tpu-v5: unknown gpu preset"));
  const auto p = thrown_message<ConfigError>([&] { (void)c.model("./no/such/file.json"); });
  CHECK(p == "./no/such/file.json: no such model preset file");
  const io::PresetCatalog empty;
  CHECK(contains(thrown_message<ConfigError>([&] { (void)empty.gpu("h200"); }),
                 "searched: no directories (set MOESCHED_PRESET_PATH)"));
}

TEST_CASE("a user directory shadows the shipped presets and adds its own", "[io][catalog]") {
  TempDir dir;
  auto j = io::read_json_file(kPresets / "gpus" / "rtx4090.json");
  j["display_name"] = "my overclocked 4090";
  dir.write("gpus/rtx4090.json", j.dump());
  j["name"] = "rtx4090-lab";
  j["aliases"] = {"lab"};
  dir.write("gpus/lab.json", j.dump());
  const io::PresetCatalog c({dir.path(), kPresets});
  CHECK(c.gpu("rtx4090").display_name == "my overclocked 4090");
  CHECK(c.gpu("lab").name == "rtx4090-lab");
  CHECK(c.gpu("rtx4090-lab").name == "rtx4090-lab");  // by the name inside the file
  const auto all = names(c.list_gpus());
  CHECK(std::count(all.begin(), all.end(), "rtx4090") == 1);
  CHECK(all.size() == 7U);
}

TEST_CASE("a malformed preset in the catalog is reported, not skipped", "[io][catalog][bad_input]") {
  TempDir dir;
  const auto broken = dir.write("models/broken.json", "{ not json");
  const io::PresetCatalog c({dir.path(), kPresets});
  // a name found by its file stem still loads without scanning the others
  CHECK(c.model("mixtral-8x7b").name == "mixtral-8x7b");
  // looking by alias must scan every file, and then the broken one is named
  const auto m = thrown_message<ConfigError>([&] { (void)c.model("mixtral"); });
  CHECK(contains(m, broken.string() + ": not valid JSON"));
  const auto l = thrown_message<ConfigError>([&] { (void)c.list_models(); });
  CHECK(contains(l, broken.string()));
  dir.write("models/broken.json", R"({"kind": "model", "display_name": 3})");
  CHECK(contains(thrown_message<ConfigError>([&] { (void)c.list_models(); }),
                 "every preset needs a string \"name\""));
}

TEST_CASE("from_environment puts MOESCHED_PRESET_PATH before the shipped presets", "[io][catalog]") {
  const auto c = io::PresetCatalog::from_environment({"/first"});
  REQUIRE_FALSE(c.directories().empty());
  CHECK(c.directories().front() == std::filesystem::path("/first"));
  CHECK(c.directories().back() == std::filesystem::path(MOESCHED_PRESET_DIR));
}
