// serve: parse options, start the library's Server, stop it on Ctrl-C/SIGTERM.
#include <iostream>

#include "cnclip/bundle.h"
#include "cnclip/index_store.h"
#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "cnclip/server.h"
#include "options.h"

namespace cnclip::cli {
namespace {

struct ServeCommand {
  std::string host = "127.0.0.1";
  int port = 8765;
  double max_upload_mb = 32;
  std::string token;
  int workers = 8;
};

int serve(const CommonOptions& o, const ServeCommand& c) {
  ServerOptions s;
  s.host = c.host;
  s.port = c.port;
  s.index_dir = resolve_index_dir(o.index);
  s.model_dir = resolve_model_dir(o.model);
  s.model.device = o.device;
  s.model.threads = o.threads;
  s.mixed_precision = o.mixed_precision;
  s.max_upload_bytes = static_cast<size_t>(c.max_upload_mb * 1024 * 1024);
  s.workers = c.workers;
  s.token = c.token;
  bool generated = false;
  if (s.token.empty() && !is_loopback_host(s.host)) {
    s.token = generate_token();
    generated = true;
  }
  s.decode = decode_options(o, load_bundle_manifest(s.model_dir).image.size);
  install_interrupt_handlers();
  set_compute_threads(o.threads);
  auto server = Server::create(s);
  std::cerr << "cnclip: serving " << terminal_safe(s.index_dir) << '\n';
  if (generated) std::cerr << "cnclip: token: " << s.token << " (open the page with ?token=" << s.token << ")\n";
  if (!server->advert().empty()) {
    std::cerr << "cnclip: search-text and search-image on this index are answered here ("
              << terminal_safe(server->advert()) << "; --no-server skips it)\n";
  } else {
    std::cerr << "cnclip: CLI queries are not routed here: " << terminal_safe(server->advert_note()) << '\n';
  }
  std::cerr << "listening on " << server->url() << std::endl;
  server->run([] { return interrupt_requested(); });
  std::cerr << "cnclip: stopped\n";
  return 0;
}

}  // namespace

void register_serve_command(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<ServeCommand>();
  ServeCommand& c = *cp;
  auto* sub =
      app.add_subcommand("serve", "Web page and JSON API over the index (search by text or image in a browser)");
  sub->add_option("--host", c.host, "Address to listen on (not loopback: needs --token, or one is generated)")
      ->capture_default_str();
  whole_number(sub->add_option("--port", c.port, "Port (0: any free port, printed)")->capture_default_str(), 0, 65535);
  real_number(sub->add_option("--max-upload-mb", c.max_upload_mb, "Largest example image accepted, in MB")
                  ->capture_default_str(),
              0.001, 4096.0);
  sub->add_option("--token", c.token, "Secret every request must carry (Bearer header, cookie, or ?token=)");
  whole_number(sub->add_option("--workers", c.workers, "Request threads")->capture_default_str(), 1, 64);
  add_model_options(sub, o);
  add_index_option(sub, o);
  add_mixed_precision_option(sub, o);
  add_decode_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return serve(o, *cp); }; });
}

}  // namespace cnclip::cli
