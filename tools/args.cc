#include "args.h"

#include <algorithm>

namespace vmbackupctl {

std::optional<std::string> ParsedArgs::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> ParsedArgs::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return {};
  return it->second;
}

std::optional<std::string> ParseFlags(const std::vector<std::string>& args,
                                      const std::vector<FlagDef>& flags, ParsedArgs* out) {
  auto find = [&](const std::string& name) -> const FlagDef* {
    for (const FlagDef& f : flags) {
      if (f.name == name) return &f;
    }
    return nullptr;
  };
  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      out->positionals_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    std::string name;
    std::optional<std::string> inline_value;
    if (arg == "-h") {
      name = "help";
    } else if (arg.rfind("--", 0) == 0) {
      name = arg.substr(2);
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name.resize(eq);
      }
    } else {
      return "unknown option '" + arg + "'";
    }
    const FlagDef* def = find(name);
    if (def == nullptr) return "unknown option '--" + name + "'";
    std::vector<std::string>& slot = out->values_[name];
    if (!def->repeated && !slot.empty()) return "option '--" + name + "' given more than once";
    if (!def->has_value) {
      if (inline_value) return "option '--" + name + "' takes no value";
      slot.push_back("");
      continue;
    }
    if (inline_value) {
      slot.push_back(*inline_value);
    } else if (i + 1 < args.size()) {
      slot.push_back(args[++i]);
    } else {
      return "option '--" + name + "' needs a value (" + def->metavar + ")";
    }
  }
  return std::nullopt;
}

std::string FormatFlagHelp(const std::vector<FlagDef>& flags) {
  std::vector<std::string> left;
  size_t width = 0;
  for (const FlagDef& f : flags) {
    std::string l = "  --" + f.name;
    if (f.has_value) l += " " + f.metavar;
    width = std::max(width, l.size());
    left.push_back(std::move(l));
  }
  std::string out;
  for (size_t i = 0; i < flags.size(); ++i) {
    out += left[i];
    out.append(width + 2 - left[i].size(), ' ');
    out += flags[i].help;
    if (flags[i].repeated) out += " (repeatable)";
    out += "\n";
  }
  return out;
}

}  // namespace vmbackupctl
