// Command-line parsing for the kvcrush CLI: a subcommand, then --name value
// options and --flag switches. Every mistake becomes a cli_error whose
// message is the one line printed on stderr.
#pragma once

#include <charconv>
#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace kvcrush_cli {

class cli_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class arguments {
 public:
  // valued: options that take a value; switches: options that do not.
  arguments(int argc, char** argv, int first, const std::set<std::string>& valued,
            const std::set<std::string>& switches)
      : command_(first > 1 ? argv[first - 1] : "") {
    for (int i = first; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) throw cli_error("unexpected argument '" + arg + "'");
      // "--name=value" is the same as "--name value" (GNU style), so that
      // both spellings users type work.
      const auto equals = arg.find('=');
      const std::string name = arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
      if (switches.count(name)) {
        if (equals != std::string::npos) throw cli_error("option --" + name + " takes no value");
        switches_.insert(name);
      } else if (valued.count(name)) {
        if (values_.count(name)) throw cli_error("option --" + name + " given twice");
        if (equals != std::string::npos) {
          values_[name] = arg.substr(equals + 1);
        } else {
          if (i + 1 >= argc) throw cli_error("option --" + name + " needs a value");
          values_[name] = argv[++i];
        }
      } else {
        throw cli_error("unknown option --" + name + " (see kvcrush " + command_ + " --help)");
      }
    }
  }

  bool has(const std::string& name) const { return values_.count(name) || switches_.count(name); }

  std::string text(const std::string& name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) throw cli_error("missing required option --" + name);
    return it->second;
  }

  std::string text(const std::string& name, const std::string& fallback) const {
    return has(name) ? text(name) : fallback;
  }

  std::int64_t integer(const std::string& name) const { return parse_integer(name, text(name)); }

  std::int64_t integer(const std::string& name, std::int64_t fallback) const {
    return has(name) ? integer(name) : fallback;
  }

  double real(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const std::string value = text(name);
    std::size_t used = 0;
    double out = 0;
    try {
      out = std::stod(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != value.size() || value.empty()) throw cli_error("--" + name + " expects a number, got '" + value + "'");
    return out;
  }

 private:
  static std::int64_t parse_integer(const std::string& name, const std::string& value) {
    std::int64_t out = 0;
    const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), out);
    if (error != std::errc() || end != value.data() + value.size()) {
      throw cli_error("--" + name + " expects an integer, got '" + value + "'");
    }
    return out;
  }

  std::string command_;  // the subcommand, named in the hint of an unknown option
  std::map<std::string, std::string> values_;
  std::set<std::string> switches_;
};

}  // namespace kvcrush_cli
