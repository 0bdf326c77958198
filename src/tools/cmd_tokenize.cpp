// dsa tokenize: token ids of a text file with the model's tokenizer (tokenizer.json +
// tokenizer_config.json), or the text of a list of ids with --decode.
//   dsa tokenize --model DIR FILE             ids, space-separated, one line, no BOS
//   dsa tokenize --model DIR --bos FILE       BOS first when tokenizer_config.json asks for it
//   dsa tokenize --model DIR --tokens FILE    one "id<TAB>token" line per token
//   dsa tokenize --model DIR --decode FILE    FILE holds ids (white space or commas); prints text
// FILE "-" (the default) is standard input.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include "core/error.h"
#include "io/tokenizer.h"
#include "tools/commands.h"

namespace {

std::string read_input(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  std::ifstream f(path, std::ios::binary);
  DSA_CHECK(f.good(), "cannot open '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> parse_id_list(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']') {
      ++i;
      continue;
    }
    size_t j = i;
    if (s[j] == '-') ++j;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i || (j == i + 1 && s[i] == '-')) dsa::fail("--decode: not a token id at byte ", i, ": '", s.substr(i, 16), "'");
    long long v = std::stoll(s.substr(i, j - i));
    if (v < INT32_MIN || v > INT32_MAX) dsa::fail("--decode: token id out of range: ", v);
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

int run(int argc, char** argv) {
  CLI::App app{"Tokenize a text file (prints token ids), or decode token ids (--decode)"};
  std::string model, file = "-";
  bool decode = false, bos = false, tokens = false, skip_special = false;
  app.add_option("--model", model, "model folder with tokenizer.json (and tokenizer_config.json)")->required();
  app.add_option("file", file, "input file; '-' is standard input")->capture_default_str();
  app.add_flag("--decode", decode, "read token ids and print the decoded text");
  app.add_flag("--bos", bos, "prepend BOS when tokenizer_config.json has add_bos_token");
  app.add_flag("--tokens", tokens, "print one 'id<TAB>token' line per token instead of the id list");
  app.add_flag("--skip-special", skip_special, "with --decode: leave out special tokens");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  dsa::Tokenizer tok = dsa::Tokenizer::from_dir(model);
  std::string input = read_input(file);
  if (decode) {
    std::string text = tok.decode(parse_id_list(input), skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  std::vector<int32_t> ids = bos ? tok.encode_with_bos(input) : tok.encode(input);
  std::string out;
  out.reserve(ids.size() * 7);
  if (tokens) {
    for (int32_t id : ids) out += std::to_string(id) + "\t" + tok.id_to_token(id) + "\n";
  } else {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ' ';
      out += std::to_string(ids[i]);
    }
    out += '\n';
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

dsa::tools::Register reg("tokenize", "token ids of a text file (--decode: text of token ids)", run);

}  // namespace
