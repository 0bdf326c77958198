// dsa tokenize: token ids of a text file with the model's tokenizer (tokenizer.json +
// tokenizer_config.json), or the text of a list of ids with --decode.
//   dsa tokenize -m DIR FILE             ids, space-separated, one line, no BOS
//   dsa tokenize -m DIR --bos FILE       BOS first when tokenizer_config.json asks for it
//   dsa tokenize -m DIR --tokens FILE    one "id<TAB>token" line per token
//   dsa tokenize -m DIR --decode FILE    FILE holds ids (white space or commas); prints text
// FILE "-" (the default) is standard input.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include "core/error.h"
#include "io/token_ids.h"
#include "io/tokenizer.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

std::string read_input(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  dsa::tools::check_input_file(path, "input");
  std::ifstream f(path, std::ios::binary);
  DSA_CHECK(f.good(), "input '", path, "': cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  DSA_CHECK(!f.bad(), "input '", path, "': read error");
  return ss.str();
}

int run(int argc, char** argv) {
  CLI::App app{"Tokenize a text file (prints token ids), or decode token ids (--decode)"};
  std::string model, file = "-";
  bool decode = false, bos = false, tokens = false, skip_special = false;
  app.add_option("-m,--model", model, "model folder with tokenizer.json (and tokenizer_config.json)")->required();
  app.add_option("file", file, "input file; '-' is standard input")->capture_default_str();
  app.add_flag("--decode", decode, "read token ids and print the decoded text");
  app.add_flag("--bos", bos, "prepend BOS when tokenizer_config.json has add_bos_token");
  app.add_flag("--tokens", tokens, "print one 'id<TAB>token' line per token instead of the id list");
  app.add_flag("--skip-special", skip_special, "with --decode: leave out special tokens");
  if (int rc = dsa::tools::parse(app, argc, argv); rc >= 0) return rc;
  DSA_CHECK(std::filesystem::is_directory(model), "model directory '", model, "' does not exist or is not a directory");
  dsa::Tokenizer tok = dsa::Tokenizer::from_dir(model);
  std::string input = read_input(file);
  if (decode) {
    const std::string what = "--decode " + (file == "-" ? std::string("(standard input)") : file);
    std::string text = tok.decode(dsa::parse_token_ids(input, tok.vocab_size(), what), skip_special);
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
