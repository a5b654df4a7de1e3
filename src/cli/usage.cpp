#include "usage.h"

#include <algorithm>
#include <iostream>
#include <vector>

#include "options.h"

namespace cnclip::cli {
namespace {

std::vector<const CLI::App*> commands(const CLI::App& app) {
  return app.get_subcommands([](const CLI::App*) { return true; });
}

const CLI::App* find_command(const CLI::App& app, const std::string& name) {
  for (const CLI::App* sub : commands(app)) {
    if (sub->check_name(name)) return sub;
  }
  return nullptr;
}

// Quoted for a shell only where needed, so that a suggested command line can be pasted.
std::string shell_word(const std::string& s) {
  const bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x80 || std::isalnum(u) || std::string("_./:=,@%+-").find(c) != std::string::npos;
  });
  if (plain) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Names close to `word`: starting with it (at least 3 characters typed: 'search' means the
// search-* commands even though 'serve' is closer by edits), else within a few edits.
std::vector<std::string> nearest(const std::string& word, const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const auto& n : names) {
    if (word.size() >= 3 && n.size() > word.size() && n.compare(0, word.size(), word) == 0) out.push_back(n);
  }
  if (!out.empty()) return out;
  const size_t limit = std::max<size_t>(1, std::min<size_t>(3, word.size() / 3));
  size_t best = limit + 1;
  for (const auto& n : names) {
    const size_t d = edit_distance(word, n);
    if (d < best) {
      best = d;
      out = {n};
    } else if (d == best) {
      out.push_back(n);
    }
  }
  if (!out.empty()) return out;
  for (const auto& n : names) {
    if (word.size() >= 3 && n.compare(0, word.size(), word) == 0) out.push_back(n);
  }
  return out;
}

std::string did_you_mean(const std::vector<std::string>& names) {
  if (names.empty()) return "";
  std::string s = "; did you mean ";
  for (size_t i = 0; i < names.size(); ++i) {
    s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + ("'" + names[i] + "'");
  }
  return s + "?";
}

std::string help_hint(const CLI::App* sub) {
  return sub ? " (see 'cnclip " + sub->get_name() + " --help')" : " (see 'cnclip --help')";
}

const CLI::Option* first_positional(const CLI::App& sub) {
  for (const CLI::Option* opt : sub.get_options()) {
    if (opt->get_positional()) return opt;
  }
  return nullptr;
}

std::string with_article(const std::string& noun) {
  const bool vowel = !noun.empty() && std::string("aeiou").find(noun[0]) != std::string::npos;
  return (vowel ? "an " : "a ") + noun;
}

std::string explain_unknown_option(const CLI::App& sub, const std::string& token) {
  const std::string name = token.substr(0, token.find('='));
  std::string msg = "unknown option '" + name + "' for " + sub.get_name();
  if (name.rfind("--", 0) == 0) {
    std::vector<std::string> longs;
    for (const CLI::Option* opt : sub.get_options()) {
      for (const auto& l : opt->get_lnames()) longs.push_back(l);
    }
    auto close = nearest(name.substr(2), longs);
    for (auto& c : close) c = "--" + c;
    if (!close.empty()) return msg + did_you_mean(close) + help_hint(&sub);
  }
  if (const CLI::Option* pos = first_positional(sub)) {
    const std::string fix = "put '--' before it: cnclip " + sub.get_name() + " -- " + shell_word(token);
    if (sub.get_name() == "search-text") return msg + "; to search for '" + token + "', " + fix + help_hint(&sub);
    return msg + "; if '" + token + "' is " + with_article(pos->get_name()) + ", " + fix + help_hint(&sub);
  }
  return msg + help_hint(&sub);
}

std::string explain_extra_argument(const CLI::App& sub, const std::string& arg) {
  const CLI::Option* pos = first_positional(sub);
  if (!pos) return sub.get_name() + " takes no arguments, but was given '" + arg + "'" + help_hint(&sub);
  return "too many arguments: '" + arg + "' (" + sub.get_name() + " takes one " + pos->get_name() + ")" +
         help_hint(&sub);
}

}  // namespace

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

