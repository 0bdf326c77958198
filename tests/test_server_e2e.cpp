// dsa serve end to end with real clients: the official `openai` npm package
// (tests/server_e2e/openai_client.mjs) and the chat page in headless Chromium through playwright-core
// (tests/server_e2e/chat_page.mjs). Both are installed by tests/server_e2e/setup.sh; without them
// these tests fail, unless DSA_SKIP_NPM=1 says to skip them.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "test_server_util.h"

namespace dsa::test {

namespace {

namespace fs = std::filesystem;
const std::string kE2eDir = std::string(DSA_SOURCE_DIR) + "/tests/server_e2e";

bool skip_npm() {
  const char* s = std::getenv("DSA_SKIP_NPM");
  return s && std::string(s) == "1";
}

// Runs a shell command; returns its exit status and everything it printed.
int run(const std::string& cmd, std::string& out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string find_chromium() {
  for (const char* c : {"chromium", "chromium-browser", "google-chrome"}) {
    std::string out;
    if (run(std::string("command -v ") + c, out) == 0 && !out.empty()) return out.substr(0, out.find('\n'));
  }
  return "";
}

std::string url(const TestServer& s) { return "http://127.0.0.1:" + std::to_string(s.port); }

}  // namespace

#define REQUIRE_NODE_MODULES()                                                                              \
  do {                                                                                                      \
    if (!fs::exists(kE2eDir + "/node_modules/openai") || !fs::exists(kE2eDir + "/node_modules/playwright-core")) { \
      if (skip_npm()) GTEST_SKIP() << "DSA_SKIP_NPM=1: the e2e clients are not installed";                 \
      FAIL() << "tests/server_e2e/node_modules is missing: run tests/server_e2e/setup.sh "                  \
                "(or set DSA_SKIP_NPM=1 to skip this test)";                                                \
    }                                                                                                       \
  } while (0)

TEST(ServerE2E, OfficialOpenAIClient) {
  REQUIRE_NODE_MODULES();
  server::ServerOptions keyed;
  keyed.api_key = "sk-e2e-key";
  TestServer main(engine_options(), keyed);
  TestServer v32(engine_options(), {}, [](server::ModelInfo& m) { m.format = chat::ChatFormat::kV32; });
  EngineOptions one = engine_options();
  one.max_seqs = 1;
  server::ServerOptions small_queue;
  small_queue.max_queue = 1;
  TestServer tight(one, small_queue);
  std::string out;
  const int rc = run("cd '" + kE2eDir + "' && DSA_URL=" + url(main) + " DSA_URL_V32=" + url(v32) + " DSA_URL_TIGHT=" +
                         url(tight) + " DSA_KEY=sk-e2e-key timeout 600 node openai_client.mjs",
                     out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("checks passed"), std::string::npos) << out;
  std::printf("%s", out.c_str());
}

TEST(ServerE2E, ChatPageInHeadlessChromium) {
  REQUIRE_NODE_MODULES();
  const std::string chromium = find_chromium();
  if (chromium.empty()) {
    if (skip_npm()) GTEST_SKIP() << "DSA_SKIP_NPM=1 and no chromium installed";
    FAIL() << "no chromium on PATH: run tests/server_e2e/setup.sh (Debian: apt-get install chromium), "
              "or set DSA_SKIP_NPM=1 to skip this test";
  }
  TestServer s;
  std::string out;
  const int rc = run("cd '" + kE2eDir + "' && DSA_URL=" + url(s) + " CHROMIUM='" + chromium + "' timeout 300 node chat_page.mjs", out);
  EXPECT_EQ(rc, 0) << out;
  std::printf("%s", out.c_str());
}

}  // namespace dsa::test