std::optional<int> handle_before_subcommand(const CLI::App& app, int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: cnclip COMMAND [OPTIONS] [ARGUMENTS]\n\ncommands:\n";
    for (const CLI::App* sub : commands(app)) {
      std::string name = sub->get_name();
      name.resize(std::max<size_t>(name.size() + 2, 15), ' ');
      std::cerr << "  " << name << sub->get_description() << '\n';
    }
    std::cerr << "\n'cnclip COMMAND --help' (or 'cnclip help COMMAND') shows what a command takes.\n";
    return 2;
  }
  const std::string first = argv[1];
  std::vector<std::string> names;
  for (const CLI::App* sub : commands(app)) names.push_back(sub->get_name());
  auto unknown_command = [&](const std::string& word) {
    std::cerr << "cnclip: error: unknown command '" << word << "'" << did_you_mean(nearest(word, names))
              << " (see 'cnclip --help')" << std::endl;
    return 2;
  };

  if (first == "help") {
    if (argc == 2) {
      std::cout << app.help();
      return 0;
    }
    const CLI::App* sub = find_command(app, argv[2]);
    if (!sub) return unknown_command(argv[2]);
    std::cout << sub->help("cnclip");
    return 0;
  }
  if (!first.empty() && first[0] == '-') {
    for (const char* own : {"-h", "--help", "-V", "--version"}) {
      if (first == own) return std::nullopt;
    }
    for (int k = 1; k < argc; ++k) {
      if (!find_command(app, argv[k])) continue;
      std::string fixed = std::string("cnclip ") + argv[k];
      for (int i = 1; i < argc; ++i) {
        if (i != k) fixed += " " + shell_word(argv[i]);
      }
      std::cerr << "cnclip: error: options go after the command: " << fixed << std::endl;
      return 2;
    }
    std::cerr << "cnclip: error: unknown option '" << first
              << "' (options go after the command: cnclip COMMAND [OPTIONS]; see 'cnclip --help')" << std::endl;
    return 2;
  }
  if (!find_command(app, first)) return unknown_command(first);
  return std::nullopt;
}

std::string explain_parse_error(const CLI::App& app, const CLI::ParseError& e) {
  const auto parsed = app.get_subcommands();
  const CLI::App* sub = parsed.empty() ? nullptr : parsed.front();
  const std::string what = e.what();
  if (!sub) return what + help_hint(nullptr);

  // Arguments the command did not recognise come first: they usually cause the other errors
  // (a query '-x' taken for an option leaves the query missing).
  const auto extras = sub->remaining();
  for (const auto& arg : extras) {
    if (arg.size() > 1 && arg[0] == '-') return explain_unknown_option(*sub, arg);
  }
  if (!extras.empty()) return explain_extra_argument(*sub, extras.front());

  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e)) {
    // CLI11 names the option before the first ':'.
    const CLI::Option* opt = sub->get_option_no_throw(what.substr(0, what.find(':')));
    if (opt) {
      const std::string name = opt->get_name();
      if (opt->get_items_expected_max() >= 1 && static_cast<int>(opt->count()) > opt->get_items_expected_max()) {
        return name + " is given " + std::to_string(opt->count()) + " times; give it once" + help_hint(sub);
      }
      const std::string accepts = accepted_values(opt);
      return name + " needs a value" + (accepts.empty() ? "" : " (" + accepts + ")") + help_hint(sub);
    }
  }
  if (dynamic_cast<const CLI::RequiredError*>(&e)) {
    for (const CLI::Option* opt : sub->get_options()) {
      if (!opt->get_required() || opt->count() > 0) continue;
      if (opt->get_positional()) {
        const bool many = opt->get_items_expected_max() > 1;
        return sub->get_name() + " needs " +
               (many ? "at least one " + opt->get_name() : with_article(opt->get_name())) + help_hint(sub);
      }
      return sub->get_name() + " needs the option " + opt->get_name() + help_hint(sub);
    }
  }
  if (dynamic_cast<const CLI::ConversionError*>(&e)) {
    // "Could not convert: NAME = VALUE": a switch given a value (the numbers have checks of their own).
    const std::string head = "Could not convert: ";
    const size_t eq = what.find(" = ");
    if (what.rfind(head, 0) == 0 && eq != std::string::npos) {
      const std::string name = what.substr(head.size(), eq - head.size());
      const std::string value = what.substr(eq + 3);
      const CLI::Option* opt = sub->get_option_no_throw(name);
      if (opt && opt->get_items_expected_max() == 0) {
        return name + " is a switch and takes no value, not '" + value + "' (write " + name + " alone)" +
               help_hint(sub);
      }
      const std::string accepts = opt ? accepted_values(opt) : "";
      if (!accepts.empty()) return name + ": expects " + accepts + ", not '" + value + "'" + help_hint(sub);
    }
  }
  // Validation errors come from the checks of options.cpp, already in plain words.
  return what + help_hint(sub);
}

}  // namespace cnclip::cli
